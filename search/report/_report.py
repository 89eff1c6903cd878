"""The run's report: ``report.md`` and ``report.html`` (images embedded) with PNG plots.

Everything is read back from the run folder (``trials.jsonl``, ``summary.json``,
``pareto.json``, ``config.yaml``, the study storage for the timeline), so the report
written at the end of a search and one regenerated later by ``protege report`` agree.
"""

from __future__ import annotations

import base64
import html
import logging
import re
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from protege.common import atomic_write
from protege.search import _attrs as attrs
from protege.search._pareto import hypervolume, pareto_indices
from protege.search._profile import TeacherProfile
from protege.search._records import Outcome, Pick, TrialRecord, record_of
from protege.search.report._plots import (
    plot_front,
    plot_hypervolume,
    plot_importances,
    plot_latency,
    plot_timeline,
)
from protege.search.runfolder import RunFolder, load_run

__all__ = ["choice_importances", "hypervolume_curve", "rule_savings", "write_report"]

logger = logging.getLogger(__name__)

Block = tuple[Any, ...]
"""("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", file name, alt)."""


def _costs(record: TrialRecord) -> dict[str, float | None]:
    return {"macs": record.macs, "params": record.params, "latency": record.latency_ms}


def hypervolume_curve(records: Sequence[TrialRecord], teacher: TeacherProfile,
                      objectives: Sequence[str]) -> list[tuple[int, float]]:
    """The hypervolume of the trials up to each trial, in trial order.

    It is the study's own measure (``summary.json``'s ``hypervolume``): every objective,
    costs divided by the teacher's, reference (chance accuracy, the teacher's costs).
    """
    scale = teacher.costs()
    names = [name for name in objectives[1:] if name in scale]
    reference = (teacher.chance, *([1.0] * len(names)))
    front: list[tuple[float, ...]] = []
    volume, curve = 0.0, []
    for record in sorted(records, key=lambda r: r.number):
        costs = _costs(record)
        if (record.outcome == Outcome.TRAINED and record.accuracy is not None
                and all(costs[n] is not None for n in names)):
            front.append((record.accuracy, *(float(costs[n] or 0.0) / scale[n] for n in names)))
            front = [front[i] for i in pareto_indices(front)]
            volume = hypervolume(front, reference=reference)
        curve.append((record.number, volume))
    return curve


