"""The report's plots, as PNG files: front, latency, hypervolume, timeline, importances."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from protege.search._config import Config
from protege.search._profile import TeacherProfile
from protege.search._records import Outcome, Pick, TrialRecord

__all__ = ["plot_front", "plot_hypervolume", "plot_importances", "plot_latency", "plot_timeline"]

# One colour per trial outcome (``Outcome``), shared by every plot.
OUTCOME_COLORS = {"trained": "tab:blue", "reused": "tab:cyan", "rejected": "tab:orange",
                  "skipped": "tab:purple", "stopped": "tab:olive", "failed": "tab:red",
                  "running": "0.6"}


@contextlib.contextmanager
def _figure(path: Path, size: tuple[float, float] = (6.4, 4.4)) -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=110)
    try:
        yield ax
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _integers() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _accuracy_axis(ax: Any, teacher: TeacherProfile, config: Config,
                   accuracies: Sequence[float]) -> float:
    """Draw the accuracy limit, set the y range; returns the floor."""
    floor = teacher.val_accuracy - config.constraints.max_accuracy_drop
    ax.axhline(floor, color="tab:red", lw=0.8, ls="--", label="accuracy limit")
    low = min([*accuracies, floor]) - 0.02
    ax.set_ylim(max(0.0, low), min(1.0, max([*accuracies, teacher.val_accuracy]) + 0.02))
    ax.set_ylabel("validation accuracy (brief training)")
    return floor


def plot_front(path: Path, *, records: Sequence[TrialRecord], front: Sequence[TrialRecord],
               teacher: TeacherProfile, config: Config, pick: Pick | None) -> None:
    """Accuracy against MACs (a fraction of the teacher's): trials, front, teacher,
    limits, pick."""
    done = [r for r in records if r.outcome == Outcome.TRAINED]
    with _figure(path) as ax:
        ax.scatter([(r.macs or 0) / teacher.macs for r in done], [r.accuracy for r in done],
                   s=14, color="0.6", label="trained students")
        ax.plot([(r.macs or 0) / teacher.macs for r in front], [r.accuracy for r in front],
                "o-", color="tab:blue", ms=4, label="Pareto front")
        ax.scatter([1.0], [teacher.val_accuracy], marker="*", s=140, color="black",
                   label="teacher")
        _accuracy_axis(ax, teacher, config, [r.accuracy or 0.0 for r in front])
        max_macs, _ = config.constraints.resolve(teacher.macs, teacher.params)
        if max_macs != float("inf"):
            ax.axvline(max_macs / teacher.macs, color="tab:orange", lw=0.8, ls="--",
                       label="MAC limit")
        if pick is not None:
            ax.scatter([pick.macs / teacher.macs], [pick.search_accuracy], s=120,
                       facecolors="none", edgecolors="tab:green", linewidths=2,
                       label=f"pick (trial {pick.trial})")
        ax.set_xlabel("MACs / teacher's MACs")
        ax.legend(fontsize=8, loc="lower right")


def plot_latency(path: Path, *, records: Sequence[TrialRecord], front: Sequence[Mapping[str, Any]],
                 teacher: TeacherProfile, config: Config, pick: Pick | None,
                 pick_latency_ms: float | None, settings: str = "batch 1, 1 thread") -> bool:
    """Accuracy against the measured latency of the front's members.

    Trials' predicted latencies are drawn too when latency was an objective or a limit,
    and each front member's prediction is joined to its measurement by a line.
    ``settings`` names where the latencies were taken (runtime, precision, batch,
    threads). Returns False (and writes nothing) when the run measured no latency.
    """
    measured = [(m["latency_ms_measured"], m["accuracy"]) for m in front
                if m.get("latency_ms_measured") is not None]
    if not measured:
        return False
    predicted = [r for r in records if r.outcome == Outcome.TRAINED and r.latency_ms is not None]
    pairs = [(m["latency_ms_predicted"], m["latency_ms_measured"], m["accuracy"]) for m in front
             if m.get("latency_ms_predicted") is not None
             and m.get("latency_ms_measured") is not None]
    with _figure(path) as ax:
        if predicted:
            ax.scatter([r.latency_ms for r in predicted], [r.accuracy for r in predicted],
                       s=14, color="0.6", label="trained students (predicted latency)")
        for i, (guess, real, accuracy) in enumerate(pairs):
            ax.plot([guess, real], [accuracy, accuracy], color="tab:blue", lw=0.8, alpha=0.6,
                    label="front: predicted to measured" if i == 0 else None)
        ax.scatter([m[0] for m in measured], [m[1] for m in measured], s=22,
                   color="tab:blue", label="front's students (measured latency)")
        if teacher.latency_ms is not None:
            ax.scatter([teacher.latency_ms], [teacher.val_accuracy], marker="*", s=140,
                       color="black", label="teacher")
        _accuracy_axis(ax, teacher, config, [m[1] for m in measured])
        if config.constraints.max_latency_ms is not None:
            ax.axvline(config.constraints.max_latency_ms, color="tab:orange", lw=0.8, ls="--",
                       label="latency limit")
        if pick is not None and pick_latency_ms is not None:
            ax.scatter([pick_latency_ms], [pick.search_accuracy], s=120, facecolors="none",
                       edgecolors="tab:green", linewidths=2, label=f"pick (trial {pick.trial})")
        ax.set_xlabel(f"latency, ms per forward pass ({settings}, this CPU)")
        ax.legend(fontsize=8, loc="lower right")
    return True


def plot_hypervolume(path: Path, curve: Sequence[tuple[int, float]]) -> None:
    """Hypervolume of the trials so far, after each trial."""
    with _figure(path, (6.4, 3.4)) as ax:
        ax.step([n for n, _ in curve], [v for _, v in curve], where="post", color="tab:blue")
        ax.xaxis.set_major_locator(_integers())
        ax.set_xlabel("trial")
        ax.set_ylabel("hypervolume")


def plot_timeline(path: Path, spans: Sequence[tuple[int, float, float, str]]) -> None:
    """One bar per trial, from start to end (seconds since the first trial), by outcome."""
    with _figure(path, (6.4, max(2.4, 0.12 * len(spans) + 1.2))) as ax:
        seen: set[str] = set()
        shortest = 0.006 * max((end for _, _, end, _ in spans), default=1.0)  # stays visible
        for number, start, end, kind in spans:
            label = None if kind in seen else kind
            seen.add(kind)
            ax.barh(number, max(end - start, shortest), left=start, height=0.8,
                    color=OUTCOME_COLORS.get(kind, "0.5"), label=label)
        ax.invert_yaxis()
        ax.yaxis.set_major_locator(_integers())
        ax.set_xlabel("seconds since the first trial started")
        ax.set_ylabel("trial")
        ax.legend(fontsize=8, loc="best")


def plot_importances(path: Path, importances: Mapping[str, Mapping[str, float]]) -> None:
    """Horizontal bars: each choice's importance for each objective (fANOVA)."""
    names = list(next(iter(importances.values())))
    height = 0.8 / len(importances)
    with _figure(path, (6.4, max(2.4, 0.35 * len(names) * len(importances) + 1.0))) as ax:
        for k, (objective, values) in enumerate(importances.items()):
            ax.barh([i + k * height for i in range(len(names))],
                    [values.get(name, 0.0) for name in names], height=height, label=objective)
        ax.set_yticks([i + height * (len(importances) - 1) / 2 for i in range(len(names))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("importance (fANOVA: share of the objective's variance)")
        ax.legend(fontsize=8, loc="lower right")
