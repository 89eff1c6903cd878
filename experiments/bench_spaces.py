"""Benchmark: derive a level-3 space for every torchvision classification builder.

For each builder of ``torchvision.models.list_models(module=torchvision.models)``
(``weights=None``, input 64x64 or the smallest of 96/128/224 the model accepts) it
derives the space, then materialises 20 random architectures and checks that each
runs, gives the teacher's output shape and has MACs within ``macs_bounds()``. Each
builder runs in its own process with a time limit, so one that hangs or runs out
of memory counts as a failure without stopping the sweep. It prints a table and
writes it to ``experiments/results/spaces.md`` with the command that made it.

Usage::

    python experiments/bench_spaces.py [--models resnet18,vgg11] [--samples 20]
        [--time-limit 120] [--timeout 120] [--append]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES = (64, 96, 128, 224)
MAX_PARAMS = 150_000_000
"""Builders above this many parameters are not run (not covered): their deep copies
alone would take the sweep past its 20-minute budget on 2 CPU cores."""
TIMEOUT_S = 120.0
RESULTS = Path(__file__).parent / "results" / "spaces.md"


def _input_for(model: Any) -> Any:
    import torch

    for size in SIZES:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                model(x)
            return x
        except Exception:  # the model needs a larger input
            continue
    raise RuntimeError(f"no input size of {SIZES} works")


def run_one(name: str, samples: int, time_limit_s: float = 120.0) -> dict[str, Any]:
    """Derive, sample and check one builder; the result row as a dict."""
    import numpy as np
    import torch
    import torchvision

    from protege.estimators import count_macs, count_params
    from protege.spaces import derive

    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    spaces_logger = logging.getLogger("protege.spaces")
    spaces_logger.setLevel(logging.WARNING)  # the root logger is at ERROR
    spaces_logger.addHandler(Collect(logging.WARNING))
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    row: dict[str, Any] = {"model": name, "params_m": count_params(model) / 1e6}
    x = _input_for(model)
    row["input"] = x.shape[-1]
    start = time.perf_counter()
    space = derive(model, x, level=3, time_limit_s=time_limit_s)
    row["derive_s"] = time.perf_counter() - start
    row.update(space.kinds())
    row["log10_size"] = math.log10(space.size) if space.size else 0.0
    low, high = space.macs_bounds()
    row["mac_ratio"] = low / high
    rng = np.random.default_rng(0)
    times, problems = [], []
    with torch.no_grad():
        expected = model(x).shape
        for i in range(samples):
            arch = space.sample(rng)
            try:
                start = time.perf_counter()
                student = space.materialize(arch)
                times.append(time.perf_counter() - start)
                shape = student(x).shape
                macs, _ = count_macs(student, x)
                if shape != expected:
                    problems.append(f"arch {i}: output {tuple(shape)}")
                elif not low <= macs <= high:
                    problems.append(f"arch {i}: {macs} MACs outside [{low}, {high}]")
            except Exception as exc:
                problems.append(f"arch {i}: {type(exc).__name__}: {str(exc)[:120]}")
            json.dumps(arch)  # must stay plain JSON
    row["materialize_s"] = float(np.mean(times)) if times else float("nan")
    row["ok"] = not problems
    row["why"] = problems[0] if problems else ""
    row["frozen"] = "; ".join(w[:160] for w in warnings)
    return row


def _run_isolated(name: str, samples: int, time_limit_s: float, timeout_s: float
                  ) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", name, "--samples", str(samples),
               "--time-limit", str(time_limit_s)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "why": f"no result within {timeout_s:g} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return dict(json.loads(lines[-1]))
    error = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return {"model": name, "ok": False,
            "why": (error[-1] if error else f"exit code {done.returncode}")[:200]}


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | params M | input | width | depth | rank | log10 size | min/max MACs "
            "| derive s | materialize s | archs ok | why not | frozen (derive's warning) |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        def cell(key: str, fmt: str, r: dict[str, Any] = r) -> str:
            value = r.get(key)
            return format(value, fmt) if isinstance(value, (int, float)) else "-"
        lines.append(
            f"| {r['model']} | {cell('params_m', '.1f')} | {cell('input', 'd')} "
            f"| {cell('width', 'd')} | {cell('depth', 'd')} | {cell('rank', 'd')} "
            f"| {cell('log10_size', '.1f')} | {cell('mac_ratio', '.3f')} "
            f"| {cell('derive_s', '.2f')} | {cell('materialize_s', '.3f')} "
            f"| {'yes' if r.get('ok') else 'no'} | {str(r.get('why', '')).replace('|', '/')} "
            f"| {str(r.get('frozen', '')).replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated builders (default: all)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds derive gives Torch-Pruning (derive's time_limit_s)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds per builder, all included")
    parser.add_argument("--append", action="store_true",
                        help="add the table to --out as a new section instead of replacing it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        print(json.dumps(run_one(args.one, args.samples, args.time_limit)))
        return

    import torchvision

    from protege.estimators import count_params

    names = ([n for n in args.models.split(",") if n] or
             torchvision.models.list_models(module=torchvision.models))
    rows, start = [], time.perf_counter()
    for name in names:
        params = count_params(torchvision.models.get_model(name, weights=None))
        if params > MAX_PARAMS:
            row = {"model": name, "params_m": params / 1e6, "ok": False,
                   "why": f"not run: over {MAX_PARAMS / 1e6:g}M parameters (time budget)"}
        else:
            row = _run_isolated(name, args.samples, args.time_limit, args.timeout)
        rows.append(row)
        print(f"{name}: {'ok' if row['ok'] else 'FAIL ' + str(row['why'])}", flush=True)
    covered = sum(bool(r["ok"]) for r in rows)
    command = "python " + " ".join([Path(__file__).as_posix().split("/main/")[-1]] + sys.argv[1:])
    title = "## Rerun" if args.append else "# Spaces benchmark"
    text = (f"{title}\n\nCommand: `{command}`\n\n"
            f"Level 3 spaces of torchvision {torchvision.__version__} classification builders, "
            f"{args.samples} random architectures each; wall time "
            f"{time.perf_counter() - start:.0f} s.\n\n"
            f"**Coverage: {covered}/{len(rows)} builders** derive a space whose random "
            "students all materialise, run with the right output shape and have MACs within "
            "the space's bounds.\n\n" + _table(rows) + "\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    previous = out.read_text() + "\n" if args.append and out.exists() else ""
    out.write_text(previous + text)


if __name__ == "__main__":
    main()
