"""CLI commands that work on a finished (or running) run folder: report, export, dashboard."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

import torch

from protege.common import atomic_write

__all__ = ["add_run_folder_commands", "open_run_study", "task_of"]

_RUN_DIR = "run folder written by `protege run`, e.g. runs/mnist1d"


def task_of(run: Any) -> Any:
    """The benchmark task a run folder was made on (its ``task:`` key); a run made from
    Python has none."""
    from protege.experiments import available_tasks, load_task

    name = run.source.get("task")
    if name not in available_tasks():
        raise ValueError(
            f"{run.path}: {'task ' + repr(name) if name else 'no task'} is not a protege "
            "benchmark task (a run made from Python): the CLI cannot rebuild its teacher. From "
            "Python: student = protege.load_student(teacher, 'best/arch.json', "
            "'best/student.pt'), then export_onnx(student, example_input, 'student.onnx') "
            "(from protege.search import export_onnx)")
    return load_task(name, seed=run.config.seed)


def open_run_study(run: Any, *, accelerator: str = "cpu") -> tuple[Any, Any]:
    """The task and the :class:`protege.Study` of a run folder, opened again from it."""
    import protege

    task = task_of(run)
    study = protege.create_study(task.teacher, train=task.train, val=task.val, test=task.test,
                                 example_input=task.example_input, config=run.config,
                                 out=run.path, accelerator=accelerator, source=run.source)
    return task, study


def _cmd_report(args: argparse.Namespace) -> int:
    from protege.search import write_report

    paths = write_report(args.run_dir)
    if not args.quiet:
        for path in paths:
            print(f"{path}  ({path.stat().st_size:,} bytes)")
    return 0


def _first(data: Any, count: int) -> torch.Tensor:
    return data.tensors[0][:count]


def _sample(data: Any, count: int, seed: int) -> torch.Tensor:
    inputs = data.tensors[0]
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    return inputs[order[:count]]


def _int8_table(result: Any) -> str:
    rows = [("model", "bytes", "test acc", "ms batch 1", f"ms batch {result.batch_size}")]
    for name, f in (("float32", result.fp32), ("int8", result.int8)):
        rows.append((name, f"{f.size_bytes:,}",
                     f"{f.accuracy:.4f}" if f.accuracy is not None else "n/a",
                     f"{f.latency_ms:.4f}", f"{f.batch_latency_ms:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                     for row in rows)


def _cmd_export(args: argparse.Namespace) -> int:
    from protege.search import (
        export_onnx,
        export_torchscript,
        load_run,
        quantize_int8,
        write_report,
    )

    if args.int8 and args.format != "onnx":
        raise ValueError("--int8 needs --format onnx (int8 runs in onnxruntime)")
    run = load_run(args.run_dir)
    number = args.trial if args.trial is not None else (run.pick.trial if run.pick else None)
    if number is None:
        raise ValueError(f"{run.path}: no student was picked yet (finish the search with "
                         f"`protege resume {run.path}`), or pass --trial N")
    run.record(number)  # no such trial: one line, before the teacher is loaded
    task, study = open_run_study(run, accelerator=args.accelerator)
    if not args.quiet and not (run.pick is not None and run.pick.trial == number):
        print(f"fine-tuning trial {number} as the pick was "
              f"({run.config.distill.finetune_epochs} epochs)...", flush=True)
    folder, student = study.finetune(number)
    student = student.cpu().eval()
    evaluation = task.test if task.test is not None else task.val
    check_inputs = _first(evaluation, 256)
    if args.format == "onnx":
        check = export_onnx(student, task.example_input, folder / "student.onnx",
                            check_inputs=check_inputs)
    else:
        check = export_torchscript(student, task.example_input, folder / "student.torchscript.pt",
                                   check_inputs=check_inputs)
    print(f"{check.path}: {check.size_bytes:,} bytes; max abs difference against PyTorch "
          f"{check.max_abs_diff:.3g} on {check.samples} test inputs")
    results: dict[str, Any] = {args.format: check.to_dict()}
    if args.int8:
        calibration = _sample(task.train, args.calibration, run.config.seed)
        result = quantize_int8(check.path, folder / "student.int8.onnx", calibration=calibration,
                               evaluation=evaluation)
        results["int8"] = result.to_dict()
        print(f"{result.path}: onnxruntime static int8 (QOperator, per-channel), calibrated on "
              f"{result.calibration_samples} training inputs; onnxruntime, "
              f"{result.threads} thread:")
        print(_int8_table(result))
        speed = result.fp32.latency_ms / result.int8.latency_ms
        print(f"int8: {result.fp32.size_bytes / result.int8.size_bytes:.1f}x smaller, "
              f"{speed:.2f}x the float32 speed at batch 1, "
              f"{result.fp32.batch_latency_ms / result.int8.batch_latency_ms:.2f}x at batch "
              f"{result.batch_size}; top-1 agreement with float32 {result.agreement:.4f}")
    path = folder / "export.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    with atomic_write(path) as handle:
        handle.write(json.dumps(previous | results, indent=2) + "\n")
    if folder == run.path / "best":
        write_report(run.path)
        if not args.quiet:
            print(f"report updated: {run.path / 'report.html'}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from protege.search import load_run

    run = load_run(args.run_dir)
    storage = run.open_storage()
    if storage is None:
        raise FileNotFoundError(f"{run.path}: no study storage to show (no study.db)")
    try:
        import optuna_dashboard
    except ImportError as exc:
        raise ImportError("protege dashboard needs optuna-dashboard: "
                          "pip install 'protege[dashboard]'") from exc
    verbose = args.verbose

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *rest: Any) -> None:  # noqa: A002
            if verbose:
                super().log_message(format, *rest)

    try:
        server = make_server(args.host, args.port, optuna_dashboard.wsgi(storage),
                             handler_class=Handler)
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick "
                         "another --port (0: any free one)") from exc
    print(f"optuna-dashboard on http://{args.host}:{server.server_port}/dashboard/ for "
          f"{run.path} (Ctrl-C stops it)", flush=True)
    # The server runs in a daemon thread and this one waits, so Ctrl-C and `kill PID`
    # stop it at once even while a request is being answered (wsgiref would swallow an
    # interrupt raised inside a request).
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    print("dashboard stopped", flush=True)
    server.server_close()
    return 0


def add_run_folder_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``report``, ``export`` and ``dashboard`` on the CLI's subparsers."""
    text = "write report.md, report.html and the PNG plots of a run folder again"
    report = commands.add_parser("report", help=text, description=text, parents=[common])
    report.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR)
    report.set_defaults(func=_cmd_report)

    text = ("export the pick (or trial N) as ONNX or TorchScript, checked against PyTorch; "
            "--int8 adds a quantised ONNX model, measured before and after")
    export = commands.add_parser("export", help=text, description=text, parents=[common])
    export.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR)
    export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                        help="file format (default: onnx)")
    export.add_argument("--trial", type=int, metavar="N",
                        help="export trial N's student instead of the pick (fine-tuned like "
                             "the pick first, into RUN_DIR/trial-N/)")
    export.add_argument("--int8", action="store_true",
                        help="also write student.int8.onnx (onnxruntime static quantisation) "
                             "and report size, test accuracy and latency before and after")
    export.add_argument("--calibration", type=int, default=512, metavar="SAMPLES",
                        help="training inputs that calibrate --int8 (default: 512)")
    export.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "auto"),
                        help="where --trial's fine-tune runs (default: cpu)")
    export.set_defaults(func=_cmd_export)

    text = "serve optuna-dashboard on a run folder's study (trials, objectives, user attributes)"
    dashboard = commands.add_parser("dashboard", help=text, description=text, parents=[common])
    dashboard.add_argument("run_dir", metavar="RUN_DIR", help=_RUN_DIR)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to bind (default: 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=int, default=8080,
                           help="port (default: 8080; 0: any free port, printed)")
    dashboard.set_defaults(func=_cmd_dashboard)
