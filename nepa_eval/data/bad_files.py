"""Bad files (unreadable or undecodable images, annotations whose size differs from their image): the run's list.

A dataset that meets a bad file skips it (it returns the next good item) and reports it here. During a run the
reports go to one file, ``<work_dir>/bad_files.jsonl`` (one JSON object per line, appended whole, so the
DataLoader worker processes of every rank write to the same list); `BadFilesHook` (`check`) reads it in the main
process, logs each new file, and writes ``bad_files`` into final_metrics.json. The environment variable
``NEPA_BAD_FILES`` says where the list is and what bound applies; child processes inherit it.

The bound: a run fails once more than ``max(min_files, ceil(max_fraction * items))`` distinct files are bad
(default: 100 files, or 0.1 % of the data when that is more), with a message naming them. Without a run collecting
them (a dataset used on its own), each process warns on stderr and applies the bound to what the dataset has seen
(the dataset keeps that list, `seen`: nothing is kept here between calls).
Nothing here imports torch or mmengine.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from .errors import DataError

ENV = "NEPA_BAD_FILES"
LOG_NAME = "bad_files.jsonl"
MAX_FRACTION = 0.001
MIN_FILES = 100

class BadFileError(DataError):
    """More bad files than the bound allows, or --check-data found some; the message names them."""


def bad_file_limit(items: int, max_fraction: float = MAX_FRACTION, min_files: int = MIN_FILES) -> int:
    """How many distinct bad files a run of `items` items tolerates."""
    return max(int(min_files), math.ceil(max_fraction * max(int(items), 0)))


def describe(records: Iterable[dict], limit: int = 20) -> str:
    """'file (reason); file (reason); ... and N more' for an error message."""
    records = list(records)
    text = "; ".join(f"{r['file']} ({r['reason']})" for r in records[:limit])
    return text + (f"; and {len(records) - limit} more" if len(records) > limit else "")


def collector() -> Optional[dict[str, Any]]:
    """The running collection ({'log', 'max_fraction', 'min_files'}) from NEPA_BAD_FILES, or None."""
    value = os.environ.get(ENV)
    return json.loads(value) if value else None


def start_collecting(log: str | os.PathLike, max_fraction: float = MAX_FRACTION,
                     min_files: int = MIN_FILES) -> Optional[str]:
    """Send this process's (and its children's) bad-file reports to `log`; returns the previous setting."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = json.dumps(dict(log=str(log), max_fraction=max_fraction, min_files=min_files))
    return previous


def stop_collecting(previous: Optional[str] = None) -> None:
    """Restore the setting `start_collecting` returned."""
    if previous is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = previous


def append_records(log: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records to a bad-file list; each line is written whole with one O_APPEND write."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(log), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for r in records:
            os.write(fd, (json.dumps(r) + "\n").encode())
    finally:
        os.close(fd)


def read_records(log: str | os.PathLike, offset: int = 0) -> tuple[list[dict], int]:
    """(records from byte `offset` on, the offset after the last complete line) of a bad-file list."""
    p = Path(log)
    if not p.exists():
        return [], 0
    with open(p, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return records, offset + end


def report_bad_file(file: str, reason: str, items: int, split: str = "", seen: Optional[dict[str, str]] = None) -> None:
    """Report one skipped file: appended to the run's list when a run collects them, else warned about on
    stderr; raises BadFileError when the reporting dataset has seen more bad files than the bound in this process.
    `seen`: the dataset's own {file: reason} of the files it skipped (updated here)."""
    seen = seen if seen is not None else {}
    reason = " ".join(str(reason).split())[:300]
    record = dict(file=str(file), reason=reason, split=split, pid=os.getpid(), time=round(time.time(), 3))
    col = collector()
    new = file not in seen
    seen[file] = reason
    if col is not None:
        append_records(col["log"], [record])
        limit = bad_file_limit(items, col.get("max_fraction", MAX_FRACTION), col.get("min_files", MIN_FILES))
    else:
        if new:
            print(f"[nepa] warning: skipped bad file {file}: {reason}", file=sys.stderr)
        limit = bad_file_limit(items)
    if len(seen) > limit:
        listed = [dict(file=f, reason=r) for f, r in seen.items()]
        raise BadFileError(f"{len(listed)} bad files, more than the {limit} a run of {items} items tolerates "
                           f"(max(100, 0.1 %) by default): {describe(listed)}. Fix or remove them (nepa-eval ... "
                           "--check-data lists them all), or raise the bound (BadFilesHook max_fraction / min_files)")


def summary(records: Iterable[dict], limit: int, files: int = 1000) -> dict[str, Any]:
    """The final_metrics.json entry: {'count', 'limit', 'files': [{'file', 'reason'}, ...]} (distinct files)."""
    distinct: dict[str, dict] = {}
    for r in records:
        distinct.setdefault(r["file"], dict(file=r["file"], reason=r["reason"]))
    listed = list(distinct.values())
    out: dict[str, Any] = dict(count=len(listed), limit=limit, files=listed[:files])
    if len(listed) > files:
        out["files_not_listed"] = len(listed) - files
    return out
