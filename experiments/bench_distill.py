"""Benchmark of the distillation engine: cost of a trial, and accuracy after the brief budget.

    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_distill.py --part cost
    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_distill.py --part quality
    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_distill.py --part sweep
    flock /tmp/protege-cpu.lock .venv/bin/python experiments/bench_distill.py --part tune

Each part rewrites its own section of ``experiments/results/distill.md`` (with the
command that made it) and prints its table. Timings run torch on one thread, with
the variants interleaved seed by seed, so that load from other processes on a
shared machine falls on every variant alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from protege.distill import (
    DistillConfig,
    DistillModule,
    TeacherOutputs,
    cache_teacher_outputs,
    evaluate,
    train_student,
)
from protege.estimators import count_macs
from protege.experiments import load_task
from protege.experiments._results import write_section
from protege.spaces import Architecture, SearchSpace, derive

RESULTS = Path(__file__).resolve().parent / "results" / "distill.md"
TARGETS = {"1/2": 0.5, "1/4": 0.25, "1/10": 0.1}
METHODS: dict[str, dict[str, object]] = {
    "CE": {"loss": "ce"},
    "Hinton": {"loss": "hinton"},
    "Hinton+hints": {"loss": "hinton", "hint_weight": 1.0},
    "DKD": {"loss": "dkd"},
    "DKD+hints": {"loss": "dkd", "hint_weight": 1.0},
}


def _mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _pick_students(space: SearchSpace, example: torch.Tensor,
                   teacher_macs: int) -> dict[str, tuple[Architecture, float]]:
    """One architecture per MAC target: near-uniform widths whose MACs come closest."""
    rng = np.random.default_rng(0)
    options = next(iter(space.choices.values()))
    candidates = [{name: w for name in space.choices} for w in options]
    candidates += [space.sample(rng) for _ in range(300)]
    scored = []
    for arch in candidates:
        macs, _ = count_macs(space.materialize(arch), example)
        widths = np.asarray(list(arch.values()), dtype=float)
        scored.append((arch, macs / teacher_macs, float(widths.std())))
    picks = {}
    for label, target in TARGETS.items():
        arch, ratio, _ = min(scored, key=lambda s: abs(math.log(s[1] / target)) + 0.3 * s[2])
        picks[label] = (arch, ratio)
    return picks


def _config(base: DistillConfig, **overrides: object) -> DistillConfig:
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


class _Setup:
    """A task's teacher, space, cached outputs (with and without hints) and students."""

    def __init__(self, task_name: str, cache_dir: Path, train_limit: int | None,
                 val_limit: int | None = None) -> None:
        self.task = load_task(task_name)
        self.teacher = self.task.teacher
        self.example = self.task.example_input
        self.val = self.task.val
        if val_limit is not None and val_limit < len(self.val):
            self.val = torch.utils.data.TensorDataset(*(t[:val_limit] for t in self.val.tensors))
        train = self.task.train
        if train_limit is not None and train_limit < len(train):
            train = torch.utils.data.TensorDataset(*(t[:train_limit] for t in train.tensors))
        self.train = train
        self.teacher_macs, _ = count_macs(self.teacher, self.example)
        self.teacher_acc = evaluate(self.teacher, self.val)
        self.space = derive(self.teacher, self.example)
        self.students = _pick_students(self.space, self.example, self.teacher_macs)
        self.cache_dir = cache_dir
        self._outputs: dict[bool, TeacherOutputs] = {}

    def outputs(self, config: DistillConfig) -> TeacherOutputs:
        hints = config.uses_hints and config.teacher_mode == "cached"
        if hints not in self._outputs:
            self._outputs[hints] = cache_teacher_outputs(self.teacher, self.train,
                                                         cache_dir=self.cache_dir, config=config)
        return self._outputs[hints]

    def student(self, size: str, init: str, seed: int) -> nn.Module:
        return self.space.materialize(self.students[size][0], init=init, seed=seed)  # type: ignore[arg-type]

    def run(self, config: DistillConfig, size: str, init: str, seed: int,
            module: type[DistillModule] = DistillModule) -> tuple[float, float]:
        result = train_student(self.student(size, init, seed), self.outputs(config), self.val,
                               config=config.for_init(init), seed=seed, teacher=self.teacher,
                               module=module)
        return result.val_accuracy, result.seconds