def choice_importances(records: Sequence[TrialRecord], objectives: Sequence[str], *,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Optuna's fANOVA importance of each space choice for each objective.

    Computed from the trained trials' architectures (one categorical parameter per
    choice), so it needs no storage and works for every backend. Empty when fewer
    than three students were trained.
    """
    import optuna

    trained = [r for r in records if r.outcome == Outcome.TRAINED and r.accuracy is not None]
    if len(trained) < 3:
        return {}
    names = sorted({name for r in trained for name in r.arch})
    options = {name: sorted({r.arch.get(name) for r in trained}, key=repr) for name in names}
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        name: optuna.distributions.CategoricalDistribution(values)
        for name, values in options.items()}
    targets: dict[str, Callable[[TrialRecord], float | None]] = {
        "accuracy": lambda r: r.accuracy}
    for name in objectives[1:]:
        targets[name] = lambda r, name=name: _costs(r)[name]  # type: ignore[misc]
    result: dict[str, dict[str, float]] = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" per target
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for objective, value_of in targets.items():
                study = optuna.create_study()
                for r in trained:
                    value = value_of(r)
                    if value is None or any(name not in r.arch for name in names):
                        continue
                    study.add_trial(optuna.trial.create_trial(
                        params={name: r.arch[name] for name in names},
                        distributions=distributions, value=float(value)))
                try:
                    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
                    result[objective] = dict(optuna.importance.get_param_importances(
                        study, evaluator=evaluator))
                except (RuntimeError, ValueError) as exc:  # too few or constant trials
                    logger.info("no importances for %s: %s", objective, exc)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return result


def rule_savings(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """What rejecting, skipping, stopping and reusing trials saved, in training seconds.

    A trial that never trained is counted as saving one mean full training (of the
    trials trained to the end); a stopped one saves that mean less what it spent.
    These are estimates, and say so in the report.
    """
    kinds = [r.outcome.value for r in records]
    full = [r.train_seconds or 0.0 for r, kind in zip(records, kinds, strict=True)
            if kind == "trained"]
    mean = sum(full) / len(full) if full else 0.0
    stopped = [r.train_seconds or 0.0 for r, kind in zip(records, kinds, strict=True)
               if kind == "stopped"]
    counts = {kind: kinds.count(kind) for kind in ("rejected", "skipped", "stopped", "reused")}
    saved = (mean * (counts["rejected"] + counts["skipped"] + counts["reused"])
             + sum(max(mean - spent, 0.0) for spent in stopped))
    return {"mean_train_seconds": mean, "spent_seconds": sum(full) + sum(stopped),
            "saved_seconds": saved, **counts}


def _timeline(run: RunFolder) -> list[tuple[int, float, float, str]]:
    study = run.open_study()
    if study is None:
        return []
    trials = [t for t in study.get_trials(deepcopy=False)
              if t.datetime_start is not None and not t.user_attrs.get(attrs.BUDGET_SPENT)
              and not t.user_attrs.get(attrs.LEGACY_SKIPPED)]
    if not trials:
        return []
    origin = min(t.datetime_start for t in trials if t.datetime_start is not None)
    spans = []
    for t in trials:
        assert t.datetime_start is not None
        end = t.datetime_complete or t.datetime_start
        spans.append((t.number, (t.datetime_start - origin).total_seconds(),
                      (end - origin).total_seconds(), record_of(t).outcome.value))
    return spans


def _plot(name: str, out: Path, draw: Callable[[Path], object]) -> str | None:
    """Draw one PNG; a plot that fails is logged and left out, never fatal."""
    try:
        if draw(out / name) is False:
            return None
    except Exception as exc:
        logger.warning("could not draw %s: %s: %s", name, type(exc).__name__, exc)
        return None
    return name


def _name(run: RunFolder) -> str:
    """The run's task (or teacher class) as its title says it; else the folder's name."""
    source = run.source
    teacher = source.get("teacher")
    named = teacher.get("class_path") if isinstance(teacher, dict) else None
    return str(source.get("task") or named or run.path.name)


def _latency_settings(run: RunFolder) -> str:
    """Where the run's latencies were taken (its ``latency:`` keys)."""
    s = run.config.latency
    return (f"{s.runtime or 'default runtime'} {s.precision}, batch {s.batch_size}, "
            f"{s.threads} thread{'s' if s.threads != 1 else ''}")


def _teacher_blocks(run: RunFolder, teacher: TeacherProfile) -> list[Block]:
    test = f"{teacher.test_accuracy:.4f}" if teacher.test_accuracy is not None else "n/a"
    latency = (f", {teacher.latency_ms:.3f} ms per forward pass ({_latency_settings(run)})"
               if teacher.latency_ms is not None else "")
    c = run.config
    limits = [f"accuracy drop <= {c.constraints.max_accuracy_drop}"]
    for name, value, unit in (("MACs", c.constraints.max_macs, ""),
                              ("params", c.constraints.max_params, ""),
                              ("latency", c.constraints.max_latency_ms, " ms")):
        if value is not None:
            scale = " x the teacher's" if unit == "" and value <= 1 else unit
            limits.append(f"{name} <= {value:g}{scale}")
    return [("h1", f"protege run: {_name(run)}"),
            ("p", f"Teacher: {teacher.macs:,} MACs, {teacher.params:,} params{latency}; "
                  f"validation accuracy {teacher.val_accuracy:.4f}, test accuracy {test}."),
            ("p", f"Search: strategy `{c.strategy}`, level {c.level}, objectives "
                  f"{', '.join(c.objectives)}, {c.n_trials} trials, backend `{c.backend}`; "
                  f"limits: {', '.join(limits)}.")]


def _rank_training(facts: dict[str, Any]) -> str:
    """How the supernet trained its rank choices, for the report's sentence ('' without)."""
    if not facts.get("rank_choices"):
        return ""
    if facts.get("ranks"):
        return f", its {facts['rank_choices']} rank choices trained as projections"
    return (f", every student at full rank (the factors of its {facts['rank_choices']} rank "
            "choices cut from the trained weights)")


