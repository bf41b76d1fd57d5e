"""Plots of a table: ours beside the paper's (bars), and the runs' training and health curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .runs import Run, _as_float
from .spec import TableSpec
from .tables import Cell, _is_fail

HEALTH_KEYS = ("cos", "out_std", "eff_rank")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(spec: TableSpec, cells: list[Cell], out: Path) -> Path:
    """Ours beside the paper's, one panel each (the scales differ: tiny Fashion-MNIST vs ImageNet)."""
    plt = _plt()
    labels = [c.row.label for c in cells]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(cells) + 1.6), sharey=True)
    y = list(range(len(cells)))
    panels = [("paper: " + spec.paper_metric, [c.row.paper for c in cells], [c.row.reference for c in cells]),
              ("ours: " + ", ".join(sorted({c.metric for c in cells if c.metric}) or ["no runs"]),
               [("fail" if c.status == "fail" else c.ours) for c in cells], [False] * len(cells))]
    for ax, (title, vals, ref) in zip(axes, panels):
        at_left = ax.get_yaxis_transform()  # x in axes fraction, y in data: text that shows at any x range
        nums = [float(v) for v in vals if v is not None and not _is_fail(v)]
        for i, (v, is_ref) in enumerate(zip(vals, ref)):
            if _is_fail(v):
                ax.text(0.02, i, "fail", transform=at_left, va="center", color="#d62728", fontweight="bold")
            elif v is None:
                ax.text(0.02, i, "-" if ax is axes[0] else cells[i].status, transform=at_left, va="center",
                        color="grey")
            else:
                ax.barh(i, float(v), color="#bbbbbb" if is_ref else "#1f77b4")
                ax.text(float(v), i, f" {float(v):.1f}", va="center", fontsize=8)
        if nums:  # zoom on the values (top-1 differences of a point matter), keeping room for the labels
            lo, top = min(nums), max(nums)
            span = max(top - lo, 1.0)
            ax.set_xlim(max(0.0, lo - 1.5 * span) if lo > 2 * span else 0.0, top + 0.3 * span)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels)
    axes[0].set_ylim(len(cells) - 0.5, -0.5)  # first row on top, room for the last
    agree = [c.agrees for c in cells]
    n_yes, n_all = agree.count("yes"), sum(1 for a in agree if a)
    fig.suptitle(f"{spec.title}" + (f"  (direction vs '{spec.baseline}': {n_yes}/{n_all} rows agree)" if n_all else ""),
                 fontsize=10)
    path = out / f"{spec.name}_table.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _series(run: Run, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in run.scalars():
        if key in rec and "step" in rec:
            v = _as_float(rec[key])
            xs.append(float(rec["step"]))
            ys.append(v if v is not None and math.isfinite(v) else float("nan"))
    return xs, ys


def _runs_of(cells: list[Cell]) -> list[tuple[str, Run]]:
    """(row label, run) for every run of the table, lineages included, each run once."""
    seen, out = set(), []
    for c in cells:
        for r in sorted(c.runs, key=lambda r: r.mtime):
            for x in r.lineage():
                if id(x) not in seen:
                    seen.add(id(x))
                    out.append((c.row.label, x))
    return out


def plot_curves(spec: TableSpec, cells: list[Cell], out: Path, keys: Optional[list[str]] = None,
                suffix: str = "curves", title: str = "training curves") -> Optional[Path]:
    """The runs' scalars overlaid, one panel per (stage, scalar); None when the runs logged none of them."""
    plt = _plt()
    runs = _runs_of(cells)
    panels: list[tuple[str, str]] = []
    for stage in spec.stage_names:
        stage_runs = [r for _, r in runs if r.task == stage]
        names = set()
        for r in stage_runs:
            for rec in r.scalars():
                names.update(k for k, v in rec.items() if _as_float(v) is not None)
        wanted = keys if keys is not None else ["loss"] + sorted(k for k in names if k.startswith("val/"))
        panels += [(stage, k) for k in wanted if k in names]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    colors = {c.row.label: plt.cm.tab10(i % 10) for i, c in enumerate(cells)}
    for ax, (stage, key) in zip(axes.flat, panels):
        for label, r in runs:
            if r.task != stage:
                continue
            xs, ys = _series(r, key)
            if xs:
                style = "--" if r.failed else "-"
                ax.plot(xs, ys, style, color=colors.get(label), label=f"{label}{' (' + r.status + ')' if r.failed else ''}",
                        marker="o" if len(xs) < 4 else None)
        ax.set_title(f"{stage}: {key}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{spec.title}: {title}", fontsize=10)
    fig.tight_layout()
    path = out / f"{spec.name}_{suffix}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
