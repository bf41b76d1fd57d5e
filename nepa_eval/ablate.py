"""The runs of one paper table (`nepa-eval ablate TABLE --scale tiny|paper`).

tiny:  runs every row on Fashion-MNIST on the CPU (each stage a `nepa-eval pretrain|cls|seg` process, its output
       in <run>/console.log, a progress bar per run), then writes the table with `nepa-eval report`.
paper: writes each row's config (a few lines over the release-scale config) and the torchrun commands to submit;
       `nepa-eval report --runs <dir>` picks the run directories up afterwards.
Run directories: <work-dir>/<scale>/<table>/<row>/<stage> (seed k > 0 of `--seeds N`: <row>/seed<k>/<stage>);
a finished run is reused unless --force. The table's folder holds ablate_manifest.json (`nepa_eval.report.manifest`):
each run's table, row, seed, stage and the run it starts from, which the report reads.
Rows of our own: `init: random` runs the table's stages after pretraining from random initialisation (`--ckpt
none`); `task: pixels` runs `nepa-eval pixels` on the classification stage's data (tiny scale only).
"""
from __future__ import annotations

import argparse
import os
import queue
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from nepa_eval.engine import ROOT, read_final, update_final
from nepa_eval.report import (PIXELS_TASK, Row, TableSpec, cell_line, entry, load_spec, read_config, run_report,
                              scalars_of, write_manifest)

REUSE = ("ok", "collapsed", "diverged", "trivial")  # finished runs; "failed" (a crash) and "running" (killed) run again
COMMAND_FILE = "ablate_command.txt"  # the command that made the run: a run made by another command is redone
TINY_BASE_PRETRAIN = "_pretrain"  # the shared pretraining of tables whose rows start from a checkpoint


# ----------------------------------------------------------------------------------------------
# what a row's stage runs
# ----------------------------------------------------------------------------------------------
def stages_to_run(spec: TableSpec, scale: str) -> list[str]:
    """The table's stages this scale runs (a table may narrow them, e.g. tiny core: pretraining only)."""
    run = spec.scales.get(scale, {}).get("run")
    return [s for s in spec.stage_names if run is None or s in run]


def rows_to_run(spec: TableSpec, scale: str, only: Optional[str]) -> list[Row]:
    """Rows with runs: not reference rows, not rows of the other scale, at tiny scale not the Large model rows, at
    paper scale not the raw-pixel references."""
    rows = [r for r in spec.rows if not r.reference and r.scale in (None, scale)
            and (scale == "paper" or r.size != "large") and (scale == "tiny" or r.task is None)]
    if only:
        want = [w.strip() for w in only.split(",") if w.strip()]
        for w in want:
            spec.row(w)  # unknown names raise with the list
        rows = [r for r in rows if r.name in want]
    if not rows:
        raise ValueError(f"table {spec.name}: no rows to run at scale {scale}")
    return rows


def stage_setting(spec: TableSpec, scale: str, stage: str) -> dict[str, Any]:
    s = spec.scales.get(scale, {}).get(stage)
    if not s or "config" not in s:
        raise ValueError(f"reports/_scales.yaml: no {scale} config for stage {stage!r}")
    return s


def _fmt(v: Any) -> str:
    """A value as --cfg-options spells it (mmengine's DictAction)."""
    if v is None or isinstance(v, bool):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def stage_command(spec: TableSpec, scale: str, row: Row, stage: str, work_dir: Path, ckpt: Optional[str],
                  extra: Optional[dict[str, Any]] = None) -> list[str]:
    """`nepa-eval <stage>` arguments for one row's stage (without the interpreter or launcher). The 'pixels' stage
    reads the data of the classification stage's config."""
    s = stage_setting(spec, scale, "cls" if stage == PIXELS_TASK else stage)
    config = s.get("large" if row.size == "large" else "config", s["config"])
    fill = {"data_root": str(s.get("data_root", ""))}
    cmd = [stage, "--config", str(config), "--work-dir", str(work_dir)]
    cmd += [str(a).format(**fill) for a in s.get("args", []) if stage != PIXELS_TASK]
    if ckpt is not None:
        cmd += ["--ckpt", ckpt]
    opts = {**(s.get("options") or {}), **for_stage(extra or {}, stage), **row.keys.get(stage, {})}
    if opts:
        cmd += ["--cfg-options"] + [f"{k}={_fmt(v)}" for k, v in opts.items()]
    return cmd


