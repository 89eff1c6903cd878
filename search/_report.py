"""The run's report: a plot of the front and a short markdown summary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from protege.search._config import Config
from protege.search._records import Pick, TeacherProfile, TrialRecord

__all__ = ["write_report"]

logger = logging.getLogger(__name__)


def _plot_front(path: Path, *, records: Sequence[TrialRecord], front: Sequence[TrialRecord],
                teacher: TeacherProfile, config: Config, pick: Pick | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.state == "complete" and r.duplicate_of is None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter([(r.macs or 0) / teacher.macs for r in done], [r.accuracy for r in done],
               s=14, color="0.6", label="trained students")
    ax.plot([(r.macs or 0) / teacher.macs for r in front], [r.accuracy for r in front],
            "o-", color="tab:blue", ms=4, label="Pareto front")
    ax.scatter([1.0], [teacher.val_accuracy], marker="*", s=140, color="black", label="teacher")
    floor = teacher.val_accuracy - config.constraints.max_accuracy_drop
    ax.axhline(floor, color="tab:red", lw=0.8, ls="--", label="accuracy limit")
    max_macs, _ = config.constraints.resolve(teacher.macs, teacher.params)
    if max_macs != float("inf"):
        ax.axvline(max_macs / teacher.macs, color="tab:orange", lw=0.8, ls="--",
                   label="MAC limit")
    if pick is not None:
        ax.scatter([pick.macs / teacher.macs], [pick.search_accuracy], s=120,
                   facecolors="none", edgecolors="tab:green", linewidths=2,
                   label=f"pick (trial {pick.trial})")
    ax.set_xlabel("MACs / teacher's MACs")
    ax.set_ylabel("validation accuracy (brief training)")
    low = min([r.accuracy or 1.0 for r in front] + [floor]) - 0.02
    ax.set_ylim(max(0.0, low), min(1.0, teacher.val_accuracy + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out: Path, *, records: Sequence[TrialRecord], front: Sequence[TrialRecord],
                 teacher: TeacherProfile, config: Config, pick: Pick | None,
                 hypervolume: float) -> None:
    """Write ``front.png`` and ``report.md`` into the run folder."""
    try:
        _plot_front(out / "front.png", records=records, front=front, teacher=teacher,
                    config=config, pick=pick)
    except Exception as exc:  # a plot must never cost the run its results
        logger.warning("could not plot the front: %s", exc)
    counts = {state: sum(r.state == state for r in records)
              for state in ("complete", "pruned", "failed")}
    rejected = sum((r.pruned_reason or "").startswith(("macs", "params")) for r in records)
    train = sum(r.train_seconds or 0.0 for r in records if r.duplicate_of is None)
    test = f"{teacher.test_accuracy:.4f}" if teacher.test_accuracy is not None else "n/a"
    lines = [
        f"# protege run: {config.task}",
        "",
        f"Teacher: {teacher.macs:,} MACs, {teacher.params:,} params, validation accuracy "
        f"{teacher.val_accuracy:.4f}, test accuracy {test}.",
        "",
        f"Trials: {len(records)} ({counts['complete']} trained, {rejected} rejected by a limit "
        f"before training, {counts['pruned'] - rejected} stopped early, {counts['failed']} "
        f"failed); {train:.0f} s of distillation; strategy `{config.strategy}`, level "
        f"{config.level}.",
        "",
        "## Pareto front",
        "",
        "| trial | val accuracy | MACs | MACs / teacher | params |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in front:
        lines.append(f"| {r.number} | {r.accuracy:.4f} | {r.macs:,} | "
                     f"{(r.macs or 0) / teacher.macs:.3f} | {r.params:,} |")
    lines += ["", f"Hypervolume (accuracy x MAC ratio, reference (0, 1)): {hypervolume:.4f}",
              "", "![front](front.png)", "", "## Pick", ""]
    if pick is None:
        lines.append("No trial completed: nothing was picked.")
    else:
        verdict = ("meets the limits" if pick.meets_constraints
                   else "does **not** meet the accuracy limit (most accurate student picked)")
        pick_test = f"{pick.test_accuracy:.4f}" if pick.test_accuracy is not None else "n/a"
        lines.append(
            f"Trial {pick.trial}: {pick.macs:,} MACs ({pick.macs / teacher.macs:.3f}x the "
            f"teacher's), {pick.params:,} params; validation accuracy {pick.search_accuracy:.4f} "
            f"after the brief training, {pick.val_accuracy:.4f} after "
            f"{config.distill.finetune_epochs} fine-tuning epochs; test accuracy {pick_test}; "
            f"{verdict}. Saved in `best/`.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
