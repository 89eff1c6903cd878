"""How sure were the picks of a comparison? The paired validation margin against the test result.

    .venv/bin/python experiments/bench_pick_margin.py --compare-out /tmp/cmp/final \
        --config experiments/compare_mnist1d_rungs.yaml

For every search arm and seed of a finished ``protege compare`` folder, the pick saved in
``<arm>/seed<k>/run/best`` is compared with the teacher on the validation set
(:func:`protege.search.pick.validation_margin`: the difference, its one-sided 95 % lower
bound and the chance that the true drop is within the limit), next to what the test set
said: whether the pick held within one point. Rewrites its section of
``experiments/results/pick_margin.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from protege.experiments import load_compare_config, prepare_task
from protege.experiments._results import write_section
from protege.search import load_student
from protege.search.pick import validation_margin

RESULTS = Path(__file__).resolve().parent / "results" / "pick_margin.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-out", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    config = load_compare_config(args.config)
    task = prepare_task(config)
    out = Path(args.compare_out)
    rows = []
    for arm in config.arms:
        if arm.kind != "search":
            continue
        drop = config.arm_config(arm, config.seeds[0]).constraints.max_accuracy_drop
        for seed in config.seeds:
            best = out / arm.name / f"seed{seed}" / "run" / "best"
            record = json.loads((out / arm.name / f"seed{seed}" / "record.json").read_text())
            if not (best / "student.pt").is_file() or not record.get("pick"):
                continue
            student = load_student(task.teacher, best / "arch.json", best / "student.pt")
            m = validation_margin(student, task.teacher, task.val, max_drop=drop)
            test_delta = record["pick"]["test_accuracy"] - record["teacher"]["test_accuracy"]
            held = test_delta >= -0.01 - 1e-12
            rows.append(f"| {arm.name} | {seed} | {record['pick']['macs_ratio']:.3f} | "
                        f"{100 * m['difference']:+.2f} | {100 * m['lower_bound']:+.2f} | "
                        f"{100 * m['p_within']:.0f} % | {100 * test_delta:+.2f} | "
                        f"{'yes' if held else 'no'} |")
            print(rows[-1], flush=True)
    body = [f"Compare folder `{out}` ({config.report_name}); {len(task.val)} validation samples; "
            "limit: the arm's `constraints.max_accuracy_drop`; 'held' is the headline's "
            "within-one-point on test.", "",
            "| arm | seed | MACs ratio | val Δ (pts) | 95 % lower bound | P(within limit) | "
            "test Δ (pts) | held on test |", "|---|---|---|---|---|---|---|---|", *rows]
    command = ".venv/bin/python experiments/bench_pick_margin.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    write_section(RESULTS, title="How sure the picks were", key=config.report_name,
                  heading=f"Validation margin of each pick against its test result "
                          f"({config.report_name})", command=command, body=body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