def _supernet_blocks(run: RunFolder) -> list[Block]:
    """``method: oneshot``: the supernet's training, and how its scores held up."""
    facts = run.summary.get("supernet")
    if not isinstance(facts, dict):
        return []
    rows = [[str(int(h["epoch"])), f"{h['largest']:.4f}", f"{h['smallest']:.4f}"]
            for h in facts.get("history") or ()]
    blocks: list[Block] = [
        ("h2", "Supernet"),
        ("p", f"The teacher was trained once as a weight-sharing supernet: {facts['epochs']} "
              f"epochs, {facts['students_per_step']} students a step (the largest, the "
              f"smallest and {facts['students_per_step'] - 2} random, sandwich rule"
              f"{', the smaller ones distilled from the largest' if facts.get('inplace') else ''}"
              f"{_rank_training(facts)}"
              f"), {facts['sample_passes']:,} training sample-passes, {facts['seconds']:.0f} s. "
              "Every student was then scored as a slice of it (BatchNorm recalibrated, no "
              "training); the pick was fine-tuned from its slice."),
        ("table", ["epoch", "largest (val)", "smallest (val, recalibrated)"], rows)]
    tuned = [f for f in (run.pick.finetuned if run.pick is not None else ())
             if f.get("search_accuracy") is not None]
    if len(tuned) >= 3:
        from scipy.stats import kendalltau

        tau = kendalltau([f["search_accuracy"] for f in tuned],
                         [f["val_accuracy"] for f in tuned]).statistic
        blocks.append(("p", f"Supernet score against accuracy after fine-tuning, over the "
                            f"{len(tuned)} fine-tuned students: Kendall tau {tau:.2f} (few "
                            "students: a rough check; `experiments/results/oneshot.md` has the "
                            "measured ranking quality)."))
    return blocks


def _trial_blocks(run: RunFolder, out: Path) -> list[Block]:
    kinds = [r.outcome.value for r in run.records]
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in
                       ("trained", "reused", "rejected", "skipped", "stopped", "failed")
                       if kinds.count(k))
    blocks: list[Block] = [("h2", "Trials"), ("p", f"{len(run.records)} trials: {counts}. "
                           "Rejected: over a hard limit, never trained; skipped: judged not "
                           "worth training by a rule, never trained; stopped: ended early "
                           "during training; reused: same student as an earlier trial.")]
    spans = _timeline(run)
    if spans and (name := _plot("timeline.png", out, lambda p: plot_timeline(p, spans))):
        blocks.append(("img", name, "timeline of trials by outcome"))
    return blocks


def _pick_member(run: RunFolder) -> Mapping[str, Any] | None:
    """The pick's entry on the front, when it is there and was timed with the others."""
    for member in run.front:
        if run.pick is not None and member.get("trial") == run.pick.trial:
            if member.get("latency_ms_measured") is not None:
                return member
    return None


def _pick_latency(run: RunFolder) -> float | None:
    """The pick's latency: its trial's measurement on the front (timed with the others),
    else the one taken after fine-tuning."""
    member = _pick_member(run)
    if member is not None:
        return float(member["latency_ms_measured"])
    return (run.summary.get("pick") or {}).get("latency_ms")


def _front_latency(members: Sequence[Mapping[str, Any]], run: RunFolder) -> str:
    """Where the front's latencies were measured: the members' own records, else the
    run's ``latency:`` keys."""
    m = next((m for m in members if m.get("latency_precision")), None)
    if m is None:
        return _latency_settings(run)
    threads = int(m.get("latency_threads", 1))
    return (f"{m.get('latency_runtime')} {m['latency_precision']}, batch "
            f"{m.get('latency_batch')}, {threads} thread{'s' if threads != 1 else ''}")


def _measured_cell(member: Mapping[str, Any]) -> str:
    latency = member.get("latency_ms_measured")
    if latency is None:
        return "n/a"
    repeatability = member.get("latency_repeatability")
    cell = f"{latency:.4f}" + (f" (±{100 * repeatability:.0f}%)"
                               if repeatability is not None else "")
    return cell + (" unusable" if member.get("latency_usable") is False else "")


def _prediction_errors(members: Sequence[Mapping[str, Any]]) -> list[float]:
    """|predicted - measured| / measured (%) of the members that have both."""
    return [100 * abs(m["latency_ms_predicted"] - m["latency_ms_measured"])
            / m["latency_ms_measured"] for m in members
            if m.get("latency_ms_predicted") is not None and m.get("latency_ms_measured")]