STAGES = ("pretrain", "cls", "seg", PIXELS_TASK)


def for_stage(options: dict[str, Any], stage: str) -> dict[str, Any]:
    """The --cfg-options of one stage: plain keys go to every stage, `STAGE:key` only to that stage (e.g.
    `pretrain:train_cfg.max_iters=30`, which an epoch-based fine-tune would refuse)."""
    out = {}
    for k, v in options.items():
        head, sep, key = k.partition(":")
        if not sep:
            out[k] = v
        elif head not in STAGES:
            raise ValueError(f"--cfg-options {k}: {head!r} is not a stage ({', '.join(STAGES)})")
        elif head == stage:
            out[key] = v
    return out


def backbone_file(run_dir: Path) -> str:
    """The pretrained backbone a pretraining run leaves (backbone.safetensors), for the next stage's --ckpt."""
    return str(run_dir / "backbone.safetensors")


# ----------------------------------------------------------------------------------------------
# tiny: run here
# ----------------------------------------------------------------------------------------------
def _budget(run_dir: Path) -> tuple[Optional[int], str]:
    """(total, unit) of a run from its resolved config: iterations, or epochs for epoch-based loops."""
    cfg_file = run_dir / "config.py"
    if not cfg_file.exists():
        return None, "it"
    try:
        tc = read_config(cfg_file).get("train_cfg") or {}
    except Exception:  # the child is still writing it
        return None, "it"
    if tc.get("max_iters"):
        return int(tc["max_iters"]), "it"
    if tc.get("max_epochs"):
        return int(tc["max_epochs"]), "epoch"
    return None, "it"


def run_stage(argv: list[str], run_dir: Path, desc: str, quiet: bool = False, threads: Optional[int] = None,
              position: Optional[int] = None) -> str:
    """Run one `nepa-eval` stage as a child process (output to console.log) with a progress bar; its status.
    threads: the child's intra-op threads (OMP/MKL), else torch's default; position: the bar's line."""
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "console.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w") as f, tqdm(desc=desc, total=None, disable=quiet, leave=True, dynamic_ncols=True,
                                   unit="it", mininterval=1e9, position=position) as bar:  # no automatic redraws
        f.write("$ nepa-eval " + shlex.join(argv) + "\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "nepa_eval.cli", *argv], stdout=f, stderr=subprocess.STDOUT,
                                cwd=os.getcwd(), env=env)
        last = None
        while proc.poll() is None:
            time.sleep(1.0)
            if bar.total is None and argv[0] != PIXELS_TASK:  # the pixel references have no steps
                total, unit = _budget(run_dir)
                if total:
                    bar.total, bar.unit = total, unit
            rows = scalars_of(run_dir)
            if rows and rows[-1] != last:  # redraw only on news (a log file gets one line per redraw)
                last = rows[-1]
                done = last.get("epoch" if bar.unit == "epoch" else "step", 0) or 0
                bar.n = min(int(done), bar.total or int(done))
                loss = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
                if loss is not None:
                    bar.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
                bar.refresh()
        final = read_final(run_dir)
        status = final.get("status") or ("ok" if proc.returncode == 0 else "failed")
        if status == "ok" and bar.total:
            bar.n = bar.total
        bar.set_postfix_str(f"{status}, {time.time() - t0:.0f}s")
    if proc.returncode != 0 and status in ("ok", "running"):
        status = "failed"
    if status == "failed":
        tail = [line for line in log.read_text().splitlines() if line.strip()][-15:]
        print(f"[nepa] {desc} failed (exit {proc.returncode}); last lines of {log}:\n  " + "\n  ".join(tail),
              file=sys.stderr)
        if final.get("status") != "failed":  # a command that stopped before its run directory said so
            update_final(run_dir, task=argv[0], status="failed",
                         reason=(tail[-1] if tail else f"exit {proc.returncode}")[:300])
    return status