def _plain_loop(setup: _Setup, config: DistillConfig, size: str, seed: int) -> float:
    """The same trial as ``train_student`` in a hand-written loop: the Lightning-free cost."""
    from protege.distill import batch_loader  # the identical batching

    torch.manual_seed(seed)
    student = setup.student(size, "inherit", seed)
    outputs = setup.outputs(config)
    if config.samples is not None:
        outputs = outputs.subset(config.samples, seed=0)  # as train_student does
    loader = batch_loader(outputs.dataset(), config.batch_size, shuffle=True, seed=seed)
    module = DistillModule(student, config=config, total_steps=config.epochs * len(loader))
    start = time.perf_counter()
    opt = module.configure_optimizers()
    optimizer, schedule = opt["optimizer"], opt["lr_scheduler"]["scheduler"]
    for _ in range(config.epochs):
        student.train()
        sums: dict[str, torch.Tensor] = {}
        for batch in loader:
            terms = module.loss_terms(batch)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            schedule.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach() * len(batch[1])
        _ = {name: float(v) for name, v in sums.items()}  # the per-epoch sync Lightning does
        evaluate(student, setup.val)
    return time.perf_counter() - start


class _PerStepLogging(DistillModule):
    """The foundation's logging: ``log_dict`` and a finiteness sync on every step."""

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError("loss is not finite")
        self.log_dict({f"train/{name}": value for name, value in terms.items()},
                      on_step=False, on_epoch=True, batch_size=len(batch[1]))
        return terms["loss"]

    def on_train_epoch_end(self) -> None:
        pass


class _ManualOptimisation(DistillModule):
    """Lightning's manual optimisation: the step in ``training_step``, no closure."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.automatic_optimization = False

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers(use_pl_optimizer=False)
        terms = self.loss_terms(batch)
        optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        terms["loss"].backward()
        optimizer.step()  # type: ignore[union-attr]
        self.lr_schedulers().step()  # type: ignore[union-attr]
        self.accumulate(terms, len(batch[1]))
        return terms["loss"]


def _swapped(module: type[DistillModule], setup: _Setup, config: DistillConfig, size: str,
             seed: int) -> float:
    """A trial's seconds with ``train_student`` building ``module`` instead."""
    return setup.run(config, size, "inherit", seed, module=module)[1]


def _per_step_logging(setup: _Setup, config: DistillConfig, size: str, seed: int) -> float:
    return _swapped(_PerStepLogging, setup, config, size, seed)


def _lightning_fixed_cost(setup: _Setup, config: DistillConfig, repeats: int = 5) -> list[float]:
    """Wall time of ``train_student`` on one batch and one validation sample: the per-fit cost."""
    outputs = setup.outputs(config)
    tiny = TeacherOutputs(outputs.inputs[:8], outputs.targets[:8], outputs.logits[:8], "x")
    val = torch.utils.data.TensorDataset(setup.val.tensors[0][:1], setup.val.tensors[1][:1])
    times = []
    for seed in range(repeats):
        student = setup.student("1/10", "inherit", seed)
        start = time.perf_counter()
        train_student(student, tiny, val, config=_config(config, epochs=1, batch_size=8), seed=seed)
        times.append(time.perf_counter() - start)
    return times