def _front_blocks(run: RunFolder, teacher: TeacherProfile, out: Path) -> list[Block]:
    by_number = {r.number: r for r in run.records}
    members = [m for m in run.front if m.get("trial") in by_number]
    predicted = any(m.get("latency_ms_predicted") is not None for m in members)
    rows = []
    for m in members:
        row = [str(m["trial"]), f"{m['accuracy']:.4f}", f"{m['macs']:,}",
               f"{m['macs'] / teacher.macs:.3f}", f"{m['params']:,}"]
        if predicted:
            guess = m.get("latency_ms_predicted")
            row.append("n/a" if guess is None else f"{guess:.4f}")
        rows.append([*row, _measured_cell(m)])
    settings = _front_latency(members, run)
    note = (f"Latency ({settings}, this CPU): measured on every front member when the search "
            "ended, the smallest of the timing protocol's block medians, ± its repeatability "
            "(the relative range of the block medians; a figure too noisy to use is marked "
            "unusable).")
    errors = _prediction_errors(members)
    if errors:
        note += (" Predicted: the latency predictor's figure, which the search used as an "
                 f"objective or a limit; against measured on the front, median error "
                 f"{statistics.median(errors):.1f}%, largest {max(errors):.1f}%.")
    note += (" Fewer MACs need not mean less latency: small networks are bound by per-call "
             "overhead.")
    blocks: list[Block] = [("h2", "Pareto front"), ("table", [
        "trial", "val accuracy", "MACs", "MACs / teacher", "params",
        *(["latency ms (predicted)"] if predicted else []), "latency ms (measured)"],
        rows), ("p", note)]
    records = [by_number[m["trial"]] for m in members]
    pick_latency = _pick_latency(run)
    if name := _plot("front.png", out, lambda p: plot_front(
            p, records=run.records, front=records, teacher=teacher, config=run.config,
            pick=run.pick)):
        blocks.append(("img", name, "accuracy against MACs"))
    if name := _plot("latency.png", out, lambda p: plot_latency(
            p, records=run.records, front=members, teacher=teacher, config=run.config,
            pick=run.pick, pick_latency_ms=pick_latency, settings=settings)):
        blocks.append(("img", name, "accuracy against latency"))
    return blocks


def _hypervolume_blocks(run: RunFolder, teacher: TeacherProfile, out: Path) -> list[Block]:
    ref = run.summary.get("hypervolume_reference")
    where = (", ".join(f"{k} {v:.3g}" for k, v in ref.items()) if isinstance(ref, dict)
             else "accuracy 0, teacher's MACs")
    blocks: list[Block] = [
        ("h2", "Hypervolume"),
        ("p", f"Hypervolume {run.summary.get('hypervolume', float('nan')):.4f} (costs divided "
              f"by the teacher's; reference point: {where})."),
    ]
    by_rung = run.summary.get("hypervolume_by_rung")
    if by_rung:  # method: rungs
        ladder = run.summary.get("ladder") or []
        rows = [[str(k), str(ladder[k]) if k < len(ladder) else "?",
                 str(sum((r.rung or 0) >= k for r in run.records if r.rungs)), f"{v:.4f}"]
                for k, v in enumerate(by_rung)]
        blocks += [("p", "By rung of the ladder (each student at its accuracy on that rung; "
                         "the front above takes each at the highest rung it reached):"),
                   ("table", ["rung", "epochs in all", "students", "hypervolume"], rows)]
    curve = hypervolume_curve(run.records, teacher, run.config.objectives)
    if curve and (name := _plot("hypervolume.png", out, lambda p: plot_hypervolume(p, curve))):
        blocks.append(("img", name, "hypervolume over trials"))
    return blocks


def _importance_blocks(run: RunFolder, out: Path) -> list[Block]:
    importances = choice_importances(run.records, run.config.objectives, seed=run.config.seed)
    blocks: list[Block] = [("h2", "Which choices mattered")]
    if not importances:
        return [*blocks, ("p", "Too few trained students to tell (fANOVA needs three).")]
    names = sorted(next(iter(importances.values())),
                   key=lambda n: -importances.get("accuracy", {}).get(n, 0.0))
    rows = [[f"`{n}`", *(f"{importances[o].get(n, 0.0):.3f}" for o in importances)]
            for n in names]
    blocks += [("p", "Optuna's fANOVA importance of each space choice, on the trained "
                     "students: the share of each objective's variance it explains."),
               ("table", ["choice", *importances], rows)]
    if name := _plot("importances.png", out, lambda p: plot_importances(p, importances)):
        blocks.append(("img", name, "importance of each choice"))
    return blocks