def _finished(run_dir: Path, argv: list[str]) -> Optional[str]:
    """The status of a finished run made by exactly this command from the checkpoint as it is now, else None."""
    made_by = run_dir / COMMAND_FILE
    if not made_by.is_file() or made_by.read_text().strip() != shlex.join(argv):
        return None
    final = read_final(run_dir)
    status = final.get("status")
    if "run_id" not in final:  # made before runs recorded what they started from: redo it, so the report need not guess
        return None
    if "--ckpt" in argv:  # a run older than the checkpoint it started from started from another one: redo it
        ckpt = Path(argv[argv.index("--ckpt") + 1])
        final = run_dir / "final_metrics.json"
        if ckpt.is_file() and final.is_file() and ckpt.stat().st_mtime > final.stat().st_mtime:
            return None
    return status if status in REUSE else None


def ensure_stage(argv: list[str], run_dir: Path, desc: str, force: bool, quiet: bool, threads: Optional[int] = None,
                 position: Optional[int] = None) -> str:
    """Run a stage unless a finished run of the same command is there; any other run directory is cleared first."""
    if not force and (done := _finished(run_dir, argv)):
        print(f"[nepa] {desc}: reusing {run_dir} ({done})")
        return done
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / COMMAND_FILE).write_text(shlex.join(argv) + "\n")
    return run_stage(argv, run_dir, desc, quiet, threads, position)


def ensure_mosaic(root: str, quiet: bool) -> None:
    """The segmentation mosaic set, written once with `nepa-eval make-data mosaic`."""
    if (Path(root) / "ADEChallengeData2016").is_dir():
        return
    print(f"[nepa] writing the Fashion-MNIST mosaic set to {root}")
    subprocess.run([sys.executable, "-m", "nepa_eval.cli", "make-data", "mosaic", "--out", root], check=True,
                   stdout=subprocess.DEVNULL)


@dataclass
class Stage:
    """One stage of a row: the `nepa-eval` arguments, its run directory, its progress-bar label."""
    argv: list[str]
    run_dir: Path
    desc: str


