"""Benchmark of the ladder of ``method: rungs``: the rung schedule, and how well each rung ranks.

    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_rungs.py --task mnist1d

For ``--students`` architectures of the task's level-1 space (the uniform ladder first,
then seeded random ones), each is scored at rung 0 (inherited weights, BatchNorm
recalibrated on 512 training samples) and then trained in two ways from those weights:

- **ladder**: rung by rung (``rungs.ladder``, e.g. 1, 3, 9, 20 epochs in all), each rung a
  new one-cycle schedule going on from the previous rung's weights and AdamW state (a warm
  restart): what ``method: rungs`` does;
- **straight**: one one-cycle schedule over the top rung's epochs: what a fine-tune does.

It reports each student's accuracy at every rung and after the straight run, the mean
difference (ladder - straight) at the top rung, and Kendall's tau between each rung's
accuracy and the top rung's: how well a cheaper rung ranks students. Rewrites its section
of ``experiments/results/rungs.md``.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from protege.distill import cache_teacher_outputs, evaluate, recalibrate_batchnorm, train_student
from protege.estimators import count_macs
from protege.experiments import load_task
from protege.experiments._results import write_section
from protege.search import Config, uniform_ladder
from protege.spaces import derive

RESULTS = Path(__file__).resolve().parent / "results" / "rungs.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--students", type=int, default=12)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task = load_task(args.task, seed=0)
    config = Config.from_dict({"method": "rungs", "distill": {
        "finetune_epochs": args.finetune_epochs}}).resolve()
    ladder = config.ladder
    distill = config.distill
    space = derive(task.teacher, task.example_input, level=1)
    archs = uniform_ladder(space)
    rng = np.random.default_rng(0)
    while len(archs) < args.students:
        arch = space.repair(space.sample(rng))
        if arch not in archs:
            archs.append(arch)
    archs = archs[:args.students]
    teacher_macs, _ = count_macs(task.teacher, task.example_input)
    train = task.train
    with tempfile.TemporaryDirectory() as cache:
        outputs = cache_teacher_outputs(task.teacher, train, cache_dir=Path(cache),
                                        config=distill)
    inputs = outputs.inputs
    calibration = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:512]
    rows, ladder_acc, straight_acc = [], [], []
    for i, arch in enumerate(archs):
        student = space.materialize(arch, init="inherit")
        macs, _ = count_macs(student, task.example_input)
        recalibrate_batchnorm(student, inputs[calibration.sort().values])
        accs = [evaluate(student, task.val)]
        start = copy.deepcopy(student)
        state = None
        for k in range(1, len(ladder)):
            result = train_student(student, outputs, task.val, config=distill,
                                   epochs=ladder[k] - ladder[k - 1], seed=i + 7919 * k,
                                   optimizer_state=state)
            state = result.optimizer_state
            accs.append(result.val_accuracy)
        straight = train_student(start, outputs, task.val, config=distill, epochs=ladder[-1],
                                 seed=i).val_accuracy
        ladder_acc.append(accs)
        straight_acc.append(straight)
        rows.append(f"| {i} | {macs / teacher_macs:.3f} | "
                    + " | ".join(f"{100 * a:.2f}" for a in accs) + f" | {100 * straight:.2f} |")
        print(rows[-1], flush=True)
    top = [a[-1] for a in ladder_acc]
    diffs = [a - b for a, b in zip(top, straight_acc, strict=True)]
    taus = []
    for k in range(len(ladder) - 1):
        tau = kendalltau([a[k] for a in ladder_acc], top)
        taus.append(f"| {k} | {ladder[k]} | {tau.statistic:.2f} | {tau.pvalue:.3f} |")
    header = " | ".join(f"rung {k} ({e} ep)" for k, e in enumerate(ladder))
    body = [
        f"Task {task.name}, level-1 space; {len(archs)} students (the uniform ladder first, then "
        f"random ones, seed 0); ladder {list(ladder)} epochs in all, eta {config.rungs.eta}; "
        f"distill lr {distill.lr}, batch {distill.batch_size}, T {distill.temperature}. "
        "Validation accuracy (%).",
        "",
        f"| student | MACs / teacher | {header} | straight {ladder[-1]} ep |",
        "|---" * (len(ladder) + 3) + "|",
        *rows,
        "",
        f"Top rung minus straight run: mean {100 * statistics.fmean(diffs):+.2f} points, "
        f"sd {100 * statistics.stdev(diffs):.2f}, ladder ahead on "
        f"{sum(d > 0 for d in diffs)} of {len(diffs)} students, tied on "
        f"{sum(d == 0 for d in diffs)}.",
        "",
        "How well each rung ranks the students as the top rung does (Kendall's tau, p-value):",
        "",
        "| rung | epochs in all | tau | p |",
        "|---|---|---|---|",
        *taus,
    ]
    command = "flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_rungs.py " + \
        shlex.join(sys.argv[1:] if argv is None else argv)
    write_section(RESULTS, title="Rungs of the multi-fidelity search", key=f"ladder-{task.name}",
                  heading=f"Ladder against one straight run, and rank agreement ({task.name})",
                  command=command.strip(), body=body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
