"""The BadFilesHook: the bad files a run's DataLoader workers skip (`nepa_eval.data.bad_files`), logged as they come
in, counted in final_metrics.json, and fatal past the run's bound."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from nepa_eval.records import update_final


@HOOKS.register_module()
class BadFilesHook(Hook):
    """The run's bad files (`nepa_eval.data.bad_files`) in the run directory: the datasets of every DataLoader
    worker report the files they skip to ``bad_files.jsonl`` (started by `prepare_env`, before mmengine's loops
    fork their workers: empty for a fresh run, continued on resume); each new file is logged when it comes in,
    final_metrics.json holds ``bad_files`` = {count, limit, files}, and more than
    ``max(min_files, ceil(max_fraction * items))`` of them (items: the run's datasets together) stop the run with
    a BadFileError naming them. `known`: {'file', 'reason'} found before the run (seg's pre-run check)."""

    priority = "NORMAL"

    def __init__(self, max_fraction: float = 0.001, min_files: int = 100, known: Sequence[dict] = ()) -> None:
        self.max_fraction, self.min_files = max_fraction, min_files
        self.known = [dict(file=str(r["file"]), reason=str(r["reason"])) for r in known]
        self.records: dict[str, dict] = {}
        self.limit, self.items, self._log, self._offset = min_files, 0, None, 0

    def before_run(self, runner) -> None:
        from mmengine.runner import BaseLoop

        from nepa_eval.data import bad_files

        self._log = Path(runner.work_dir) / bad_files.LOG_NAME
        col = bad_files.collector()
        if col is None or col["log"] != str(self._log):  # a run not set up by prepare_env (mmengine's train.py):
            bad_files.start_collecting(self._log, self.max_fraction, self.min_files)  # workers forked from now on
        loops = [getattr(runner, name, None) for name in ("_train_loop", "_val_loop", "_test_loop")]
        self.items = sum(len(loop.dataloader.dataset) for loop in loops if isinstance(loop, BaseLoop))
        self.records, self._offset = {}, 0
        self.limit = bad_files.bad_file_limit(self.items, self.max_fraction, self.min_files)
        self._add(runner, self.known, "found before the run")
        self.poll(runner)
        self._write(runner)

    def _add(self, runner, records: Sequence[dict], how: str = "skipped") -> None:
        from mmengine.logging import print_log

        from nepa_eval.data.bad_files import BadFileError, describe

        new = [r for r in records if r["file"] not in self.records]
        for r in new:
            self.records[r["file"]] = r
            print_log(f"[nepa] bad file {how}: {r['file']}: {r['reason']} ({len(self.records)} so far; the run "
                      f"stops past {self.limit})", logger="current", level=logging.WARNING)
        if new:
            self._write(runner)
        if len(self.records) > self.limit:
            raise BadFileError(f"{len(self.records)} bad files, more than the {self.limit} this run tolerates "
                               f"(max({self.min_files}, {self.max_fraction:.1%} of its {self.items} items)): "
                               f"{describe(self.records.values())}. Fix or remove them ('--check-data' lists them "
                               "all before training), or raise default_hooks.bad_files.max_fraction / min_files")

    def poll(self, runner) -> None:
        """Take in the files reported since the last poll (a stat call when there are none)."""
        from nepa_eval.data.bad_files import read_records

        if self._log is not None and self._log.exists() and self._log.stat().st_size > self._offset:
            records, self._offset = read_records(self._log, self._offset)
            self._add(runner, records)

    def _write(self, runner) -> None:
        from nepa_eval.data.bad_files import summary

        update_final(runner.work_dir, bad_files=summary(self.records.values(), self.limit))

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.poll(runner)

    def after_run(self, runner) -> None:
        from nepa_eval.data.bad_files import stop_collecting

        try:
            self.poll(runner)  # the k-NN monitor's files too (it runs after training)
            self._write(runner)
        finally:
            stop_collecting()