def cpu_count() -> int:
    """The cores this process may use (the affinity mask where the OS has one, as under a batch scheduler)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_chains(chains: list[list[Stage]], jobs: int, force: bool, quiet: bool) -> None:
    """Run each chain's stages in order; a stage that ends other than ok ends its chain (a collapsed or trivial
    pretraining is the row's result: nothing to fine-tune). With jobs > 1, that many chains run at once, each
    process on cores // jobs threads: a tiny model uses a second thread poorly, so two one-thread runs side by side
    finish sooner than the same two one after the other (`nepa-eval bench jobs` measures it)."""
    jobs = max(1, min(jobs, len(chains)))
    threads = max(1, cpu_count() // jobs) if jobs > 1 else None
    tty = sys.stdout.isatty()  # a line per running chain's bar; a log file gets every bar on its one line
    slots: queue.Queue[int] = queue.Queue()
    for k in range(jobs):
        slots.put(k)

    def work(chain: list[Stage]) -> None:
        slot = slots.get()
        try:
            for st in chain:
                if ensure_stage(st.argv, st.run_dir, st.desc, force, quiet, threads=threads,
                                position=None if jobs == 1 else slot if tty else 0) != "ok":
                    break
        finally:
            slots.put(slot)

    if jobs == 1:
        for chain in chains:
            work(chain)
        return
    with ThreadPoolExecutor(jobs) as pool:
        for fut in [pool.submit(work, chain) for chain in chains]:
            fut.result()  # re-raises a chain's error here


def run_tiny(spec: TableSpec, args: argparse.Namespace) -> Path:
    """Run every row's stages here (a row's stages in order; `args.jobs` rows at once); returns the table's run
    folder."""
    root = Path(args.work_dir) / "tiny" / spec.name
    stages = stages_to_run(spec, "tiny")
    rows = rows_to_run(spec, "tiny", args.rows)
    base_ckpt = args.ckpt
    if stages[0] != "pretrain" and base_ckpt is None:
        base_dir = Path(args.work_dir) / "tiny" / TINY_BASE_PRETRAIN  # the default objective, no row keys
        argv = stage_command(spec, "tiny", Row("base", "base", None, {}, {}), "pretrain", base_dir, None,
                             args.cfg_options)
        if args.dry_run:
            print("nepa-eval " + shlex.join(argv))
        elif ensure_stage(argv, base_dir, "pretrain (shared backbone)", args.force, args.quiet) not in ("ok",):
            raise RuntimeError(f"the shared tiny pretraining failed; see {base_dir / 'console.log'}")
        base_ckpt = backbone_file(base_dir)
    if "seg" in stages and not args.dry_run:
        ensure_mosaic(str(stage_setting(spec, "tiny", "seg").get("data_root")), args.quiet)
    seeds = max(1, int(getattr(args, "seeds", 1) or 1))
    chains: list[list[Stage]] = []  # one per row and seed: its stages in order
    entries = []  # the manifest: which run is which row, seed and stage, and which run it starts from
    if stages[0] != "pretrain" and args.ckpt is None:
        entries.append(entry(spec.name, None, 0, "pretrain", base_dir, None, root, scale="tiny", shared=True))
    for i, row in enumerate(rows, 1):
        for seed in range(seeds if row.task is None else 1):  # the pixel references have no seed
            row_dir = root / row.name / (f"seed{seed}" if seed else "")
            extra = {**args.cfg_options, **({"randomness.seed": seed} if seed else {})}  # seed 0: the configs' own
            ckpt = "none" if row.init == "random" else base_ckpt
            parent = None if row.init == "random" or args.ckpt is not None or stages[0] == "pretrain" else base_dir
            chain = []
            for stage in row_stages(row, stages):
                run_dir = row_dir / stage
                desc = f"[{i}/{len(rows)}] {row.name}{f' seed {seed}' if seeds > 1 else ''}: {stage}"
                chain.append(Stage(stage_command(spec, "tiny", row, stage, run_dir, ckpt, extra), run_dir, desc))
                entries.append(entry(spec.name, row.name, seed, stage, run_dir, None if stage == PIXELS_TASK else parent,
                                     root, scale="tiny", ckpt=None if stage == PIXELS_TASK else ckpt))
                if stage == "pretrain":
                    ckpt, parent = backbone_file(run_dir), run_dir
            chains.append(chain)
    if not args.dry_run:
        write_manifest(root, entries)
    if args.dry_run:
        for chain in chains:
            for st in chain:
                print("nepa-eval " + shlex.join(st.argv))
    else:
        run_chains(chains, int(getattr(args, "jobs", 1) or 1), args.force, args.quiet)
    return root


def row_stages(row: Row, stages: list[str]) -> list[str]:
    """The stages one row runs: the pixel references one run of their own; a random-init row the stages after
    pretraining."""
    if row.task is not None:
        return [row.task]
    if row.init == "random":
        return [s for s in stages if s != "pretrain"]
    return stages


# ----------------------------------------------------------------------------------------------
# paper: write configs and commands
# ----------------------------------------------------------------------------------------------
def _nested(keys: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}} (an mmengine config fragment)."""
    out: dict[str, Any] = {}
    for k, v in keys.items():
        d = out
        *head, last = k.split(".")
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return out


def write_row_config(path: Path, base: str, keys: dict[str, Any], comment: str) -> Path:
    """A config file of a few lines over its `_base_` (relative, so the folder moves with the checkout)."""
    from mmengine.config import Config

    base_abs = base if Path(base).is_absolute() else str(ROOT / base)
    rel = os.path.relpath(base_abs, path.parent)
    body = Config(_nested(keys)).pretty_text if keys else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {comment}\n_base_ = [{rel!r}]\n{body}")
    return path


