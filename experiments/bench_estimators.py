"""Benchmark of protege's estimators: latency predictor, accuracy predictor, MAC cross-check.

Run (inside the shared CPU lock, so no other heavy job disturbs the timings)::

    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_estimators.py --part latency

It writes ``experiments/results/estimators.md`` and caches the distilled MNIST-1D
trials in ``experiments/results/estimators_mnist1d_trials.json`` (delete it to redo them).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import thop
import torch
import torchvision
from scipy.stats import kendalltau, spearmanr
from torch import nn

from protege.distill import DistillConfig, cache_teacher_outputs, train_student
from protege.estimators import (
    THOP_RULES,
    AccuracyPredictor,
    LatencyPredictor,
    TimingConfig,
    count_macs,
    count_macs_torch,
    measure_latency_stats,
)
from protege.experiments import build_teacher, load_task
from protege.experiments._results import write_section
from protege.spaces import derive

logger = logging.getLogger("bench_estimators")
RESULTS = Path(__file__).parent / "results"
TRIALS_JSON = {"inherit": RESULTS / "estimators_mnist1d_trials.json",
               "scratch": RESULTS / "estimators_mnist1d_trials_scratch.json"}
SPLITS = 10


def _targets(*, trained: bool = True) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """(teacher, example input) per benchmark network; task teachers are untrained
    except MNIST-1D's when ``trained`` (latency and MACs do not depend on the weights)."""
    if trained:
        mnist1d = load_task("mnist1d")
        mnist1d_net, mnist1d_x = mnist1d.teacher, mnist1d.example_input
    else:
        mnist1d_net, mnist1d_x = build_teacher("mnist1d").eval(), torch.randn(1, 1, 40)
    return {
        "digits": (build_teacher("digits").eval(), torch.randn(1, 1, 8, 8)),
        "mnist1d": (mnist1d_net, mnist1d_x),
        "fashion_mnist": (build_teacher("fashion_mnist").eval(), torch.randn(1, 1, 28, 28)),
        "resnet18@32": (torchvision.models.resnet18(weights=None, num_classes=10).eval(),
                        torch.randn(1, 3, 32, 32)),
        "mobilenet_v2@32": (torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval(),
                            torch.randn(1, 3, 32, 32)),
    }


def _latency_targets() -> dict[str, tuple[nn.Module, torch.Tensor, int]]:
    """(teacher, example input, space level) per latency network: the five above at
    level 1 (all untrained: latency does not depend on the weights, and MNIST-1D's
    teacher is not trained for it) and torchvision's resnet18 at 64x64 at level 2."""
    targets = {name: (net, x, 1) for name, (net, x) in _targets(trained=False).items()}
    targets["resnet18@64 L2"] = (
        torchvision.models.resnet18(weights=None, num_classes=10).eval(),
        torch.randn(1, 3, 64, 64), 2)
    return targets


LATENCY_SETTINGS = [("fp32", 1), ("int8", 1), ("fp32", 32), ("int8", 32)]
PROTOCOL = TimingConfig()  # what measure_latency_stats and the calibration time with


