"""The transfer study's table, plot and summary, from its manifest and each run's final_metrics.json.

A claim needs seeds: pretraining "pays" at a length only where its mean fine-tuned top-1 is above random init's by
more than the two spreads (sample std) added, with at least two finished seeds on each side; a single seed is
shown but never called a direction.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nepa_eval.records import read_final as _final  # {} for a run that wrote none

MANIFEST = "manifest.json"  # written by nepa_eval.transfer beside the runs


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample std (None with fewer than two values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Cell:
    """Fine-tuned top-1 of one (pretraining length, label budget) over its seeds."""
    steps: int
    labels: int
    epochs: int
    values: list[float] = field(default_factory=list)   # finished seeds' top-1
    missing: list[int] = field(default_factory=list)    # seeds without a finished fine-tune
    failed: list[str] = field(default_factory=list)     # 'seed k: pretrain collapsed' ...

    @property
    def mean(self) -> Optional[float]:
        return mean_std(self.values)[0]

    @property
    def std(self) -> Optional[float]:
        return mean_std(self.values)[1]

    def text(self) -> str:
        if not self.values:
            return "missing" if not self.failed else "fail"
        s = f"{self.mean:.2f}" + (f" ± {self.std:.2f}" if self.std is not None else "")
        n_all = len(self.values) + len(self.missing) + len(self.failed)
        return s + (f" ({len(self.values)} of {n_all} seeds)" if len(self.values) < n_all else "")


def versus(c: Cell, base: Cell) -> str:
    """'above' / 'below' (beyond both spreads, >= 2 seeds each), 'within spread', 'single seed' or ''."""
    if c.mean is None or base.mean is None:
        return ""
    if c.std is None or base.std is None:
        return "single seed"
    d = c.mean - base.mean
    if abs(d) <= c.std + base.std:
        return "within spread"
    return "above" if d > 0 else "below"


@dataclass
class Study:
    steps: list[int]
    budgets: list[tuple[int, int]]
    cells: dict[tuple[int, int], Cell]
    pixels: dict[int, dict[str, Optional[float]]]        # labels -> linear_top1, knn_top1
    depth: dict[str, dict[int, float]]                   # 'pretrained' / 'random' -> block -> k-NN top-1
    depth_final: dict[str, Optional[float]]
    depth_steps: Optional[int]


def load_study(root: Path) -> Study:
    """The study's numbers from <root>/manifest.json and the runs it lists."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no transfer manifest here; run `nepa-eval transfer` first (it writes one "
                                "under --work-dir/<scale>/)")
    man = json.loads(path.read_text())
    runs = man["runs"]
    budgets = [tuple(b) for b in man["budgets"]]
    steps = list(man["steps"])
    pre = {(r["steps"], r["seed"]): _final(r["run_dir"]) for r in runs if r["stage"] == "pretrain"}
    cells = {(n, b[0]): Cell(n, b[0], b[1]) for n in steps for b in budgets}
    for r in runs:
        if r["stage"] != "cls":
            continue
        cell = cells[(r["steps"], r["labels"])]
        p = pre.get((r["steps"], r["seed"]), {})
        if r["steps"] and p.get("status") not in (None, "ok", "running"):
            cell.failed.append(f"seed {r['seed']}: pretraining {p['status']}")
            continue
        f = _final(r["run_dir"])
        if f.get("status") == "ok" and f.get("top1") is not None:
            cell.values.append(float(f["top1"]))
        elif f.get("status") in ("failed", "collapsed", "diverged"):
            cell.failed.append(f"seed {r['seed']}: fine-tune {f['status']}")
        else:
            cell.missing.append(r["seed"])
    pixels: dict[int, dict[str, Optional[float]]] = {}
    for r in runs:
        f = _final(r["run_dir"]) if r["stage"] == "pixels" else {}
        if f.get("status") == "ok":
            pixels[r["labels"]] = dict(linear_top1=f.get("linear_top1"), knn_top1=f.get("knn_top1"))
    knn = [r for r in runs if r["stage"] == "knn"]
    depth, depth_final = read_depth({r["role"]: r["run_dir"] for r in knn})
    depth_steps = next((r.get("steps") for r in knn if r["role"] == "pretrained"), None)
    return Study(steps, budgets, cells, pixels, depth, depth_final, depth_steps)