def write_paper(spec: TableSpec, args: argparse.Namespace) -> Path:
    """Configs under <root>/configs/ and <root>/commands.sh; returns the script's path."""
    root = Path(args.work_dir) / "paper" / spec.name
    stages = stages_to_run(spec, "paper")
    rows = rows_to_run(spec, "paper", args.rows)
    scale = spec.scales.get("paper", {})
    if stages[0] != "pretrain" and not args.ckpt:
        raise ValueError(f"table {spec.name} fine-tunes a pretrained backbone: give --ckpt PATH (NEPA-B; a Large "
                         "row takes $NEPA_L_CKPT)")
    lines = ["#!/usr/bin/env bash",
             f"# {spec.title}: the runs of every row at the paper's scale (written by `nepa-eval ablate {spec.name} "
             "--scale paper`).",
             "# Submit as is on one 8-GPU node, or set TORCHRUN for several nodes; run from the repository root.",
             f"# Afterwards: nepa-eval report --runs {root} --table {spec.name}",
             "set -euo pipefail",
             f'TORCHRUN=${{TORCHRUN:-"{scale.get("torchrun", "torchrun --nproc_per_node=8")}"}}', ""]
    entries = []  # the manifest the report reads once the runs are back
    for row in rows:
        lines.append(f"# --- {row.name}: {row.label} (paper: {row.paper})")
        ckpt = args.ckpt if row.size != "large" else "${NEPA_L_CKPT:?set NEPA_L_CKPT to a pretrained NEPA-L}"
        if stages[0] == "pretrain":
            ckpt = None
        if row.init == "random":
            ckpt = "none"
        parent = None
        for stage in row_stages(row, stages):
            s = stage_setting(spec, "paper", stage)
            base = s.get("large" if row.size == "large" else "config", s["config"])
            keys = {**(s.get("options") or {}), **for_stage(args.cfg_options, stage), **row.keys.get(stage, {})}
            cfg = write_row_config(root / "configs" / f"{row.name}_{stage}.py", base, keys,
                                   f"{spec.name} / {row.label}: {stage} ({'paper: ' + str(row.paper)})")
            run_dir = root / row.name / stage
            cmd = [stage, "--config", str(cfg), "--work-dir", str(run_dir), "--launcher", "pytorch"]
            cmd += [str(a) for a in s.get("args", [])]
            line = "$TORCHRUN -m nepa_eval.cli " + shlex.join(cmd)
            if ckpt is not None:
                line += " --ckpt " + (ckpt if ckpt.startswith("${") else shlex.quote(ckpt))
            lines.append(line)
            entries.append(entry(spec.name, row.name, 0, stage, run_dir, parent, root, scale="paper", ckpt=ckpt))
            if stage == "pretrain":
                ckpt, parent = backbone_file(run_dir), run_dir
        lines.append("")
    lines.append(f"nepa-eval report --runs {shlex.quote(str(root))} --table {spec.name} --out "
                 f"{shlex.quote(str(root / 'report'))}")
    write_manifest(root, entries)
    script = root / "commands.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def run(args: argparse.Namespace) -> int:
    """Run or write the table's rows; at tiny scale, finish with its report."""
    spec = load_spec(args.table)
    if args.scale == "paper":
        script = write_paper(spec, args)
        print(f"wrote {script} and its configs; submit it on the cluster, then:\n"
              f"  nepa-eval report --runs {script.parent} --table {spec.name}")
        return 0
    t0 = time.time()
    root = run_tiny(spec, args)
    if args.dry_run:
        return 0
    out = Path(args.out or f"reports/out/{spec.name}")
    summary, results = run_report([str(root)], [spec.name], out)
    res = results[0]
    print(f"[nepa] ablate {spec.name}: {time.time() - t0:.0f}s")
    for c in res.cells:
        if c.status != "reference":
            print(cell_line(c))
    print(f"CSV: {res.csv}\nsummary: {summary}")
    return 0