def bench_latency(name: str, teacher: nn.Module, x: torch.Tensor, students: int, *,
                  precision: str, batch_size: int, level: int, retests: int) -> dict[str, Any]:
    """Predicted against measured ONNX Runtime latency of ``students`` random students."""
    space = derive(teacher, x, level=level)
    with tempfile.TemporaryDirectory() as cache:
        predictor = LatencyPredictor.for_space(space, x, runtime="onnxruntime",
                                               precision=precision, batch_size=batch_size,
                                               cache_dir=cache)
        start = time.perf_counter()
        LatencyPredictor.for_space(space, x, runtime="onnxruntime", precision=precision,
                                   batch_size=batch_size, cache_dir=cache)
        reload_s = time.perf_counter() - start
    assert isinstance(predictor, LatencyPredictor)
    rng = np.random.default_rng(10_000)
    predicted, sigma, measured, repeat, pred_ms, usable = [], [], [], [], [], []
    retest: dict[str, list[float]] = {"min_of_medians": [], "trimmed_mean": []}
    predictor.misses = 0
    for i in range(students):
        arch = space.sample(rng)
        start = time.perf_counter()
        mean, sd = predictor.predict_with_uncertainty(arch)
        pred_ms.append(1e3 * (time.perf_counter() - start))
        student = space.materialize(arch)
        stats = measure_latency_stats(student, x, runtime="onnxruntime", precision=precision,
                                      batch_size=batch_size)
        predicted.append(mean)
        sigma.append(sd)
        measured.append(stats.ms)
        repeat.append(stats.repeatability)
        usable.append(stats.usable)
        if i < retests:  # test-retest of both statistics on the same student
            again = measure_latency_stats(student, x, runtime="onnxruntime",
                                          precision=precision, batch_size=batch_size)
            for key, a, b in (("min_of_medians", stats.min_of_medians_ms,
                               again.min_of_medians_ms),
                              ("trimmed_mean", stats.trimmed_ms, again.trimmed_ms)):
                retest[key].append(abs(a - b) / min(a, b))
    p, m = np.asarray(predicted), np.asarray(measured)
    err = np.abs(p - m) / m
    cal = predictor.calibration
    return {
        "net": name, "precision": precision, "batch": batch_size, "choices": len(space.choices),
        "students": students, "rho": float(spearmanr(p, m).statistic),
        "mape": float(100 * err.mean()), "median_err": float(100 * np.median(err)),
        "within10": float(100 * np.mean(err <= 0.10)),
        "inside_1sd": float(100 * np.mean(np.abs(p - m) <= np.asarray(sigma))),
        "lat_min": float(m.min()), "lat_max": float(m.max()),
        "repeat": float(100 * np.median(repeat)), "unusable": int(len(usable) - sum(usable)),
        "retest_mom": float(100 * np.median(retest["min_of_medians"])) if retests else math.nan,
        "retest_trim": float(100 * np.median(retest["trimmed_mean"])) if retests else math.nan,
        "pred_ms": float(np.median(pred_ms)), "pred_max_ms": float(np.max(pred_ms)),
        "build_s": predictor.build_s, "reload_s": reload_s,
        "profiled": int(predictor.probes["profiled"]),
        "calibrated": int(cal["students"]), "loo_mape": float(cal["loo_mape"]),
        "table": len(predictor.table), "miss": predictor.misses,
    }


def _latency_body(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"Machine: {os.cpu_count()} CPU cores shared with other developers' test runs (load "
        f"average {os.getloadavg()[1]:.1f} when this table was written); onnxruntime CPU, "
        "1 intra-op thread, graph optimisations ALL; int8 = static "
        f"QOperator quantisation. Measurement protocol: {PROTOCOL.warmup} warm-ups, "
        f"{PROTOCOL.blocks} blocks of {PROTOCOL.repeats} repeats (each >= "
        f"{PROTOCOL.min_repeat_ms:g} ms), figure = {PROTOCOL.statistic.replace('_', ' ')}.", "",
        f"{args.students} random students per network and setting (seeds disjoint from the "
        "probes). rho: Spearman; within 10 %, MAPE, median error: prediction against "
        "measured figure; in 1 sd: share of students whose error is within the predicted "
        "standard deviation; repeat.: median repeatability (relative range of block "
        "medians) of the measurements themselves, and how many were unusable (> 15 %); "
        "retest: median |difference| between two measurements of one student for the "
        "minimum of block medians and for the 20 % trimmed mean (first "
        f"{args.retests} students); predict: time of one `predict_with_uncertainty` "
        "(median / max); build: `for_space` from an empty cache, with the number of "
        "students profiled per kernel (teacher, one per choice option, 8 random) and timed "
        "whole for the calibration, whose leave-one-out MAPE is `LOO`.", "",
        "| net | prec. | batch | latency ms | rho | within 10 % | MAPE % | median err % "
        "| in 1 sd % | repeat. % (unusable) | retest mom / trim % | predict ms | build s "
        "(profiled + timed) | LOO % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['precision']} | {r['batch']} | {r['lat_min']:.3f}-"
            f"{r['lat_max']:.3f} | {r['rho']:.3f} | {r['within10']:.0f} | {r['mape']:.1f} | "
            f"{r['median_err']:.1f} | {r['inside_1sd']:.0f} | {r['repeat']:.1f} "
            f"({r['unusable']}) | {r['retest_mom']:.1f} / {r['retest_trim']:.1f} | "
            f"{r['pred_ms']:.2f} / {r['pred_max_ms']:.2f} | {r['build_s']:.0f} "
            f"({r['profiled']} + {r['calibrated']}) | {r['loo_mape']:.1f} |")
    return lines


