"""Runs that survive preemption: SIGTERM / SIGUSR1 finish the current step, write a complete checkpoint, record
status `preempted` and exit with EXIT_PREEMPTED; `--resume` continues exactly, past an incomplete last checkpoint.

SLURM and Kubernetes send SIGTERM some seconds before they kill a job (SLURM: `KillWait`, 30 s by default; with
`#SBATCH --signal=USR1@120` SIGUSR1 two minutes before the time limit). `PreemptionHook` is declared in every
task's runtime config (``default_hooks.preemption``), so `nepa-eval pretrain|cls|seg` and mmengine's / mmseg's own
tools/train.py run it alike. What it does:

- before the run, on `--resume`: checks the checkpoint `last_checkpoint` names and, if it is incomplete or corrupt,
  resumes from the newest complete one before it, saying so;
- from the start of training to its last step: the signal handlers (they only set a flag; DataLoader workers
  forked later inherit them and keep serving batches); after the last step (final validation, k-NN, export) and in
  test-only runs a signal acts as without this hook;
- after every training step: the flag, agreed by all ranks (one all-reduce, so every rank stops at the same step
  under torchrun), stops the run: the checkpoint of that step is written atomically (``iter_<step>.pth``, then
  `last_checkpoint`), final_metrics.json gets status ``preempted``, the ranks meet, and the process exits with
  EXIT_PREEMPTED (a SystemExit, so no traceback, and no end-of-training work such as the final k-NN);
- checkpoints carry the process's RNG states (meta.rng), restored on resume just before the first batch is drawn
  (so data decoded in this process continues its random stream too); an epoch-based loop (cls) stopped inside an
  epoch resumes inside it (the sampler skips the batches already trained on, without reading them).
"""
from __future__ import annotations

import os
import signal
import sys
import zipfile
from itertools import islice
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from mmengine.dist import all_reduce, barrier, is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry" (with --resume)
SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(SystemExit):
    """The run stopped on a signal after writing its checkpoint; `code` is EXIT_PREEMPTED, `message` says where."""

    def __init__(self, message: str, code: int = EXIT_PREEMPTED) -> None:
        super().__init__(code)
        self.message = message


# ----------------------------------------------------------------------------------------------
# checkpoints: is one complete, which one to resume from, writing one atomically
# ----------------------------------------------------------------------------------------------
def checkpoint_problem(path: str | os.PathLike) -> Optional[str]:
    """None when `path` is a complete checkpoint file, else what is wrong with it. A torch checkpoint is a zip
    archive: a file cut short has no central directory, and a damaged one fails the CRC of a member."""
    p = Path(path)
    if not p.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(p) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "no data.pkl in the archive (not a torch checkpoint)"
            bad = z.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check (damaged)"
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"incomplete or not a checkpoint ({type(e).__name__}: {e})"
    return None