def _rule_blocks(run: RunFolder) -> list[Block]:
    s = rule_savings(run.records)
    never = s["rejected"] + s["skipped"] + s["reused"]
    total = s["spent_seconds"] + s["saved_seconds"]
    share = f" ({100 * s['saved_seconds'] / total:.0f}% of the training)" if total else ""
    return [("h2", "What the limits and rules saved"),
            ("p", f"{s['rejected']} students rejected by a limit and {s['skipped']} skipped by "
                  f"a rule (predicted dominated, or too little hypervolume gain) before any "
                  f"training, {s['reused']} reused an "
                  f"earlier result, {s['stopped']} stopped early. At the mean "
                  f"{s['mean_train_seconds']:.1f} s of a full trial, that is about "
                  f"{s['saved_seconds']:.0f} s of training saved{share}, against "
                  f"{s['spent_seconds']:.0f} s spent ({never} trials never trained). "
                  "An estimate: students that were never trained have no measured time.")]


def _margin_text(margin: dict[str, Any]) -> str:
    """How sure the pick is: the paired comparison with the teacher on validation."""
    return (f"How sure: on the {margin['samples']} validation samples the pick is "
            f"{100 * margin['difference']:+.2f} points against the teacher (paired: the "
            f"samples where exactly one of them is right decide it); one-sided 95 % lower "
            f"bound {100 * margin['lower_bound']:+.2f} points, against the limit of "
            f"{-100 * margin['max_drop']:+.2f}; the chance that its true drop is within the "
            f"limit is about {100 * margin['p_within']:.0f} %. A pick checked against the "
            "limit on this validation set alone is more likely to miss it on new data the "
            "lower that chance is.")


def _pick_blocks(run: RunFolder, pick: Pick | None, teacher: TeacherProfile) -> list[Block]:
    blocks: list[Block] = [("h2", "Pick")]
    if pick is None:
        return [*blocks, ("p", "No trial completed: nothing was picked.")]
    verdict = ("meets the limits" if pick.meets_constraints
               else "does **not** meet the accuracy limit after fine-tuning")
    test = f"{pick.test_accuracy:.4f}" if pick.test_accuracy is not None else "n/a"
    latency = _pick_latency(run)
    speed = (f", {latency:.4f} ms per forward pass against the teacher's "
             f"{teacher.latency_ms:.4f} ({_latency_settings(run)})"
             if latency and teacher.latency_ms else "")
    member = _pick_member(run)
    if speed and member is not None and member.get("latency_usable") is False:
        spread = member.get("latency_repeatability")
        speed += (" (**unusable**: its repeated measurements spread "
                  f"{'±%.0f %%' % (100 * spread) if spread is not None else 'too much'}, more "
                  "than the figure can be trusted to; measure on a quieter machine)")
    ladder = run.config.ladder if run.config.method == "rungs" else None
    trained = (f"{pick.search_accuracy:.4f} at the rung below the top, {pick.val_accuracy:.4f} at "
               f"the top rung ({ladder[-1]} epochs in all, going on from its own weights)"
               if ladder else
               f"{pick.search_accuracy:.4f} after the brief training, {pick.val_accuracy:.4f} "
               f"after {run.config.distill.finetune_epochs} fine-tuning epochs")
    blocks.append(("p", f"Trial {pick.trial}: {pick.macs:,} MACs ({pick.macs / teacher.macs:.3f}x "
                        f"the teacher's), {pick.params:,} params{speed}; validation accuracy "
                        f"{trained}; test accuracy {test}; {verdict}. Saved in "
                        "`best/` (`arch.json`, `student.pt`)."))
    margin = (run.summary.get("pick") or {}).get("val_margin")
    if margin:
        blocks.append(("p", _margin_text(margin)))
    if ladder and len(pick.finetuned) > 1:
        reached = "; ".join(f"trial {f['trial']} ({f['macs'] / teacher.macs:.3f}x MACs): "
                            f"{f['val_accuracy']:.4f}, {'meets' if f['meets'] else 'misses'}"
                            for f in pick.finetuned)
        blocks.append(("p", f"{len(pick.finetuned)} students reached the top rung: {reached}."))
    elif len([f for f in pick.finetuned if not f.get("front")]) > 1:
        chose = [f for f in pick.finetuned if not f.get("front")]
        tried = "; ".join(f"trial {f['trial']} ({f['macs'] / teacher.macs:.3f}x MACs): "
                          f"{f['search_accuracy']:.4f} → {f['val_accuracy']:.4f}, "
                          f"{'meets' if f['meets'] else 'misses'}" for f in chose)
        blocks.append(("p", f"{len(chose)} students were fine-tuned to choose it "
                            f"(`finetunes: {run.config.finetunes}`, bisecting the front by "
                            f"fine-tuned accuracy), in order: {tried}."))
    front = [f for f in pick.finetuned if f.get("front")]
    if front:
        tuned = "; ".join(f"trial {f['trial']} ({f['macs'] / teacher.macs:.3f}x MACs): "
                          f"{f['search_accuracy']:.4f} → {f['val_accuracy']:.4f}" for f in front)
        blocks.append(("p", f"{len(front)} members of the front cheaper than the pick were "
                            f"fine-tuned too (`oneshot.finetune_front`, {front[0]['epochs']} "
                            f"epochs each; validation accuracy as a slice → fine-tuned; saved "
                            f"in `trial-<n>/`): {tuned}."))
    onnx = run.summary.get("onnx") or {}
    if "max_abs_diff" in onnx:
        blocks.append(("p", f"ONNX: `best/{onnx['path']}` ({onnx['size_bytes']:,} bytes), "
                            f"checked with onnxruntime against PyTorch on {onnx['samples']} "
                            f"validation inputs: max abs difference {onnx['max_abs_diff']:.3g}."))
    elif "error" in onnx:
        blocks.append(("p", f"ONNX: not exported ({onnx['error']})."))
    int8 = run.export.get("int8")
    if int8:
        rows = [[name, f"{f['size_bytes']:,}",
                 f"{f['accuracy']:.4f}" if f["accuracy"] is not None else "n/a",
                 f"{f['latency_ms']:.4f}", f"{f['batch_latency_ms']:.3f}"]
                for name, f in (("float32", int8["fp32"]), ("int8", int8["int8"]))]
        blocks += [("p", f"Int8 (`protege export --int8`): onnxruntime static quantisation, "
                         f"calibrated on {int8['calibration_samples']} training inputs; "
                         f"top-1 agreement with float32 {int8['agreement']:.4f}. Latency: "
                         f"onnxruntime, {int8['threads']} thread, this CPU."),
                   ("table", ["model", "bytes", "test accuracy", "ms (batch 1)",
                              f"ms (batch {int8['batch_size']})"], rows)]
    return blocks


