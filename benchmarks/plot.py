"""The README's figure: req/s and p99 latency against concurrency, per setup, with the raw limit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class Row(Protocol):
    setup: str
    concurrency: int
    rps: float
    p99_ms: float


def plot(rows: Sequence[Row], raw_rps: float, title: str, out: Path) -> None:
    """Two panels (throughput, p99) sharing a log-2 concurrency axis; the raw limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    setups = list(dict.fromkeys(r.setup for r in rows))
    for setup in setups:
        mine = sorted((r for r in rows if r.setup == setup), key=lambda r: r.concurrency)
        levels = [r.concurrency for r in mine]
        left.plot(levels, [r.rps for r in mine], marker="o", label=setup)
        right.plot(levels, [r.p99_ms for r in mine], marker="o", label=setup)
    left.axhline(raw_rps, color="grey", linestyle="--", label="raw limit (in-process)")
    for axis, label in ((left, "requests / s"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
