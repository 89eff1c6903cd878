"""The ``protege`` command line.

``init``, ``run``, ``resume``, ``worker``, ``teacher`` and ``compare`` are here; the commands on a
run folder (``report``, ``export``, ``dashboard``) are in ``protege._cli_runs``. Each
command is one ``_add_*`` registration plus one ``_cmd_*`` function that returns the
exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from protege._cli_runs import add_run_folder_commands
from protege._logging import set_verbosity
from protege.common import describe

__all__ = ["main"]


def _millions(value: float) -> str:
    return f"{value / 1e6:.3f}M" if value >= 1e5 else f"{value / 1e3:.1f}K"


def _front_table(result, measured: Mapping[int, float]) -> str:  # type: ignore[no-untyped-def]
    """The front as printed at the end of a run; with the predicted and the measured
    latency (``measured``: trial -> ms, from ``pareto.json``) when latency was predicted."""
    teacher = result.teacher
    latency = any(r.latency_ms is not None for r in result.front)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = [("trial", "val acc", "MACs", "MACs/teacher", "params",
             *(("pred. ms", "meas. ms") if latency else ()))]
    rows.append(("teacher", f"{teacher.val_accuracy:.4f}", _millions(teacher.macs), "1.000",
                 f"{teacher.params}", *(("-", ms(teacher.latency_ms)) if latency else ())))
    for r in result.front:
        rows.append((str(r.number), f"{r.accuracy:.4f}", _millions(r.macs),
                     f"{r.macs / teacher.macs:.3f}", str(r.params),
                     *((ms(r.latency_ms), ms(measured.get(r.number))) if latency else ())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    import protege
    from protege._progress import TrialProgress
    from protege.experiments import load_inputs
    from protege.search import load_run
    from protege.search.pick import pick_cost

    overrides = list(args.set)
    if args.storage:
        overrides.append(f"storage={args.storage}")
    # a YAML run file, or a run folder (resume): the teacher, the data and the config
    inputs = load_inputs(args.config, overrides)
    config = inputs.config
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    quiet = args.quiet
    start = time.perf_counter()
    worker = args.command == "worker"
    study = protege.create_study(inputs.teacher, train=inputs.train, val=inputs.val,
                                 test=inputs.test, example_input=inputs.example_input,
                                 config=config, out=out, accelerator=args.accelerator,
                                 worker=worker, source=inputs.source.to_dict())
    if not quiet:
        print(_inputs_line(inputs, study.profile), flush=True)
    progress = TrialProgress(
        total=config.trials, teacher_accuracy=study.profile.val_accuracy,
        teacher_macs=study.profile.macs, max_accuracy_drop=config.constraints.max_accuracy_drop,
        records_file=out / "trials.jsonl", cost=pick_cost(config.objectives))
    study.optimize(callbacks=[] if quiet else [progress])
    if worker:
        print(f"worker done: the study holds {len(study.trials)} trials")
        return 0
    if not quiet:
        print("picking, fine-tuning and exporting the pick...", flush=True)
    result = study.finish()
    run = load_run(out)
    if not quiet:
        print(f"\nPareto front ({len(result.front)} of {len(result.trials)} trials), "
              f"hypervolume {result.hypervolume:.4f}:")
        measured = {int(m["trial"]): float(m["latency_ms_measured"])
                    for m in run.front if m.get("latency_ms_measured") is not None}
        print(_front_table(result, measured))
    pick = result.pick
    if pick is None:
        print("no trial completed: nothing was picked", file=sys.stderr)
        return 1
    verdict = "meets the limits" if pick.meets_constraints else "does NOT meet the accuracy limit"
    test = f", test accuracy {pick.test_accuracy:.4f}" if pick.test_accuracy is not None else ""
    print(f"{'' if quiet else chr(10)}pick: trial {pick.trial}, "
          f"{pick.macs / result.teacher.macs:.3f}x the teacher's MACs, val accuracy "
          f"{pick.val_accuracy:.4f} after fine-tuning{test} ({verdict})")
    onnx = run.summary.get("onnx") or {}
    if not quiet:
        print(f"ONNX: {out / 'best' / 'student.onnx'}, max abs difference against PyTorch "
              f"{onnx['max_abs_diff']:.3g}" if "max_abs_diff" in onnx
              else f"ONNX: not exported ({onnx.get('error', 'unknown reason')})")
    print(f"run folder: {out}, report {out / 'report.html'}  "
          f"({time.perf_counter() - start:.0f}s)")
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a protege run folder (no config.yaml)")
    args.config, args.out, args.storage = str(run_dir), str(run_dir), None
    return _cmd_run(args)


def _inputs_line(inputs, profile) -> str:  # type: ignore[no-untyped-def]
    """What the search runs on: the teacher, its input, MACs and accuracy, the data sizes."""
    sizes = ", ".join(f"{len(data)} {name}" for name, data in
                      (("train", inputs.train), ("val", inputs.val), ("test", inputs.test))
                      if data is not None)
    example = inputs.example_input
    return (f"{inputs.source.describe()}: {inputs.classes} classes, input "
            f"{list(example.shape[1:])} {str(example.dtype).removeprefix('torch.')}, "
            f"{_millions(profile.macs)} MACs, val accuracy {profile.val_accuracy:.4f}; "
            f"data {sizes}")


def _cmd_init(args: argparse.Namespace) -> int:
    from protege.common import atomic_write
    from protege.experiments import starter_config

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    text = starter_config(args.model, root=Path.cwd())
    if out is None:
        print(text, end="")
        return 0
    with atomic_write(out) as handle:
        handle.write(text)
    print(f"wrote {out}: set teacher.weights and data:, then `protege run {out}`")
    return 0


def _teacher_line(task) -> str:  # type: ignore[no-untyped-def]
    info = task.teacher_info
    source = "from cache" if info.get("from_cache") else f"trained in {info['train_seconds']:.0f}s"
    return (f"val accuracy {info['val_accuracy']:.4f}, test accuracy {info['test_accuracy']:.4f}, "
            f"{source}")


def _cmd_teacher(args: argparse.Namespace) -> int:
    from protege.estimators import count_macs
    from protege.experiments import load_task

    task = load_task(args.name, seed=args.seed)
    macs, params = count_macs(task.teacher, task.example_input)
    print(f"{task.name} teacher: {_teacher_line(task)}; {_millions(macs)} MACs, {params} params")
    print(f"cached at {task.teacher_info['cache_path']}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from protege.experiments import load_compare_config, run_compare, write_compare_report

    overrides = list(args.set) + ([f"workers={args.workers}"] if args.workers else [])
    config = load_compare_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    words = ["protege", "compare", args.config, *(["--out", args.out] if args.out else []),
             *(w for item in args.set for w in ("--set", item)),
             *(["--workers", str(args.workers)] if args.workers else []),
             *(["--reuse-stale"] if args.reuse_stale else [])]
    jobs = len(config.arms) * len(config.seeds)
    start = time.perf_counter()
    seen = 0

    def progress(record) -> None:  # type: ignore[no-untyped-def]
        nonlocal seen
        seen += 1
        pick = record.pick or {}
        ratio = pick.get("macs_ratio")
        test = pick.get("test_accuracy")
        print(f"[{seen}/{jobs}, {time.perf_counter() - start:6.0f}s] {record.arm} seed "
              f"{record.seed}: pick {1 / ratio if ratio else float('nan'):.2f}x fewer MACs, "
              f"test {100 * (test or float('nan')):.2f} %, hypervolume "
              f"{record.hypervolume:.4f}, {record.students_trained} students", flush=True)

    records = run_compare(config, out=out, progress=progress, reuse_stale=args.reuse_stale)
    paths = write_compare_report(records, config=config, command=shlex.join(words),
                                 results_dir=args.results, note=args.note or "")
    print(paths["md"].read_text().split("\nPaired tests")[0])
    print(f"report: {paths['md']}  ({time.perf_counter() - start:.0f}s)")
    return 0


_EXIT_CODES = """exit codes:
  0    done
  1    nothing was picked, or an unexpected error (-v shows its traceback)
  2    a mistake in the command, the config or the input (one line says which)
  3    the study stopped because most trials failed
  130  interrupted (run the same command again to resume)"""


def _add_search(commands: Any, common: argparse.ArgumentParser, name: str, text: str) -> None:
    run = commands.add_parser(name, help=text, description=text, parents=[common])
    run.add_argument("config", help="YAML run file, e.g. experiments/mnist1d.yaml or "
                                    "examples/fashion_folder.yaml")
    run.add_argument("--out", help="run folder (default: runs/<config name>); reusing it "
                                   "resumes")
    run.add_argument("--storage", required=name == "worker", metavar="URL",
                     help="shared study storage: postgresql://..., sqlite:///PATH (one "
                          "writer) or journal:PATH (default: SQLite in the run folder)")
    _add_run_options(run)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set distill.epochs=3 (repeatable)")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "auto"),
                        help="where students train (default: cpu)")
    parser.set_defaults(func=_cmd_run)


def _add_run(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_search(commands, common, "run",
                "run (or resume) a search from a YAML config, then pick, fine-tune, export "
                "and report")


def _add_resume(commands: Any, common: argparse.ArgumentParser) -> None:
    text = ("continue a run folder's search where it stopped (its config.yaml; --set "
            "n_trials=N extends it), then pick, fine-tune, export and report")
    resume = commands.add_parser("resume", help=text, description=text, parents=[common])
    resume.add_argument("run_dir", metavar="RUN_DIR", help="run folder, e.g. runs/mnist1d")
    _add_run_options(resume)
    resume.set_defaults(func=_cmd_resume)


def _add_worker(commands: Any, common: argparse.ArgumentParser) -> None:
    _add_search(commands, common, "worker",
                "join a running search on a shared --storage and run trials (no pick)")


def _add_init(commands: Any, common: argparse.ArgumentParser) -> None:
    text = ("write a commented starter run file for your model (teacher:, data: and every "
            "search key at its default)")
    init = commands.add_parser("init", help=text, description=text, parents=[common])
    init.add_argument("model", metavar="MODEL",
                      help="import path of the model's class or factory, e.g. "
                           "torchvision.models.resnet18 or my_models:SmallCNN")
    init.add_argument("--out", "-o", help="file to write (default: print it)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.set_defaults(func=_cmd_init)


def _add_teacher(commands: Any, common: argparse.ArgumentParser) -> None:
    text = "train (or show the cached) teacher of a benchmark task"
    teacher = commands.add_parser("teacher", help=text, description=text, parents=[common])
    teacher.add_argument("name", help="task name: mnist1d, fashion_mnist or digits")
    teacher.add_argument("--seed", type=int, default=0)
    teacher.set_defaults(func=_cmd_teacher)


def _add_compare(commands: Any, common: argparse.ArgumentParser) -> None:
    text = "compare strategies and baselines (arms x seeds) at equal budgets; resumable"
    compare = commands.add_parser("compare", help=text, description=text, parents=[common])
    compare.add_argument("config",
                         help="YAML comparison file, e.g. experiments/compare_mnist1d.yaml")
    compare.add_argument("--out", help="compare folder (default: runs/<config name>); reusing it "
                                       "reuses every finished arm and seed")
    compare.add_argument("--results", default="experiments/results",
                         help="where the table, JSON and plots go (default: experiments/results)")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key, e.g. --set budget.trials=20 (repeatable)")
    compare.add_argument("--workers", type=int, default=0,
                         help="arm-seed runs in parallel processes (default: the config's)")
    compare.add_argument("--note", help="a sentence the report carries above its table")
    compare.add_argument("--reuse-stale", action="store_true",
                         help="reuse finished arms made by other code or another config "
                              "(refused by default; the report then names every commit)")
    compare.set_defaults(func=_cmd_compare)


def _add_verbosity(parser: argparse.ArgumentParser, *, default: Any) -> None:
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", default=default,
                           help="log protege's progress (and show tracebacks of bugs)")
    verbosity.add_argument("-q", "--quiet", action="store_true", default=default,
                           help="print only results, warnings and errors")


def _parser() -> argparse.ArgumentParser:
    # -v/-q work before or after the command: `protege -q run ...` or `protege run -q ...`;
    # after it, they leave what was said before alone (their default is SUPPRESS there).
    parser = argparse.ArgumentParser(
        prog="protege", epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find the smallest, fastest student network a trained teacher can teach.",
    )
    _add_verbosity(parser, default=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_init, _add_run, _add_resume, _add_worker, add_run_folder_commands,
                _add_compare, _add_teacher):
        add(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``protege`` command; returns the exit code."""
    args = _parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    set_verbosity(level)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Long steps (training the teacher, caching its outputs, the fine-tune) log a progress
    # line each epoch or few seconds there: shown unless -q, for this command only (main()
    # called in-process, as tests do, leaves the logger as it found it).
    progress = logging.getLogger("protege.progress")
    before = progress.level
    progress.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return _run_command(args)
    finally:
        progress.setLevel(before)


def _run_command(args: argparse.Namespace) -> int:
    """The command's exit code; a user's mistake is one line and exit code 2."""
    from protege.search import TooManyFailures

    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, ImportError) as exc:  # ImportError: a missing extra
        print(f"protege: error: {exc}", file=sys.stderr)
        return 2
    except TooManyFailures as exc:
        print(f"protege: stopped: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("protege: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: one line unless -v
        if args.verbose:
            raise
        print(f"protege: unexpected error: {describe(exc)} (run with -v for "
              "the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