def part_cost(setup: _Setup, base: DistillConfig, seeds: int,
              only: Sequence[str] | None = None) -> list[str]:
    size = "1/4"
    variants: dict[str, Callable[[int], float]] = {
        "CE only (Lightning)": lambda s: setup.run(_config(base, loss="ce"), size, "inherit", s)[1],
        "Hinton KD, cached teacher": lambda s: setup.run(base, size, "inherit", s)[1],
        "Hinton KD, online teacher":
            lambda s: setup.run(_config(base, teacher_mode="online"), size, "inherit", s)[1],
        "DKD, cached teacher":
            lambda s: setup.run(_config(base, loss="dkd"), size, "inherit", s)[1],
        "Hinton KD + hints, cached":
            lambda s: setup.run(_config(base, hint_weight=1.0), size, "inherit", s)[1],
        "Hinton KD + hints, online":
            lambda s: setup.run(_config(base, hint_weight=1.0, teacher_mode="online"), size,
                                "inherit", s)[1],
        "CE only, plain PyTorch loop": lambda s: _plain_loop(setup, _config(base, loss="ce"),
                                                             size, s),
        "Hinton KD cached, plain loop": lambda s: _plain_loop(setup, base, size, s),
        "Hinton KD cached, per-step log_dict (foundation)":
            lambda s: _per_step_logging(setup, base, size, s),
        "CE only, Lightning manual optimisation":
            lambda s: _swapped(_ManualOptimisation, setup, _config(base, loss="ce"), size, s),
        "Hinton KD cached, Lightning manual optimisation":
            lambda s: _swapped(_ManualOptimisation, setup, base, size, s),
    }
    if only:
        variants = {name: fn for name, fn in variants.items() if name in only}
    for fn in variants.values():  # warm-up: first calls pay imports and allocator growth
        fn(100)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for seed in range(seeds):
        for name, fn in variants.items():
            times[name].append(fn(seed))
    fixed = _lightning_fixed_cost(setup, base)
    ce = statistics.fmean(times["CE only (Lightning)"]) if "CE only (Lightning)" in times \
        else float("nan")
    lines = [f"Student {size} of the teacher's MACs ({setup.students[size][1]:.3f}), inherited; "
             f"{base.epochs} epochs of {base.trial_samples(len(setup.train))} samples, "
             f"batch {base.batch_size}; "
             f"{seeds} seeds, s per trial (training + per-epoch validation).", "",
             "| variant | s / trial | × CE only |", "| --- | --- | --- |"]
    for name, values in times.items():
        lines.append(f"| {name} | {_mean_sd(values, digits=3)} | "
                     f"{statistics.fmean(values) / ce:.2f} |")
    lines += ["", f"Validation on {len(setup.val)} samples after every epoch."]
    lines += ["", f"Lightning per-fit fixed cost (one 8-sample batch, one validation sample, "
                  f"Trainer built and torn down): {_mean_sd(fixed, digits=3)} s.", ""]
    for kd, plain in (("CE only (Lightning)", "CE only, plain PyTorch loop"),
                      ("Hinton KD, cached teacher", "Hinton KD cached, plain loop")):
        if kd not in times or plain not in times:
            continue
        ratio = statistics.fmean(times[kd]) / statistics.fmean(times[plain])
        lines.append(f"- Lightning vs plain loop ({kd}): {100 * (ratio - 1):+.1f} %")
    return lines


def part_quality(setup: _Setup, base: DistillConfig, seeds: int,
                 methods: Sequence[str], inits: Sequence[str]) -> list[str]:
    lines = [f"Teacher validation accuracy {100 * setup.teacher_acc:.2f} %. Validation accuracy "
             f"(%) after the brief budget ({base.epochs} epochs of "
             f"{base.trial_samples(len(setup.train))} training samples; validation on "
             f"{len(setup.val)} samples), mean ± sd over {seeds} seeds; Δ = method − CE. KD "
             "temperature by init (DistillConfig.for_init) unless set.", "",
             "| student (MACs) | init | " + " | ".join(methods) + " | best Δ vs CE |",
             "| --- | --- | " + " | ".join("---" for _ in methods) + " | --- |"]
    for size, (_, ratio) in setup.students.items():
        for init in inits:
            accs = {m: [setup.run(_config(base, **METHODS[m]), size, init, s)[0]  # type: ignore[arg-type]
                        for s in range(seeds)] for m in methods}
            ce = statistics.fmean(accs["CE"]) if "CE" in accs else float("nan")
            best = max((m for m in methods if m != "CE"), key=lambda m: statistics.fmean(accs[m]))
            gap = 100 * (statistics.fmean(accs[best]) - ce)
            cells = " | ".join(_mean_sd(accs[m], 100) for m in methods)
            lines.append(f"| {size} ({ratio:.3f}) | {init} | {cells} | {best} {gap:+.1f} |")
            print(lines[-1], flush=True)
    return lines