def verdicts(st: Study) -> list[str]:
    """One sentence per budget: does any pretraining length beat random init beyond the spread?"""
    out = []
    for labels, epochs in st.budgets:
        base = st.cells[(0, labels)] if 0 in st.steps else None
        name = f"{labels:,} labels ({epochs} epochs)"
        if base is None or base.mean is None:
            out.append(f"{name}: no random-init fine-tune to compare with.")
            continue
        pre = [st.cells[(n, labels)] for n in st.steps if n > 0 and st.cells[(n, labels)].mean is not None]
        if not pre:
            out.append(f"{name}: no finished pretrained fine-tune.")
            continue
        wins = [c for c in pre if versus(c, base) == "above"]
        best = max(pre, key=lambda c: c.mean)
        if wins:
            w = max(wins, key=lambda c: c.mean)
            out.append(f"{name}: pretraining beats random init beyond the seed spread from "
                       f"{min(c.steps for c in wins):,} steps (best: {w.steps:,} steps, {w.text()} against "
                       f"{base.text()}).")
        else:
            out.append(f"{name}: no pretraining length beats random init beyond the seed spread (best: "
                       f"{best.steps:,} steps, {best.text()}, {versus(best, base)}; random init {base.text()}).")
    return out


def markdown(st: Study) -> str:
    """The table (rows: pretraining length; columns: label budgets) and the depth profile."""
    head = ["pretraining steps"] + [f"{l:,} labels, {e} ep" for l, e in st.budgets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in st.steps:
        cells = []
        for labels, _ in st.budgets:
            c = st.cells[(n, labels)]
            t = c.text()
            if n > 0 and (v := versus(c, st.cells.get((0, labels), c))) in ("above", "below", "within spread"):
                t += f" ({v})"
            cells.append(t)
        lines.append(f"| {'0 (random init)' if n == 0 else f'{n:,}'} | " + " | ".join(cells) + " |")
    for key, label in (("linear_top1", "raw pixels, linear classifier"), ("knn_top1", "raw pixels, k-NN")):
        vals = [st.pixels.get(l, {}).get(key) for l, _ in st.budgets]
        if any(v is not None for v in vals):
            lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(st)) + "\n"
    if st.depth:
        text += "\n" + depth_markdown(st.depth, st.depth_final, st.depth_steps)
    return text


def depth_markdown(depth: dict[str, dict[int, float]], final: dict[str, Optional[float]],
                   steps: Optional[int] = None) -> str:
    """The depth profile as a table: one line per block, a column per backbone (pretrained, random init)."""
    blocks = sorted(set().union(*(d.keys() for d in depth.values())))
    roles = [r for r in ("pretrained", "random") if r in depth]
    names = {"pretrained": f"pretrained ({steps:,} steps)" if steps else "pretrained", "random": "random init"}
    text = ("Depth profile: k-NN top-1 of each block's output (mean of its patch tokens), and of the final features\n\n"
            "| block | " + " | ".join(names[r] for r in roles) + " |\n|" + "---|" * (len(roles) + 1) + "\n")
    for b in blocks:
        text += f"| {b} | " + " | ".join(_f(depth[r].get(b)) for r in roles) + " |\n"
    return text + "| final (normed) | " + " | ".join(_f(final.get(r)) for r in roles) + " |\n"


def read_depth(run_dirs: dict[str, str]) -> tuple[dict[str, dict[int, float]], dict[str, Optional[float]]]:
    """Per role ('pretrained', 'random'): block -> k-NN top-1 and the final features' k-NN, from `knn` runs."""
    depth, final = {}, {}
    for role, d in run_dirs.items():
        f = _final(d)
        if f.get("status") == "ok":
            depth[role] = dict(sorted((int(k.rsplit("block", 1)[1]), float(v)) for k, v in f.items()
                                      if k.startswith("knn_top1_block")))
            final[role] = f.get("knn_top1")
    return depth, final


def plot_depth(ax: Any, depth: dict[str, dict[int, float]]) -> dict[str, list]:
    """k-NN top-1 against block, pretrained and random init, on `ax`; returns the points drawn."""
    drawn = {}
    for role, style in (("pretrained", "o-"), ("random", "s--")):
        if role in depth:
            xs = list(depth[role])
            ax.plot(xs, [depth[role][b] for b in xs], style, label="pretrained" if role == "pretrained" else "random init")
            drawn[role] = [(b, depth[role][b]) for b in xs]
    ax.set_xlabel("block")
    ax.set_ylabel("k-NN top-1 (%)")
    ax.set_title("Depth profile (frozen features)")
    ax.set_xticks(sorted(set().union(*(d.keys() for d in depth.values()))))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return drawn