def mnist1d_trials(count: int, init: str) -> list[dict[str, Any]]:
    """Random MNIST-1D students distilled for 3 epochs (cached as JSON)."""
    path = TRIALS_JSON[init]
    trials: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
    if len(trials) >= count:
        return trials[:count]
    task = load_task("mnist1d")
    space = derive(task.teacher, task.example_input)
    outputs = cache_teacher_outputs(task.teacher, task.train,
                                    cache_dir=task.cache_dir / "teacher_outputs")
    rng = np.random.default_rng(7)
    archs = [space.sample(rng) for _ in range(count)]
    for i in range(len(trials), count):
        student = space.materialize(archs[i], init=init)  # type: ignore[arg-type]
        macs, params = count_macs(student, task.example_input)
        result = train_student(student, outputs, task.val, config=DistillConfig(epochs=3), seed=i)
        trials.append({"arch": archs[i], "x": space.encode(archs[i]).tolist(), "macs": macs,
                       "params": params, "accuracy": result.val_accuracy,
                       "history": list(result.history), "seconds": result.seconds})
        logger.info("trial %d: acc %.4f macs %d in %.1f s", i, result.val_accuracy, macs,
                    result.seconds)
        path.write_text(json.dumps(trials, indent=1))
    return trials


def bench_accuracy(trials: list[dict[str, Any]], held_out: int) -> list[dict[str, Any]]:
    """Kendall tau and 90 % coverage on ``held_out`` trials, over SPLITS random splits."""
    x = np.asarray([t["x"] for t in trials])
    x_cost = np.column_stack([x, np.log([t["macs"] for t in trials])])
    y = np.asarray([t["accuracy"] for t in trials])
    rows = []
    for kind in ("gp", "forest"):
        for label, features in (("encoding", x), ("encoding+log MACs", x_cost)):
            for n in (10, 20, 40):
                taus, inside, errors = [], [], []
                for split in range(SPLITS):
                    order = np.random.default_rng(split).permutation(len(y))
                    test, train = order[:held_out], order[held_out:held_out + n]
                    model = AccuracyPredictor(kind=kind, seed=0).fit(features[train], y[train])
                    mean, std = model.predict(features[test])
                    taus.append(kendalltau(mean, y[test]).statistic)
                    inside += list(np.abs(y[test] - mean) <= 1.645 * std)
                    errors += list(np.abs(mean - y[test]))
                rows.append({"kind": kind, "features": label, "n": n,
                             "tau": float(np.mean(taus)), "tau_sd": float(np.std(taus)),
                             "coverage": float(100 * np.mean(inside)),
                             "mae": float(100 * np.mean(errors))})
    return rows


def _thop_matmul_only(net: nn.Module, example: torch.Tensor) -> int:
    """thop with every non-conv, non-linear rule set to zero: must equal the torch counter."""
    def zero(module: nn.Module, inputs: Any, output: Any) -> None:
        module.total_ops += torch.zeros(1, dtype=torch.float64)  # type: ignore[operator]

    kept = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    rules = {kind: rule for kind, rule in THOP_RULES.items() if kind in kept}
    for module in net.modules():
        if not isinstance(module, kept) and next(iter(module.children()), None) is None:
            rules.setdefault(type(module), zero)
    with torch.no_grad():
        macs, _ = thop.profile(copy.deepcopy(net), inputs=(example[:1],), custom_ops=rules,
                               verbose=False)
    return int(round(float(macs)))