def _blocks(run: RunFolder, out: Path) -> list[Block]:
    teacher = run.teacher
    if teacher is None:
        return [("h1", f"protege run: {_name(run)}"),
                ("p", f"The search has not finished: {len(run.records)} trials so far.")]
    return [*_teacher_blocks(run, teacher), *_supernet_blocks(run), *_trial_blocks(run, out),
            *_front_blocks(run, teacher, out), *_hypervolume_blocks(run, teacher, out),
            *_importance_blocks(run, out), *_rule_blocks(run),
            *_pick_blocks(run, run.pick, teacher)]


def _markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for kind, *rest in blocks:
        if kind == "h1":
            lines += [f"# {rest[0]}", ""]
        elif kind == "h2":
            lines += [f"## {rest[0]}", ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "table":
            header, rows = rest
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _html(blocks: Sequence[Block], out: Path, title: str) -> str:
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:52em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;"
             "text-align:right}img{max-width:100%}</style></head><body>"]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "table":
            header, rows = rest
            parts.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header)
                         + "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>"
                                                               for c in row) + "</tr>"
                                             for row in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode((out / rest[0]).read_bytes()).decode("ascii")
            parts.append(f"<p><img alt='{html.escape(rest[1])}' "
                         f"src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path) -> list[Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots from the run folder ``out``.

    Returns:
        The files written: the two reports, then the plots.

    Raises:
        FileNotFoundError: If ``out`` is not a run folder.
    """
    out = Path(out)
    run = load_run(out)
    blocks = _blocks(run, out)
    title = f"protege run: {_name(run)}"
    with atomic_write(out / "report.md") as handle:
        handle.write(_markdown(blocks))
    with atomic_write(out / "report.html") as handle:
        handle.write(_html(blocks, out, title))
    images = [out / b[1] for b in blocks if b[0] == "img"]
    return [out / "report.md", out / "report.html", *images]