def write_depth(run_dirs: dict[str, str], out: Path, steps: Optional[int] = None) -> tuple[str, Optional[Path]]:
    """The depth profile of two `knn` runs as a Markdown table and out/depth_profile.png (None without runs)."""
    depth, final = read_depth(run_dirs)
    if not depth:
        return "", None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    plot_depth(ax, depth)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    png = out / "depth_profile.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return depth_markdown(depth, final, steps), png


def _f(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.2f}"


def write_csv(st: Study, path: Path) -> Path:
    """One line per (steps, labels): mean, std, seeds, the values, versus random init."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["steps", "labels", "epochs", "top1_mean", "top1_std", "seeds", "values", "missing_seeds",
                    "failed", "versus_random_init"])
        for (n, labels), c in st.cells.items():
            base = st.cells.get((0, labels))
            w.writerow([n, labels, c.epochs, _f(c.mean), _f(c.std), len(c.values),
                        " ".join(f"{v:.2f}" for v in c.values), " ".join(map(str, c.missing)), "; ".join(c.failed),
                        versus(c, base) if base is not None and n > 0 else ""])
        for labels, p in sorted(st.pixels.items()):
            w.writerow(["pixels_linear", labels, "", _f(p.get("linear_top1")), "", "", "", "", "", ""])
            w.writerow(["pixels_knn", labels, "", _f(p.get("knn_top1")), "", "", "", "", "", ""])
    return path


def plot(st: Study, path: Path) -> dict[str, Any]:
    """Top-1 against pretraining steps (log axis; one line per budget with seed error bars; random init and the
    pixel references as horizontal lines) and the depth profile beside it. Returns what it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: dict[str, Any] = {"lines": {}, "random_init": {}, "pixels": {}, "depth": {}}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw=dict(width_ratios=[3, 2]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (labels, epochs) in enumerate(st.budgets):
        col = colors[i % len(colors)]
        pts = [(n, st.cells[(n, labels)]) for n in st.steps if n > 0 and st.cells[(n, labels)].mean is not None]
        if pts:
            xs, ys = [n for n, _ in pts], [c.mean for _, c in pts]
            es = [c.std or 0.0 for _, c in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=col, label=f"pretrained, {labels:,} labels")
            drawn["lines"][labels] = list(zip(xs, ys, es))
        base = st.cells.get((0, labels))
        if base is not None and base.mean is not None:
            ax.axhline(base.mean, color=col, ls="--", lw=1, label=f"random init, {labels:,} labels")
            if base.std:
                ax.axhspan(base.mean - base.std, base.mean + base.std, color=col, alpha=0.12)
            drawn["random_init"][labels] = (base.mean, base.std)
        p = st.pixels.get(labels, {})
        if p.get("linear_top1") is not None:
            ax.axhline(p["linear_top1"], color=col, ls=":", lw=1, label=f"raw pixels (linear), {labels:,} labels")
            drawn["pixels"][labels] = p["linear_top1"]
    ax.set_xscale("log")
    ax.set_xlabel("pretraining steps")
    ax.set_ylabel("fine-tuned top-1 (%)")
    ax.set_title("Fine-tuned top-1 against NEPA pretraining length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if st.depth:
        drawn["depth"] = plot_depth(ax2, st.depth)
    else:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


@dataclass
class Result:
    markdown: str
    csv: Path
    plot: Path
    summary: Path
    drawn: dict[str, Any]


def write_report(root: Path, out: Path) -> Result:
    """transfer.csv, transfer.png and transfer.md under `out`."""
    st = load_study(root)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(st)
    csv_path = write_csv(st, out / "transfer.csv")
    png = out / "transfer.png"
    drawn = plot(st, png)
    summary = out / "transfer.md"
    summary.write_text("# Transfer study: fine-tuned top-1 against NEPA pretraining length\n\n" + md
                       + f"\n![transfer study]({png.name})\n")
    return Result(md, csv_path, png, summary, drawn)
