"""Benchmark: derive a level-3 space for every torchvision classifier and a timm sample.

For each builder of ``torchvision.models.list_models(module=torchvision.models)``
(``--source torchvision``, ``weights=None``) or of :data:`TIMM_SAMPLE` (``--source
timm``, ``pretrained=False``; timm is an optional extra), with input 64x64 or the
smallest of 96/128/224 the model accepts, it derives the space, then materialises 20
random architectures and checks that each runs in eval mode with the teacher's output
shape and MACs within ``macs_bounds()``, and runs in training mode on two samples.
Each builder runs in its own process with a time limit (``--timeout``), so one that
hangs or runs out of memory counts as a failure without stopping the sweep. It prints
a table and writes it as the source's section of ``experiments/results/spaces.md``
with the command that made it; the ``frozen`` column lists what derive froze and why.

Usage::

    python experiments/bench_spaces.py [--source torchvision|timm] [--models a,b]
        [--samples 20] [--time-limit 120] [--timeout 900]
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
TIMEOUT_S = 900.0
"""Seconds per builder, all included: Swin, MaxViT and regnet_x_16gf needed more than 120
on 2 loaded cores."""
BUILD_KWARGS: dict[str, dict[str, Any]] = {
    # Their training-mode output is (logits, aux_logits), which derive refuses: build them
    # as a user would, as its message says.
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "googlenet": {"aux_logits": False, "init_weights": False},
}
TIMM_SAMPLE = (
    "levit_128s", "efficientformer_l1", "deit_tiny_patch16_224", "vit_tiny_patch16_224",
    "convnext_atto", "regnetx_002", "mobilevit_xxs", "mobilenetv3_small_050",
    "efficientnet_b0", "ghostnet_100", "skresnet18", "resnest14d", "poolformer_s12",
    "mixer_s16_224", "dla34", "tinynet_e", "lcnet_050", "edgenext_xx_small",
    "xcit_nano_12_p16_224", "pit_ti_224", "nf_resnet26", "rexnet_100", "mobileone_s0",
    "fastvit_t8", "efficientvit_b0", "tiny_vit_5m_224", "gcvit_xxtiny", "coat_lite_tiny",
    "repvit_m1", "resnet18d",
)
"""A fixed sample of small timm architectures of many families (attention with cached
biases, selective kernels, split attention, token mixers, GroupNorm, reparameterised
blocks), none of which protege's tests use."""
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


def build(source: str, name: str) -> Any:
    """The untrained model ``name`` of ``source`` (no weights are downloaded)."""
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    return torchvision.models.get_model(name, weights=None, **BUILD_KWARGS.get(name, {}))


def run_one(name: str, samples: int, time_limit_s: float = 120.0,
            source: str = "torchvision") -> dict[str, Any]:
    """Derive, sample and check one builder; the result row as a dict."""
    import numpy as np
    import torch

    from protege.estimators import count_macs, count_params
    from protege.spaces import derive

    warnings: list[str] = []
    fixed: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                warnings.append(message)
            elif "stay fixed" in message:
                fixed.append(message)

    spaces_logger = logging.getLogger("protege.spaces")
    spaces_logger.setLevel(logging.INFO)  # the root logger is at ERROR
    spaces_logger.propagate = False
    spaces_logger.addHandler(Collect(logging.INFO))
    torch.manual_seed(0)
    model = build(source, name).eval()
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
                trained = student.train()(torch.cat([x, x]))
                student.eval()
                if shape != expected:
                    problems.append(f"arch {i}: output {tuple(shape)}")
                elif not isinstance(trained, torch.Tensor) or trained.shape[1:] != shape[1:]:
                    problems.append(f"arch {i}: training-mode output {type(trained).__name__}")
                elif not low <= macs <= high:
                    problems.append(f"arch {i}: {macs} MACs outside [{low}, {high}]")
            except Exception as exc:
                problems.append(f"arch {i}: {type(exc).__name__}: {str(exc)[:120]}")
            json.dumps(arch)  # must stay plain JSON
    row["materialize_s"] = float(np.mean(times)) if times else float("nan")
    row["ok"] = not problems
    row["why"] = problems[0] if problems else ""
    row["frozen"] = "; ".join([w[:400] for w in warnings]
                              + ([f"{len(fixed)} groups fixed by the analysis, e.g. "
                                  + "; ".join(f[:120] for f in fixed[:2])] if fixed else []))
    row["build"] = ", ".join(f"{k}={v}" for k, v in BUILD_KWARGS.get(name, {}).items()
                             if source == "torchvision")
    return row


def _run_isolated(name: str, samples: int, time_limit_s: float, timeout_s: float,
                  source: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", name, "--samples", str(samples),
               "--time-limit", str(time_limit_s), "--source", source]
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
            f"| {'yes' if r.get('ok') else 'no'} "
            f"| {str(r.get('why', '')).replace('|', '/')}"
            f"{' (built with ' + r['build'] + ')' if r.get('build') else ''} "
            f"| {str(r.get('frozen', '')).replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("torchvision", "timm"), default="torchvision")
    parser.add_argument("--models", default="",
                        help="comma-separated builders (default: all of torchvision's, or "
                             "TIMM_SAMPLE)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds derive gives Torch-Pruning (derive's time_limit_s)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds per builder, all included")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.one:
        print(json.dumps(run_one(args.one, args.samples, args.time_limit, args.source)))
        return

    import importlib

    from protege.estimators import count_params

    library = importlib.import_module(args.source)
    if args.models:
        names = [n for n in args.models.split(",") if n]
    elif args.source == "timm":
        names = list(TIMM_SAMPLE)
    else:
        names = library.models.list_models(module=library.models)
    rows, start = [], time.perf_counter()
    command = "python " + " ".join(["experiments/bench_spaces.py"] + sys.argv[1:])
    for name in names:
        params = count_params(build(args.source, name))
        if params > MAX_PARAMS:
            row = {"model": name, "params_m": params / 1e6, "ok": False,
                   "why": f"not run: over {MAX_PARAMS / 1e6:g}M parameters (time budget)"}
        else:
            row = _run_isolated(name, args.samples, args.time_limit, args.timeout, args.source)
        rows.append(row)
        print(f"{name}: {'ok' if row['ok'] else 'FAIL ' + str(row['why'])}", flush=True)
        # Written after every builder, so a sweep cut short keeps the rows it has.
        _write(args, library.__version__, rows, len(names), command, start)


def _write(args: argparse.Namespace, version: str, rows: list[dict[str, Any]], total: int,
           command: str, start: float) -> None:
    from protege.experiments._results import write_section

    covered = sum(bool(r["ok"]) for r in rows)
    done = "" if len(rows) == total else f" ({len(rows)} of {total} run so far)"
    body = [f"Level 3 spaces of {args.source} {version} classifiers, "
            f"{args.samples} random architectures each, {args.timeout:g} s per builder; "
            f"wall time {time.perf_counter() - start:.0f} s on a loaded 2-core machine{done}.",
            "", f"**Coverage: {covered}/{len(rows)} builders** derive a space whose random "
            "students all materialise, run in eval mode with the right output shape and "
            "MACs within the space's bounds, and run in training mode.", "", _table(rows)]
    write_section(Path(args.out), title="Spaces benchmark", key=f"spaces-{args.source}",
                  heading=f"{args.source} ({covered}/{len(rows)})", command=command, body=body)

if __name__ == "__main__":
    main()