def part_sweep(setup: _Setup, base: DistillConfig, seeds: int) -> list[str]:
    grid = [(epochs, lr) for epochs in (3, 5, 8) for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    lines = ["Brief-budget defaults: Hinton KD (alpha, T as configured), student 1/4 of the "
             f"MACs, validation accuracy (%) over {seeds} seeds.", "",
             "| epochs | lr | inherit | scratch | s / trial |", "| --- | --- | --- | --- | --- |"]
    for epochs, lr in grid:
        config = _config(base, epochs=epochs, lr=lr)
        cells, secs = [], []
        for init in ("inherit", "scratch"):
            runs = [setup.run(config, "1/4", init, s) for s in range(seeds)]
            cells.append(_mean_sd([a for a, _ in runs], 100))
            secs += [t for _, t in runs]
        lines.append(f"| {epochs} | {lr:g} | {cells[0]} | {cells[1]} | "
                     f"{statistics.fmean(secs):.2f} |")
        print(lines[-1], flush=True)
    return lines


def _default_grid() -> list[dict[str, object]]:
    grid: list[dict[str, object]] = [{"loss": "ce"}]
    grid += [{"loss": "hinton", "alpha": a, "temperature": t}
             for a in (0.5, 0.9) for t in (2.0, 4.0)]
    grid += [{"loss": "dkd", "dkd_beta": b} for b in (1.0, 2.0, 4.0, 8.0)]
    grid += [{"loss": "hinton", "hint_weight": h} for h in (0.3, 1.0, 3.0)]
    return grid


def _parse_grid(text: str) -> list[dict[str, object]]:
    """``"loss=ce;loss=hinton,alpha=0.25"``: settings separated by ``;``, keys by ``,``."""
    return [dict(_parse_setting(item) for item in setting.split(","))
            for setting in text.split(";") if setting.strip()]


def _parse_setting(item: str) -> tuple[str, object]:
    key, sep, raw = item.strip().partition("=")
    if not sep or key not in {f.name for f in dataclasses.fields(DistillConfig)}:
        raise SystemExit(f"bad setting {item!r}: expected a DistillConfig KEY=VALUE")
    return key, yaml.safe_load(raw)


def part_tune(setup: _Setup, base: DistillConfig, seeds: int,
              grid: list[dict[str, object]], sizes: Sequence[str],
              inits: Sequence[str]) -> list[str]:
    lines = [f"Loss settings at the default budget, validation accuracy (%) over {seeds} seeds.",
             "", "| setting | " + " | ".join(f"{z} {i}" for z in sizes for i in inits) + " |",
             "| --- |" + " --- |" * (len(sizes) * len(inits))]
    for overrides in grid:
        config = _config(base, **overrides)
        cells = [_mean_sd([setup.run(config, size, init, s)[0] for s in range(seeds)], 100)
                 for size in sizes for init in inits]
        label = ", ".join(f"{k}={v}" for k, v in overrides.items())
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("cost", "quality", "sweep", "tune"), required=True)
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=None,
                        help="use only the first N training samples (reduced runs)")
    parser.add_argument("--val-limit", type=int, default=None,
                        help="validate on the first N validation samples (reduced runs)")
    parser.add_argument("--variants", default=None,
                        help="cost: only these variants (names as in the table, ';'-separated)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a DistillConfig default, e.g. --set epochs=8")
    parser.add_argument("--grid", default=None,
                        help="tune: settings to compare, e.g. 'loss=ce;loss=hinton,alpha=0.25'")
    parser.add_argument("--sizes", default=None, help="tune: student sizes (default 1/4,1/10)")
    parser.add_argument("--inits", default="inherit,scratch", help="tune/quality: inits")
    parser.add_argument("--label", default=None,
                        help="section name suffix, so a variant run keeps its own section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    base = DistillConfig(**dict(_parse_setting(item) for item in args.set))  # type: ignore[arg-type]
    inits = args.inits.split(",")
    command = " ".join(["flock /tmp/protege-cpu.lock .venv/bin/python",
                        "experiments/bench_distill.py", shlex.join(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory() as cache:
        setup = _Setup(args.task, Path(cache), args.train_limit, args.val_limit)
        start = time.perf_counter()
        if args.part == "cost":
            body = part_cost(setup, base, args.seeds,
                             args.variants.split(";") if args.variants else None)
        elif args.part == "quality":
            body = part_quality(setup, base, args.seeds, args.methods.split(","), inits)
        elif args.part == "tune":
            grid = _parse_grid(args.grid) if args.grid else _default_grid()
            sizes = args.sizes.split(",") if args.sizes else ["1/4", "1/10"]
            body = part_tune(setup, base, args.seeds, grid, sizes, inits)
        else:
            body = part_sweep(setup, base, args.seeds)
    body += ["", f"Config: `{base}`; torch threads: {args.threads}; "
                 f"part took {time.perf_counter() - start:.0f} s."]
    print("\n".join(body))
    part = args.part if args.label is None else f"{args.part}-{args.label}"
    write_section(RESULTS, title="Distillation engine benchmark", key=f"{part}:{args.task}",
                  heading=f"{part} ({args.task})", command=command, body=body)


if __name__ == "__main__":
    main()
