"""Scenario output: ``result.json``, PNG plots, and a progress bar on stderr."""

from __future__ import annotations

import contextlib
import json
import resource
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Progress(Protocol):
    """What scenarios report progress to."""

    def update(self, n: float = 1) -> Any:
        """Advance by `n`."""
        ...

    def set_postfix_str(self, text: str) -> Any:
        """Show a short status next to the bar."""
        ...

    def close(self) -> None:
        """Finish the bar."""
        ...


class _Silent:
    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: float, description: str, *, quiet: bool) -> Progress:
    """A tqdm bar on stderr, or nothing when `quiet` or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return _Silent()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the 'sim' extra; the run must not depend on it
        return _Silent()
    bar: Progress = tqdm(total=total, desc=description, file=sys.stderr, leave=False)
    return bar


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_result(out: Path, result: dict[str, Any]) -> Path:
    """Write ``out/result.json`` (keys sorted, so equal runs give equal files)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "result.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def plot_cdf(path: Path, series: Mapping[str, Sequence[float]], xlabel: str, title: str) -> None:
    """A CDF plot of each named series."""
    with _axes(path, xlabel, "fraction of gets", title, legend="lower right") as ax:
        for name, values in series.items():
            ordered = sorted(values)
            if ordered:
                ys = [(i + 1) / len(ordered) for i in range(len(ordered))]
                ax.step(ordered, ys, where="post", label=f"{name} (n={len(ordered)})")


@dataclass
class Timeline:
    """Samples over a scenario's virtual time, and the moments something was done to it."""

    minutes: list[float]
    """When each sample was taken (virtual minutes; each scenario says from when)."""
    series: dict[str, tuple[str, list[float]]]
    """Name -> (unit for the axis label, one value per sample)."""
    events: dict[str, float] = field(default_factory=dict)
    """What happened (a split, a heal, users leaving) -> when, in the same minutes."""

    def as_json(self) -> dict[str, Any]:
        """For result.json."""
        return {
            "minutes": self.minutes,
            "series": {
                name: {"unit": unit, "values": ys} for name, (unit, ys) in self.series.items()
            },
            "events": self.events,
        }


def plot_timeline(path: Path, timeline: Timeline, xlabel: str, title: str) -> None:
    """Each series on its own axis (one above the other, the x axis shared), each event a
    labelled vertical line across all of them."""
    figure = timeline_figure(timeline, xlabel, title)
    try:
        figure.savefig(path, dpi=100)
    finally:
        _pyplot().close(figure)


def timeline_figure(timeline: Timeline, xlabel: str, title: str) -> Any:
    """The matplotlib figure `plot_timeline` saves (close it with ``plt.close``)."""
    plt = _pyplot()
    rows = max(1, len(timeline.series))
    figure, axes = plt.subplots(rows, 1, figsize=(6, 2 + 2 * rows), sharex=True, squeeze=False)
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    for row, (name, (unit, ys)) in enumerate(timeline.series.items()):
        ax = axes[row, 0]
        ax.plot(timeline.minutes, ys, marker=".", color="tab:blue")
        ax.set_ylabel(f"{name}\n({unit})" if unit else name)
        if unit.startswith("fraction"):
            ax.set_ylim(-0.02, 1.05)  # the whole range, so 0.98 does not look like a fall
        ax.grid(True, alpha=0.3)
        for index, (label, minute) in enumerate(timeline.events.items()):
            ax.axvline(
                minute,
                color=colours[index % len(colours)],
                linestyle="--",
                linewidth=1,
                label=label if row == 0 else None,
            )
    if timeline.events:
        axes[0, 0].legend(loc="best", fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(xlabel)
    figure.tight_layout()
    return figure


def plot_histogram(path: Path, values: Sequence[float], xlabel: str, title: str) -> None:
    """A histogram with one bar per integer value."""
    with _axes(path, xlabel, "lookups", title, legend=None) as ax:
        if values:
            low, high = int(min(values)), int(max(values))
            ax.hist(values, bins=range(low, high + 2), align="left", rwidth=0.8)


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("plots need matplotlib: pip install -e '.[sim]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def _axes(path: Path, xlabel: str, ylabel: str, title: str, *, legend: str | None) -> Iterator[Any]:
    """Axes to draw on; labelled, saved to `path` and closed afterwards."""
    plt = _pyplot()
    fig, axes = plt.subplots(figsize=(6, 4))
    ax: Any = axes
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if legend is not None:
            ax.legend(loc=legend)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