def run_checkpoints(work_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint files (iter_*.pth, epoch_*.pth, best_*.pth), newest first (by modification time)."""
    files = [p for pat in ("iter_*.pth", "epoch_*.pth", "best_*.pth") for p in Path(work_dir).glob(pat)]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def resume_target(work_dir: str | os.PathLike) -> tuple[Optional[Path], list[str]]:
    """The checkpoint to resume from: the one `last_checkpoint` names when it is complete, else the newest complete
    one before it. Returns (path or None, notes on the ones skipped)."""
    last_file = Path(work_dir) / "last_checkpoint"
    last = Path(last_file.read_text().strip()) if last_file.is_file() else None
    notes: list[str] = []
    if last is not None:
        why = checkpoint_problem(last)
        if why is None:
            return last, notes
        notes.append(f"{last}: {why}")
    for p in run_checkpoints(work_dir):
        if last is not None and p.resolve() == last.resolve():
            continue
        why = checkpoint_problem(p)
        if why is None:
            return p, notes
        notes.append(f"{p}: {why}")
    return None, notes


def save_atomic(runner: Any, step: int) -> str:
    """The runner's checkpoint of the step just finished (iteration count in its meta, so an epoch-based loop
    resumes inside its epoch) as work_dir/iter_<step>.pth, written under a temporary name and renamed, then
    `last_checkpoint` replaced; returns the path. Every rank calls it (the hooks' before_save_checkpoint run on
    all); only the main process writes."""
    name = f"iter_{step}.pth"
    out = Path(runner.work_dir)
    runner.save_checkpoint(str(out), name + ".tmp", meta=dict(epoch=runner.epoch, iter=step, preempted=True),
                           by_epoch=False)
    final = out / name
    if is_main_process():
        with open(out / (name + ".tmp"), "rb") as f:
            os.fsync(f.fileno())
        os.replace(out / (name + ".tmp"), final)
        last = out / "last_checkpoint"
        with open(str(last) + ".tmp", "w") as f:
            f.write(str(final))
            f.flush()
            os.fsync(f.fileno())
        os.replace(str(last) + ".tmp", last)
    return str(final)


# ----------------------------------------------------------------------------------------------
# mid-epoch resume of an epoch-based loop
# ----------------------------------------------------------------------------------------------
class SkipFirst:
    """A sampler that leaves out the first `skip` indices of its wrapped sampler (the batches of the epoch already
    trained on before the checkpoint), so a resumed epoch goes on where it stopped without decoding them."""

    def __init__(self, sampler: Any, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class FirstFetchHook:
    """An iterator that calls `fn` once, just before its item number `after` (0-based) is fetched: the resumed run's
    RNG states are restored there, after mmengine's replay of the batches already trained on and after the
    DataLoader iterator drew its seed, so the next batch is drawn (in this process, num_workers=0) from the saved
    random stream, as in the run that was never stopped."""

    def __init__(self, it: Any, after: int, fn: Any) -> None:
        self.it, self.after, self.fn = it, after, fn

    def __iter__(self) -> "FirstFetchHook":
        return self

    def __next__(self) -> Any:
        if self.fn is not None and self.after <= 0:
            self.fn, fn = None, self.fn
            fn()
        self.after -= 1
        return next(self.it)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["it"], name)


class LoaderFirstFetchHook:
    """A DataLoader stand-in for one epoch: iterating it gives a FirstFetchHook over the real loader's iterator."""

    def __init__(self, loader: Any, fn: Any) -> None:
        self.loader, self.fn = loader, fn

    def __iter__(self) -> FirstFetchHook:
        return FirstFetchHook(iter(self.loader), 0, self.fn)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)


