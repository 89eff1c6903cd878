"""Report of a comparison: markdown table, JSON records, hypervolume and front plots, tests."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protege.common import atomic_write
from protege.provenance import describe_code, provenance

__all__ = ["hv_bands", "paired_test", "write_compare_report"]

BOOTSTRAP = 10_000

_UNITS = {"compute": "sample-passes", "mac_passes": "MAC-passes", "time": "seconds"}
"""What each budget kind counts, as the report names it."""


def paired_test(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of ``a - b`` over seeds: mean, bootstrap 95 % CI, Wilcoxon p.

    The Wilcoxon signed-rank test is exact for few seeds; with ``n`` seeds its
    two-sided p-value cannot go below ``2 / 2**n`` (0.25 for 3 seeds), so it can
    only show a difference with 6 or more seeds. None where all differences are 0.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1) if n else np.zeros(1)
    p: float | None = None
    if n and np.any(diff != 0):
        from scipy.stats import wilcoxon

        p = float(wilcoxon(diff, method="exact" if n <= 25 else "auto").pvalue)
    return {"n": n, "mean_diff": float(diff.mean()) if n else math.nan,
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "wilcoxon_p": p}


def hv_bands(curves: Sequence[Sequence[dict[str, float]]], x: str,
             points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean hypervolume over seeds against ``x`` (a step curve per seed) with a 95 % t-interval."""
    from scipy.stats import t as student_t

    top = max((c[-1][x] for c in curves if c), default=1.0)
    grid = np.linspace(0.0, top, points)
    rows = []
    for curve in curves:
        xs = np.asarray([p[x] for p in curve])
        hv = np.asarray([p["hypervolume"] for p in curve])
        idx = np.searchsorted(xs, grid, side="right") - 1
        rows.append(np.where(idx >= 0, hv[np.clip(idx, 0, None)], 0.0))
    values = np.asarray(rows)
    mean = values.mean(axis=0)
    n = len(values)
    half = (student_t.ppf(0.975, n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
            if n > 1 else np.zeros_like(mean))
    return grid, mean, half


def _by_arm(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        arms.setdefault(record["arm"], []).append(record)
    for rows in arms.values():
        rows.sort(key=lambda r: r["seed"])
    return arms


def _reduction(record: dict[str, Any]) -> float:
    pick = record["pick"]
    return 1.0 / pick["macs_ratio"] if pick else math.nan


def _test_acc(record: dict[str, Any]) -> float:
    pick = record["pick"]
    return pick["test_accuracy"] if pick and pick["test_accuracy"] is not None else math.nan


def _covered(points_of: Sequence[dict[str, Any]],
             by: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """How many front points of ``points_of``'s records the same seed's front in ``by``
    weakly dominates (at least as accurate, at most as costly), and how many there are,
    over the seeds both ran."""
    fronts = {r["seed"]: r["front"] for r in by}
    covered = total = 0
    for r in points_of:
        for point in r["front"] if r["seed"] in fronts else ():
            total += 1
            covered += any(q["accuracy"] >= point["accuracy"]
                           and q["macs_ratio"] <= point["macs_ratio"]
                           for q in fronts.get(r["seed"], []))
    return covered, total


def _ms(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return fmt.format(vals[0])
    spread = fmt.replace("+", "").format(float(np.std(vals, ddof=1)))
    return f"{fmt.format(float(np.mean(vals)))} ± {spread}"


def _plots(arms: dict[str, list[dict[str, Any]]], *, teacher: dict[str, Any], stem: Path,
           title: str) -> list[str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")  # one colour per arm
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (arm, rows) in enumerate(arms.items()):
        for ax, x in zip(axes, ("students", "seconds"), strict=True):
            grid, mean, half = hv_bands([r["curve"] for r in rows], x)
            ax.plot(grid, mean, color=colors(i), label=f"{arm} (n={len(rows)})")
            ax.fill_between(grid, mean - half, mean + half, color=colors(i), alpha=0.15)
    axes[0].set_xlabel("students trained")
    axes[1].set_xlabel("training seconds (sum over students)")
    for ax in axes:
        ax.set_ylabel("hypervolume (val acc x MACs ratio)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: hypervolume, mean and 95 % interval over seeds", fontsize=10)
    fig.tight_layout()
    hv_path = stem.with_name(stem.name + "_hv.png")
    fig.savefig(hv_path, dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (arm, rows) in enumerate(arms.items()):
        for j, record in enumerate(rows):
            front = sorted(record["front"], key=lambda p: p["macs_ratio"])
            ax.step([p["macs_ratio"] for p in front], [100 * p["accuracy"] for p in front],
                    where="post", color=colors(i), alpha=0.8, marker="o", markersize=3,
                    ls="-" if record["kind"] == "search" else "--",  # baselines dashed
                    label=arm if j == 0 else None)
    ax.axhline(100 * teacher["val_accuracy"], color="k", lw=0.8, ls="--", label="teacher (val)")
    ax.axhline(100 * (teacher["val_accuracy"] - 0.01), color="k", lw=0.6, ls=":",
               label="teacher - 1 pt")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
    ax.set_xlabel("MACs / teacher MACs (log)")
    ax.set_ylabel("validation accuracy (%)")
    lows = [100 * p["accuracy"] for rows in arms.values() for r in rows for p in r["front"]]
    ax.set_ylim(max(min(lows, default=0), 100 * teacher["val_accuracy"] - 6),
                100 * teacher["val_accuracy"] + 1)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{title}: fronts of every arm and seed", fontsize=10)
    fig.tight_layout()
    front_path = stem.with_name(stem.name + "_fronts.png")
    fig.savefig(front_path, dpi=80)
    plt.close(fig)
    return [hv_path.name, front_path.name]


def write_compare_report(records: Sequence[Any], *, config: Any, command: str,
                         results_dir: str | Path, note: str = "") -> dict[str, Path]:
    """Write ``<report>.json``, ``<report>.md`` and two PNGs under ``results_dir``."""
    rows = [r if isinstance(r, dict) else r.to_dict() for r in records]
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / config.report_name
    arms = _by_arm(rows)
    teacher = rows[0]["teacher"]
    reference = config.arms[0].name
    tests: dict[str, dict[str, Any]] = {}
    for arm, arm_rows in arms.items():
        if arm == reference:
            continue
        ref = {r["seed"]: r for r in arms[reference]}
        paired = [(ref[r["seed"]], r) for r in arm_rows if r["seed"] in ref]
        tests[arm] = {
            "hypervolume": paired_test([a["hypervolume"] for a, _ in paired],
                                       [b["hypervolume"] for _, b in paired]),
            "log2_mac_reduction": paired_test([math.log2(_reduction(a)) for a, _ in paired],
                                              [math.log2(_reduction(b)) for _, b in paired]),
            "test_accuracy": paired_test([_test_acc(a) for a, _ in paired],
                                         [_test_acc(b) for _, b in paired]),
        }
    made_by = _made_by(rows)
    payload = {"command": command, "config": config.to_dict(), "teacher": teacher,
               "made_by": made_by, "provenance": provenance(config.to_dict()),
               "reference_arm": reference, "paired_tests": tests, "records": rows}
    with atomic_write(stem.with_suffix(".json")) as handle:
        json.dump(payload, handle, indent=1)
    pngs = _plots(arms, teacher=teacher, stem=stem, title=config.task)
    lines = _markdown(arms, teacher=teacher, config=config, command=command, tests=tests,
                      reference=reference, pngs=pngs, note=note, made_by=made_by)
    with atomic_write(stem.with_suffix(".md")) as handle:
        handle.write("\n".join(lines) + "\n")
    return {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"),
            "hv_png": results_dir / pngs[0], "fronts_png": results_dir / pngs[1]}


def _gmac(row: dict[str, Any]) -> float:
    """The arm's MAC-passes in billions (NaN for records made before they were counted)."""
    value = row.get("mac_passes")
    return math.nan if value is None else value / 1e9


def _spent(row: dict[str, Any]) -> float:
    """The share of its budget the arm spent, in the budget's unit (NaN: a time budget)."""
    budget = row.get("budget")
    if not budget:
        return math.nan
    used = row.get("mac_passes") if row.get("budget_kind") == "mac_passes" else row["sample_passes"]
    return math.nan if used is None else used / budget


def _unspent_epochs(row: dict[str, Any]) -> float:
    """What the budget an arm left unspent would have bought: epochs of its pick (NaN
    where the record does not say its training samples)."""
    spent, samples, pick = _spent(row), row.get("train_samples"), row.get("pick")
    if math.isnan(spent) or not samples or not pick:
        return math.nan
    unit = pick["macs"] if row.get("budget_kind") == "mac_passes" else 1
    return (1.0 - spent) * row["budget"] / (samples * unit)


def _made_by(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The distinct code versions of the records, in the order first seen."""
    seen: list[str] = []
    for row in rows:
        stamp = row.get("provenance")
        text = (describe_code(stamp) if stamp
                else "no provenance (made before records carried it)")
        if text not in seen:
            seen.append(text)
    return seen


def _markdown(arms: dict[str, list[dict[str, Any]]], *, teacher: dict[str, Any], config: Any,
              command: str, tests: dict[str, Any], reference: str, pngs: list[str],
              note: str, made_by: list[str]) -> list[str]:
    budget = config.budget
    first = next(iter(arms.values()))[0]
    if budget.kind == "compute":
        spent = (f"compute: {first['budget']} training sample-passes per arm and seed "
                 f"({budget.trials} trials of the base config plus one fine-tune)")
    elif budget.kind == "mac_passes":
        spent = (f"compute in MAC-passes: {first['budget'] / 1e9:.4g} G per arm and seed, "
                 f"the teacher's {teacher['macs']} MACs × the sample-passes of "
                 f"{budget.trials} trials of the base config plus one fine-tune; a student "
                 "pays its own MACs per sample-pass")
    else:
        spent = f"time: {budget.seconds:g} s of training per arm and seed"
    lines = [
        f"# Strategy comparison: {config.task}", "",
        "```", command, "```", "",
        f"Teacher: {teacher['macs']} MACs, val accuracy {100 * teacher['val_accuracy']:.2f} %, "
        f"test accuracy {100 * teacher['test_accuracy']:.2f} %. Budget ({spent}). "
        f"Seeds: {', '.join(str(s) for s in config.seeds)} (n = {len(config.seeds)}).",
        "",
        (f"Every record was made by one code version: {made_by[0]}." if len(made_by) == 1
         else f"**Records of {len(made_by)} code versions are mixed here** (reused with "
              f"--reuse-stale): {'; '.join(made_by)}."),
        "",
    ]
    if note:
        lines += [note, ""]
    lines += [
        "Protocol. What the points and the pick are measured after differs by kind of arm. "
        "*Search arms*: a front point is a trial's validation accuracy after its brief "
        "training (a stopped trial: its last epoch), plus every fine-tuned student at its "
        "fine-tuned accuracy; the pick is the smallest trial within the accuracy limit on "
        "that *brief* validation accuracy (else the most accurate), then fine-tuned "
        "(`distill.finetune_epochs`); with `finetunes` > 1 the front is bisected by "
        "*fine-tuned* validation accuracy and the pick is the smallest that met the limit "
        "after its fine-tune. *Ladder arms* (`method: rungs`): a point is each student's "
        "validation accuracy at the highest rung it reached (rung 0: inherited weights with "
        "BatchNorm recalibrated, no training); the pick is the smallest student at the top "
        "rung (the fine-tune) within the limit on that accuracy (else the most accurate "
        "there), not trained again; rung 0 counts a third of a sample-pass per calibration "
        "sample. *One-shot arms* (`method: oneshot`): the supernet is trained first (its "
        "sample-passes count every student of every sandwich step; it is no point of the "
        "front); a point is a student's validation accuracy as a slice of the trained "
        "supernet (BatchNorm recalibrated, no training; a third of a sample-pass per "
        "calibration sample), plus every fine-tuned student at its fine-tuned accuracy; the "
        "pick is chosen as in search arms, fine-tuned from its supernet weights. "
        "*Sweeps* (torch_pruning, uniform): a point is a student's "
        "validation accuracy after its share of the budget, and the pick is chosen on that "
        "accuracy. Only the pick is measured on the *test* set, once. \"met val limit\" "
        "counts seeds whose pick met the limit on validation after its last training; "
        "\"within 1 pt (test)\" counts seeds whose pick's test accuracy is within one point "
        "of the teacher's, whether or not it met its validation limit. Hypervolume: area "
        "dominated by the arm's (val accuracy, MACs ratio) points, reference (chance "
        "accuracy, 1). Compute in two units: sample-passes (epochs × training samples) and "
        "MAC-passes (each student's forward MACs × its sample-passes: a small student's "
        f"epoch costs less); the budget is counted in {_UNITS[budget.kind]}, and \"spent\" "
        "is the share of it each arm used.", "",
        "| arm | kind | pick: × fewer MACs | pick test acc % | test Δ (pts) | met val limit "
        "| within 1 pt (test) | hypervolume | students | sample-passes | MAC-passes (G) "
        "| spent % | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, rows in arms.items():
        red = [_reduction(r) for r in rows]
        acc = [_test_acc(r) for r in rows]
        drop = [100 * (a - teacher["test_accuracy"]) for a in acc]
        within = sum(r["best_macs_ratio_within_1pt"] is not None for r in rows)
        met = sum(bool((r["pick"] or {}).get("meets_val_limit")) for r in rows)
        lines.append(
            f"| {arm} | {rows[0]['kind']} | {_ms(red, '{:.2f}')} | "
            f"{_ms([100 * a for a in acc], '{:.2f}')} | {_ms(drop, '{:+.2f}')} | "
            f"{met}/{len(rows)} | "
            f"{within}/{len(rows)} | {_ms([r['hypervolume'] for r in rows], '{:.4f}')} | "
            f"{_ms([float(r['students_trained']) for r in rows], '{:.0f}')} | "
            f"{_ms([float(r['sample_passes']) for r in rows], '{:.0f}')} | "
            f"{_ms([_gmac(r) for r in rows], '{:.3g}')} | "
            f"{_ms([100 * _spent(r) for r in rows], '{:.0f}')} | "
            f"{_ms([r['train_seconds'] for r in rows], '{:.0f}')} |")
    unspent = [(arm, float(np.mean([1 - _spent(r) for r in rows])),
                [_unspent_epochs(r) for r in rows]) for arm, rows in arms.items()]
    unspent = [u for u in unspent if not math.isnan(u[1]) and u[1] >= 0.02]
    if unspent:
        lines += ["", "Budget left unspent (2 % or more; what it would have bought, in epochs "
                  "of the arm's pick" + (" at the pick's MACs" if budget.kind == "mac_passes"
                                         else "") + "):", ""]
        lines += [f"- {arm}: {100 * share:.0f} % unspent"
                  + ("" if all(math.isnan(e) for e in epochs)
                     else f", {_ms(epochs, '{:.1f}')} epochs of its pick")
                  for arm, share, epochs in unspent]
    lines += ["", f"Paired tests against `{reference}` (differences {reference} − arm, over "
              "the seeds both ran; bootstrap 95 % CI of the mean difference, exact Wilcoxon "
              "signed-rank p; with n seeds the smallest possible p is 2/2^n):", "",
              "| arm | n | Δ hypervolume [95 % CI] | p | Δ log2 MAC reduction [95 % CI] | p "
              "| Δ test acc (pts) [95 % CI] | p |", "| --- | --- | --- | --- | --- | --- | --- "
              "| --- |"]
    smallest = min((t["hypervolume"]["n"] for t in tests.values()), default=0)
    if 0 < smallest < 6:
        lines[-3:-3] = [f"With n = {smallest} seeds an exact two-sided Wilcoxon test cannot "
                        f"go below p = {2 / 2 ** smallest:.3g}: no difference here can be "
                        "significant at 0.05 (that takes at least 6 seeds); read the "
                        "intervals and the per-seed rows instead.", ""]

    def cell(t: dict[str, Any], scale: float = 1.0, fmt: str = "{:+.4f}") -> str:
        lo, hi = (scale * v for v in t["ci95"])
        p = "—" if t["wilcoxon_p"] is None else f"{t['wilcoxon_p']:.3f}"
        return (f"{fmt.format(scale * t['mean_diff'])} [{fmt.format(lo)}, {fmt.format(hi)}] "
                f"| {p}")

    for arm, t in tests.items():
        lines.append(f"| {arm} | {t['hypervolume']['n']} | {cell(t['hypervolume'])} | "
                     f"{cell(t['log2_mac_reduction'], fmt='{:+.2f}')} | "
                     f"{cell(t['test_accuracy'], 100, '{:+.2f}')} |")
    lines += ["", f"Fronts (validation accuracy, MACs ratio): how many of each arm's front points "
              f"some point of `{reference}`'s front of the same seed weakly dominates "
              "(at least as accurate and at most as costly), summed over the seeds both ran:",
              ""]
    lines += [f"- {arm}: {covered} of {total}" for arm, rows in arms.items() if arm != reference
              for covered, total in [_covered(rows, arms[reference])]]
    for peer in (a.name for a in config.arms if a.kind == "torch_pruning" and a.name in arms):
        lines += ["", f"The peer's points: how many of `{peer}`'s front points each arm's front of "
                  "the same seed weakly dominates, summed over the seeds both ran (all of them: "
                  "the arm's front dominates the peer's):", ""]
        lines += [f"- {arm}: {covered} of {total}" for arm, rows in arms.items() if arm != peer
                  for covered, total in [_covered(arms[peer], rows)]]
    lines += ["", "Per seed:", "",
              "| arm | seed | pick | × fewer MACs | val acc % | met val limit | test acc % "
              "| within 1 pt | hypervolume | sample-passes | MAC-passes (G) | train s | wall s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm, rows in arms.items():
        for r in rows:
            p = r["pick"] or {}
            lines.append(
                f"| {arm} | {r['seed']} | {p.get('source', '—')} | {_reduction(r):.2f} | "
                f"{100 * p.get('val_accuracy', math.nan):.2f} | "
                f"{'yes' if p.get('meets_val_limit') else 'no'} | {100 * _test_acc(r):.2f} | "
                f"{'yes' if r['best_macs_ratio_within_1pt'] is not None else 'no'} | "
                f"{r['hypervolume']:.4f} | {r['sample_passes']} | {_gmac(r):.3g} | "
                f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    lines += ["", f"Plots, written next to this file by the command and kept out of git: "
              f"`{pngs[0]}` (hypervolume against students and time, 95 % intervals over "
              f"seeds) and `{pngs[1]}` (every arm's front)."]
    return lines