def bench_macs() -> list[dict[str, Any]]:
    nets: dict[str, tuple[nn.Module, torch.Tensor]] = {
        name: (net, example) for name, (net, example) in _targets().items()}
    for builder in ("mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "vit_b_16"):
        size = 224 if builder == "vit_b_16" else 64
        nets[builder] = (getattr(torchvision.models, builder)(weights=None).eval(),
                         torch.randn(1, 3, size, size))
    rows = []
    for name, (net, example) in nets.items():
        thop_macs, _ = count_macs(net, example)
        torch_macs = count_macs_torch(net, example)
        matmul = _thop_matmul_only(net, example)
        rows.append({"net": name, "thop": thop_macs, "torch": torch_macs,
                     "diff": 100 * (thop_macs - torch_macs) / torch_macs,
                     "matmul": matmul, "mdiff": 100 * (matmul - torch_macs) / torch_macs})
    return rows


def _write(results: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
           macs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines: list[str] = [
    ]
    for init, (trials, acc) in results.items():
        accs = [t["accuracy"] for t in trials]
        lines += [
            "", f"### Accuracy predictor (MNIST-1D, students initialised by `{init}`)", "",
            f"{len(trials)} random MNIST-1D students (`init={init!r}`) distilled for 3 "
            f"epochs (accuracy {min(accs):.3f}-{max(accs):.3f}, sd {np.std(accs):.4f}); "
            f"{SPLITS} random splits: train on n trials, test on {args.held_out} others. "
            "tau: Kendall, mean +- sd over splits; coverage: held-out values inside the "
            "90 % interval (mean +- 1.645 std), pooled; MAE in accuracy points.", "",
            "| model | features | n | tau | 90 % coverage | MAE |", "|---|---|---|---|---|---|",
        ]
        for r in acc:
            lines.append(f"| {r['kind']} | {r['features']} | {r['n']} | {r['tau']:.3f} +- "
                         f"{r['tau_sd']:.3f} | {r['coverage']:.0f} % | {r['mae']:.2f} |")
    lines += [
        "", "### MACs: thop (with protege's rules) vs torch.utils.flop_counter", "",
        "Per sample. thop also counts normalisation and pooling as elementwise work; the "
        "torch counter counts matmuls and convolutions only, so thop >= torch and the gap "
        "is the normalisation/pooling share.", "",
        "Tolerance and disagreements: restricted to convolutions and linear layers (every "
        "other rule set to zero), thop must equal the torch counter exactly (0 MACs); the "
        "totals may differ only by thop's elementwise terms, which the unit tests pin per "
        "layer kind: affine BatchNorm 4 per element (normalise 2, x2 for the affine), "
        "adaptive/average pooling kernel+1 per output, activations, Identity, Flatten, "
        "Dropout and padding 0. That share is largest in depthwise networks (many BN "
        "layers per MAC). Modules thop has no rule for (SiLU, Hardswish, GELU, Identity, "
        "Flatten, Dropout2d...) get protege's zero rules (`THOP_RULES`); any other leaf "
        "module (attention, custom layers) is counted by running it under "
        "`torch.utils.flop_counter` instead of thop's silent zero. Functional matmuls "
        "inside a non-leaf module's own forward are still invisible to thop; "
        "`count_macs_torch` sees them. Known blind spot of both: `nn.MultiheadAttention` "
        "in eval mode takes the fused `torch._native_multi_head_attention` path, which "
        "neither counter counts (a bare 16-dim, 10-token attention gives 0 and 0), so "
        "vit_b_16's numbers below exclude its attention; none of protege's task spaces "
        "contain attention.", "",
        "| net | thop MACs | torch MACs | thop - torch % | thop conv+linear only "
        "| (that) - torch % |", "|---|---|---|---|---|---|",
    ]
    for r in macs:
        lines.append(f"| {r['net']} | {r['thop']:,} | {r['torch']:,} | {r['diff']:+.2f} | "
                     f"{r['matmul']:,} | {r['mdiff']:+.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("latency", "other", "all"), default="all",
                        help="latency predictor, or accuracy predictor + MACs, or both")
    parser.add_argument("--students", type=int, default=20)
    parser.add_argument("--retests", type=int, default=3)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=None, help="latency networks to run")
    parser.add_argument("--settings", nargs="*", default=None,
                        help="latency settings as precision:batch, e.g. fp32:1 int8:32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("protege.spaces").setLevel(logging.WARNING)
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    torch.manual_seed(0)
    command = "flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_estimators.py " + (
        " ".join(sys.argv[1:]))
    path = RESULTS / "estimators.md"
    if args.part in ("other", "all"):
        macs = bench_macs()
        results = {}
        for init in ("inherit", "scratch"):
            trials = mnist1d_trials(args.trials, init)
            results[init] = (trials, bench_accuracy(trials, args.held_out))
        write_section(path, title="Estimators benchmark", key="accuracy-macs",
                      heading="Accuracy predictor and MACs", command=command,
                      body=_write(results, macs, args))
    if args.part == "other":
        return
    settings = [(p, int(b)) for p, b in (item.split(":") for item in args.settings)] \
        if args.settings else LATENCY_SETTINGS
    lat = []
    targets = _latency_targets()
    for name in args.only or list(targets):  # in the order asked for
        teacher, example, level = targets[name]
        for precision, batch in settings:
            try:
                lat.append(bench_latency(name, teacher, example, args.students,
                                         precision=precision, batch_size=batch, level=level,
                                         retests=args.retests))
            except Exception:  # one network's failure must not lose the others' numbers
                logger.exception("latency benchmark of %s %s/%d failed", name, precision, batch)
                continue
            logger.info("latency %s: %s", name, lat[-1])
            write_section(path, title="Estimators benchmark",
                          key="latency:" + ",".join(f"{p}:{b}" for p, b in settings),
                          heading="Latency predictor on ONNX Runtime, " + ", ".join(
                              f"{p} batch {b}" for p, b in settings),
                          command=command, body=_latency_body(lat, args))
    assert all(math.isfinite(r["rho"]) for r in lat)


if __name__ == "__main__":
    main()