# ----------------------------------------------------------------------------------------------
# the hook
# ----------------------------------------------------------------------------------------------
@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stop cleanly on SIGTERM / SIGUSR1 (see the module). `signals`: the signal names handled; `exit_code`: the
    process's exit status after a preemption (EXIT_PREEMPTED = 75). Lowest priority, so the step's own hooks (the
    logger, the run record, a scheduled checkpoint) have run before it stops the run."""

    priority = "LOWEST"

    def __init__(self, signals: Sequence[str] = SIGNALS, exit_code: int = EXIT_PREEMPTED) -> None:
        self.signals, self.exit_code = tuple(signals), int(exit_code)
        self.received: Optional[str] = None
        self.steps_over = False  # after the last training step a signal is no longer held back
        self._previous: dict[int, Any] = {}
        self._rng: Optional[dict] = None
        self._skip_batches = 0
        self._wrapped: Optional[tuple[Any, Any]] = None
        self._wrapped_loader: Any = None

    # signals -----------------------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.steps_over:  # no training step left to finish (final validation, k-NN, export): end as without us
            prev = self._previous.pop(signum, None)
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = self.received or signal.Signals(signum).name

    def install(self) -> None:
        """Set the handlers (main thread only; elsewhere, e.g. a test's worker thread, nothing is installed)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            num = getattr(signal, name)
            self._previous[num] = signal.signal(num, self._handle)

    def uninstall(self) -> None:
        for num, prev in self._previous.items():
            signal.signal(num, prev if prev is not None else signal.SIG_DFL)
        self._previous = {}

    # run ---------------------------------------------------------------------------------------
    def before_run(self, runner) -> None:
        self.received, self.steps_over = None, False
        if getattr(runner, "_resume", False) and getattr(runner, "_load_from", None) is None:
            self._pick_resume(runner)

    def _pick_resume(self, runner) -> None:
        """On auto-resume (mmengine reads `last_checkpoint`): resume from a complete checkpoint, skipping a
        last one that is incomplete or corrupt, and say so."""
        target, notes = resume_target(runner.work_dir)
        if not notes:
            return
        if target is None:
            raise RuntimeError(f"--resume: no complete checkpoint in {runner.work_dir} ({'; '.join(notes)}); "
                               "delete the damaged files and run without --resume to start again")
        print_log(f"[nepa] --resume: skipping damaged checkpoint(s): {'; '.join(notes)}; resuming from the one "
                  f"before: {target}", logger="current", level=30)
        runner._load_from = str(target)
        from nepa_eval.engine import update_final

        update_final(runner.work_dir, resumed_from=str(target), skipped_checkpoints=notes)

    def after_run(self, runner) -> None:
        self.uninstall()

    # checkpoints: RNG states and the place inside an epoch --------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        from nepa_eval.hooks.checkpoint import _rng_state

        checkpoint.setdefault("meta", {}).setdefault("rng", _rng_state())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, "_resume", False):  # weights loaded to start from (load_from), not a resume
            return
        meta = checkpoint.get("meta", {})
        self._rng = meta.get("rng")
        from mmengine.runner import EpochBasedTrainLoop

        loop = runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop):  # the batches of the current epoch already trained on (an
            # iteration-based loop skips its own by reading them again)
            per_epoch = len(loop.dataloader)
            self._skip_batches = max(0, int(meta.get("iter", 0)) - int(meta.get("epoch", 0)) * per_epoch)
            if self._skip_batches >= per_epoch:
                self._skip_batches = per_epoch
        if meta.get("preempted"):
            print_log(f"[nepa] resuming a preempted run at step {meta.get('iter')}", logger="current")

    def _restore_rng(self) -> None:
        from nepa_eval.hooks.checkpoint import _set_rng_state

        if self._rng is not None:
            _set_rng_state(self._rng)
            self._rng = None

    def before_train(self, runner) -> None:
        self.install()  # training only: a test-only run (cls --eval-only, seg --test-only) ends on a signal as before
        if self._rng is None:
            return
        # this hook restores the RNG states, before the first batch is drawn; a checkpoint hook's own restore at the
        # first step (NepaCheckpointHook) would rewind the stream that batch was drawn from
        for h in runner.hooks:
            if h is not self and getattr(h, "_resume_rng", None) is not None:
                h._resume_rng = None
        loop = runner.train_loop
        if hasattr(loop, "dataloader_iterator"):  # iteration-based: after mmengine replays the first `iter` batches
            loop.dataloader_iterator = FirstFetchHook(loop.dataloader_iterator, loop.iter, self._restore_rng)

    def before_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if self._rng is not None and not hasattr(loop, "dataloader_iterator"):  # epoch-based, the resumed epoch
            self._wrapped_loader = loop.dataloader
            loop.dataloader = LoaderFirstFetchHook(loop.dataloader, self._restore_rng)
        if not self._skip_batches:
            return
        bs = getattr(runner.train_loop.dataloader, "batch_sampler", None)
        if bs is None or not hasattr(bs, "sampler") or not hasattr(bs, "batch_size"):
            raise RuntimeError("resuming inside an epoch needs a DataLoader with a batch_size (a BatchSampler)")
        self._wrapped = (bs, bs.sampler)
        bs.sampler = SkipFirst(bs.sampler, self._skip_batches * bs.batch_size)
        print_log(f"[nepa] resuming inside epoch {runner.epoch + 1}: its first {self._skip_batches} batches were "
                  "trained on before the checkpoint", logger="current")
        self._skip_batches = 0

    def after_train_epoch(self, runner) -> None:
        if self._wrapped is not None:
            bs, sampler = self._wrapped
            bs.sampler, self._wrapped = sampler, None
        if self._wrapped_loader is not None:
            runner.train_loop.dataloader, self._wrapped_loader = self._wrapped_loader, None

    # stopping ----------------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        """The flag, agreed across ranks (any rank's signal stops them all at the same step)."""
        if not is_distributed():
            return self.received is not None
        flag = torch.tensor([1.0 if self.received else 0.0])
        all_reduce(flag, op="max")
        if flag.item() > 0 and self.received is None:
            self.received = "signal on another rank"
        return bool(flag.item() > 0)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.stop_requested():
            self.steps_over = self.is_last_train_iter(runner)
            return
        from nepa_eval.engine import update_final

        step = runner.iter + 1
        done = runner.message_hub.get_info("last_ckpt")  # the checkpoint hook's, the same on every rank
        if done and Path(done).name == f"iter_{step}.pth":  # it wrote this very step's checkpoint: not twice
            path = str(done)
        else:
            path = save_atomic(runner, step)
        msg = (f"{self.received}: stopped after step {step} and wrote {path}; rerun the same command with --resume "
               f"to continue (exit code {self.exit_code})")
        update_final(runner.work_dir, status="preempted", reason=msg, signal=self.received, checkpoint=path)
        print_log(f"[nepa] preempted: {msg}", logger="current")
        # the end of a run without the end of training (no final k-NN, no backbone export): the hooks' after_run
        # (the logger closes the visualiser, the run record its scalars, the bad-file list, this hook's handlers)
        runner.call_hook("after_run")
        update_final(runner.work_dir, steps=step)
        if is_distributed():
            barrier()  # no rank leaves before the main process has written the checkpoint
        print(f"[nepa] preempted: {msg}", file=sys.stderr, flush=True)
        raise Preempted(msg, self.exit_code)
