"""Benchmark of ``method: oneshot``: how well a trained supernet ranks students.

    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_oneshot.py --task mnist1d

Trains the task's supernet (``protege.spaces.Supernet``, sandwich rule, ``--epochs``
epochs, ``--random`` random students a step) once, then takes ``--students`` students
spread over the space (``--pool`` random students sorted by MACs, taken at evenly spaced
quantiles, so small and large ones are both there) and gives each three accuracies on
validation:

- **supernet**: its slice of the trained supernet, BatchNorm recalibrated on 512
  training samples, no training (what ``method: oneshot`` scores every student by);
- **rung 0**: the same from the teacher's weights (what ``method: rungs`` scores at rung 0);
- **fine-tuned**: the student fine-tuned on its own from the teacher's weights for
  ``--finetune-epochs`` epochs (the same budget each; what the search wants to rank by).

It reports Kendall's tau (with a 95 % bootstrap interval over students) between each
score and the fine-tuned accuracy, and rewrites its section of
``experiments/results/oneshot.md``. With ``--retune`` every student is fine-tuned a
second time with another seed, and the tau between the two fine-tunes tells how far the
reference itself ranks reproducibly (the ceiling no score can pass by more than luck).
``--repeats N`` fine-tunes every student N times (seeds i, 1000 + i, ...) and also ranks
against their mean, a reference with 1/N of the noise; with N >= 4 it reports how well the
mean of the first half of the fine-tunes agrees with the mean of the second half.
The bench trains the rank choices (level 3, ``Supernet(ranks=True)``) unless given
``--no-ranks``, which trains the supernet at full rank, as ``method: oneshot`` does by
default (``oneshot.ranks: false``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from protege.distill import (
    DistillConfig,
    cache_teacher_outputs,
    calibration_rows,
    evaluate,
    recalibrate_batchnorm,
    train_student,
    train_supernet,
)
from protege.estimators import count_macs
from protege.experiments import load_task
from protege.experiments._compare import train_subset
from protege.experiments._results import write_section
from protege.spaces import Supernet, derive

RESULTS = Path(__file__).resolve().parent / "results" / "oneshot.md"


def tau_interval(x: list[float], y: list[float], *, rounds: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Kendall's tau of (x, y) and a 95 % percentile bootstrap interval over the pairs."""
    tau = float(kendalltau(x, y).statistic)
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x), np.asarray(y)
    draws = []
    for _ in range(rounds):
        rows = rng.integers(len(xs), size=len(xs))
        value = kendalltau(xs[rows], ys[rows]).statistic
        if not np.isnan(value):
            draws.append(value)
    low, high = np.percentile(draws, [2.5, 97.5])
    return tau, float(low), float(high)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=20, help="supernet epochs")
    parser.add_argument("--random", type=int, default=2, help="random students a step")
    parser.add_argument("--inplace", action="store_true")
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--retune", action="store_true",
                        help="fine-tune every student twice: the reference's own tau")
    parser.add_argument("--repeats", type=int, default=None,
                        help="fine-tune every student this many times (seeds i, 1000 + i, "
                             "...); the reference is their mean (--retune: 2)")
    parser.add_argument("--no-ranks", action="store_true",
                        help="train the supernet at full rank (rank choices not sampled)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.retune else 1)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(1)
    task = load_task(args.task, seed=0)
    train = train_subset(task.train, args.train_subset)  # the comparison's subset
    config = DistillConfig(finetune_epochs=args.finetune_epochs).for_init("inherit")
    space = derive(task.teacher, task.example_input, level=args.level)
    with tempfile.TemporaryDirectory() as cache:
        outputs = cache_teacher_outputs(task.teacher, train, cache_dir=Path(cache), config=config)
    calibration = outputs.inputs[calibration_rows(len(outputs.inputs), 512)]
    supernet = Supernet(space, ranks=not args.no_ranks)  # the default of this bench: ranks
    start = time.perf_counter()
    trained = train_supernet(supernet, outputs, task.val, config=config, epochs=args.epochs,
                             students=args.random, inplace=args.inplace)
    supernet_seconds = time.perf_counter() - start
    teacher_macs, _ = count_macs(task.teacher, task.example_input)
    rng = np.random.default_rng(0)
    pool: dict[str, dict] = {}  # distinct students
    for _ in range(args.pool):
        arch = space.repair(space.sample(rng))
        pool.setdefault(repr(sorted(arch.items())), arch)
    sized = sorted(((count_macs(space.materialize(arch), task.example_input)[0], arch)
                    for arch in pool.values()), key=lambda pair: pair[0])
    picks = np.linspace(0, len(sized) - 1, args.students).round().astype(int)
    rows, scores, zeros, tuned = [], [], [], []
    again: list[list[float]] = [[] for _ in range(repeats - 1)]  # the further fine-tunes
    for i, index in enumerate(picks):
        macs, arch = sized[index]
        sliced = supernet.student(arch)
        recalibrate_batchnorm(sliced, calibration)
        score = evaluate(sliced, task.val)
        inherited = space.materialize(arch)
        recalibrate_batchnorm(inherited, calibration)
        zero = evaluate(inherited, task.val)
        result = train_student(space.materialize(arch), outputs, task.val,
                               config=config.for_finetune(), seed=i)
        scores.append(score)
        zeros.append(zero)
        tuned.append(result.val_accuracy)
        retuned = ""
        for r in range(1, repeats):
            other = train_student(space.materialize(arch), outputs, task.val,
                                  config=config.for_finetune(), seed=1000 * r + i)
            again[r - 1].append(other.val_accuracy)
            retuned += f" {100 * other.val_accuracy:.2f} |"
        rows.append(f"| {i} | {macs / teacher_macs:.3f} | {100 * score:.2f} | {100 * zero:.2f} "
                    f"| {100 * result.val_accuracy:.2f} |{retuned}")
        print(rows[-1], flush=True)
    tau_s = tau_interval(scores, tuned)
    tau_0 = tau_interval(zeros, tuned)
    ranked = bool(space.ranks) and not args.no_ranks
    last = trained.history[-1]
    body = [
        f"Task {task.name} ({len(train)} training samples), level-{args.level} space; "
        f"supernet: {args.epochs} epochs, the largest, the smallest and {args.random} random "
        f"students a step{' (in-place distillation)' if args.inplace else ''}"
        f"{', rank choices trained' if ranked else ''}"
        f"{', at full rank (rank choices not trained)' if space.ranks and args.no_ranks else ''}, "
        f"{trained.sample_passes:,} sample-passes, {supernet_seconds:.0f} s; after it the "
        f"largest student scores {100 * last['largest']:.2f} % and the smallest "
        f"{100 * last['smallest']:.2f} % on validation. {len(picks)} students at evenly "
        f"spaced MAC quantiles of {len(sized)} random ones (seed 0); each fine-tuned on its "
        f"own from the teacher's weights for {args.finetune_epochs} epochs (lr {config.lr}, "
        f"batch {config.batch_size}, T {config.temperature})"
        f"{_again(repeats)}. Validation accuracy (%).",
        "",
        "| student | MACs / teacher | supernet slice | rung 0 (teacher's weights) "
        "| fine-tuned on its own |" + "".join(
            " fine-tuned again |" if repeats == 2 else f" fine-tuned, seed {1000 * r} + student |"
            for r in range(1, repeats)),
        "|---|---|---|---|---|" + "---|" * (repeats - 1),
        *rows,
        "",
        "Kendall's tau against the fine-tuned accuracy (95 % bootstrap interval over the "
        "students):",
        "",
        "| score | tau | 95 % interval |",
        "|---|---|---|",
        f"| supernet slice | {tau_s[0]:.2f} | {tau_s[1]:.2f} to {tau_s[2]:.2f} |",
        f"| rung 0 (teacher's weights) | {tau_0[0]:.2f} | {tau_0[1]:.2f} to {tau_0[2]:.2f} |",
    ]
    if repeats > 1:
        tau_r = tau_interval(again[0], tuned)
        body.append(f"| the same students fine-tuned again | {tau_r[0]:.2f} | {tau_r[1]:.2f} "
                    f"to {tau_r[2]:.2f} |")
        runs = [tuned, *again]
        mean = [sum(values) / repeats for values in zip(*runs, strict=True)]
        body += ["", ("Kendall's tau against the mean of the two fine-tunes (a reference with "
                      "half the variance of its noise):" if repeats == 2 else
                      f"Kendall's tau against the mean of the {repeats} fine-tunes (a reference "
                      f"with 1/{repeats} of the variance of its noise):"), "",
                 "| score | tau | 95 % interval |", "|---|---|---|"]
        for label, values in (("supernet slice", scores),
                              ("rung 0 (teacher's weights)", zeros)):
            tau_m = tau_interval(values, mean)
            body.append(f"| {label} | {tau_m[0]:.2f} | {tau_m[1]:.2f} to {tau_m[2]:.2f} |")
        if repeats >= 4:  # how far a mean of half the fine-tunes agrees with the other half
            half = repeats // 2
            first = [sum(values[:half]) / half for values in zip(*runs, strict=True)]
            second = [sum(values[half:]) / (repeats - half) for values in zip(*runs, strict=True)]
            tau_h = tau_interval(first, second)
            body.append(f"| the mean of fine-tunes 1-{half} against the mean of {half + 1}-"
                        f"{repeats} (the reference's own agreement at half its repeats) | "
                        f"{tau_h[0]:.2f} | {tau_h[1]:.2f} to {tau_h[2]:.2f} |")
    command = "flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_oneshot.py " + \
        shlex.join(sys.argv[1:] if argv is None else argv)
    key = (f"tau-{task.name}-level{args.level}-e{args.epochs}{'-inplace' if args.inplace else ''}"
           f"{'-fullrank' if space.ranks and args.no_ranks else ''}"
           f"{f'-r{repeats}' if repeats > 2 else ''}")
    write_section(RESULTS, title="One-shot search: how well the supernet ranks students", key=key,
                  heading=f"Supernet ranking against students fine-tuned on their own "
                          f"({task.name}, level {args.level}, {args.epochs} supernet epochs"
                          f"{', in-place' if args.inplace else ''}"
                          f"{', full rank' if space.ranks and args.no_ranks else ''}"
                          f"{f', {repeats} fine-tunes a student' if repeats > 2 else ''})",
                  command=command.strip(), body=body)
    print("\n".join(body))


def _again(repeats: int) -> str:
    """How the further fine-tunes of each student were seeded, for the table's caption."""
    if repeats == 1:
        return ""
    if repeats == 2:
        return ", and again with seed 1000 + student"
    return (f", and {repeats - 1} more times with seeds 1000 + student, ..., "
            f"{1000 * (repeats - 1)} + student")


if __name__ == "__main__":
    main()
