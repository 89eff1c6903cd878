"""The data flow's first stage: check the teacher and its data, profile the teacher.

Each failure is a ``ValueError`` (``TypeError`` for a wrong kind of object) whose
message names the problem and what to do about it, so the CLI prints one line and
a run folder is never left half-written by input that could not work. Then the
teacher's profile (MACs, parameters, accuracy, classes) becomes the reference of
every limit and of the hypervolume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import optuna
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import describe, eval_mode, failing_module
from protege.distill import evaluate
from protege.estimators import LatencyPredictor, TorchLatencyPredictor, count_macs
from protege.search import _attrs as attrs
from protege.search._config import Config
from protege.search._trial import Limits, student_costs
from protege.spaces import SearchSpace

__all__ = ["TeacherProfile", "check_data", "check_feasible", "check_study", "check_teacher",
           "profile_teacher", "space_key"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherProfile:
    """The teacher's cost and quality, the reference of every limit.

    Attributes:
        macs: MACs per sample.
        params: Parameter count.
        val_accuracy: Accuracy on the validation data (a fraction).
        test_accuracy: Accuracy on the test data, when given.
        latency_ms: Latency (ms) on this machine with ``latency:``'s runtime, precision,
            batch and threads; where the machine was too noisy to measure it (logged),
            the predictor's figure when latency is an objective or a limit, else None.
        classes: Number of classes (the width of its logits).
        latency_predicted_ms: The latency predictor's figure for the teacher's own
            architecture, when latency is an objective or a limit, else None. Students'
            latencies in a search are predicted: hypervolumes and the gain rule divide them
            by this, the same predictor's figure, so a bias of the predictor cancels
            instead of shifting every ratio (measured against predicted would).
    """

    macs: int
    params: int
    val_accuracy: float
    test_accuracy: float | None = None
    latency_ms: float | None = None
    classes: int | None = None
    latency_predicted_ms: float | None = None

    @property
    def chance(self) -> float:
        """Accuracy of guessing: the reference point's accuracy for hypervolumes."""
        return 1.0 / self.classes if self.classes else 0.0

    def costs(self) -> dict[str, float]:
        """The teacher's value of each cost objective, the scale of the students' costs
        (latency: the predictor's figure where there is one, as the students' are; else
        the measured one; absent when neither is known)."""
        costs = {"macs": float(self.macs), "params": float(self.params)}
        latency = (self.latency_predicted_ms if self.latency_predicted_ms is not None
                   else self.latency_ms)
        if latency is not None:
            costs["latency"] = float(latency)
        return costs


def profile_teacher(teacher: nn.Module, example_input: torch.Tensor, *, val: TensorDataset,
                    test: TensorDataset | None, classes: int) -> TeacherProfile:
    """The teacher's MACs, parameters and accuracies (latency is measured where needed)."""
    macs, params = count_macs(teacher, example_input)
    return TeacherProfile(
        macs=macs, params=params, val_accuracy=evaluate(teacher, val),
        test_accuracy=evaluate(teacher, test) if test is not None else None, classes=classes,
    )


def check_teacher(teacher: Any, example_input: Any) -> int:
    """The teacher's number of classes; it must map ``example_input`` to finite logits.

    Raises:
        TypeError: If ``teacher`` is not a module or ``example_input`` not a tensor.
        ValueError: If the forward pass fails (the message names the module and the
            operation's error) or does not return (batch, classes) finite logits.
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise TypeError("example_input must be a batched tensor, e.g. shape (1, C, H, W), got "
                        f"{type(example_input).__name__}")
    device = next(teacher.parameters(), torch.empty(0)).device
    example = example_input.to(device)
    try:
        with torch.no_grad(), eval_mode(teacher):
            output = teacher(example)
    except Exception:
        where, exc = failing_module(teacher, example)
        kind = f" ({type(teacher.get_submodule(where)).__name__})" if where else ""
        raise ValueError(
            f"the teacher fails on example_input of shape {tuple(example_input.shape)} in module "
            f"{where or '<top level>'!r}{kind}: {describe(exc)}; "
            "pass an example_input the teacher accepts (a batch of training inputs)") from exc
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"the teacher must return a tensor of logits (batch, classes), got "
                         f"{type(output).__name__}; wrap it so forward returns the logits only")
    if output.dim() != 2 or output.shape[0] != example_input.shape[0] or output.shape[1] < 2:
        raise ValueError(f"the teacher must return logits of shape (batch, classes), got "
                         f"{tuple(output.shape)} for a batch of {example_input.shape[0]}; "
                         "protege distils classifiers: flatten or pool the output")
    if not bool(torch.isfinite(output).all()):
        raise ValueError("the teacher's outputs on example_input are not finite (NaN or inf): "
                         "check its weights (a diverged or uninitialised teacher?)")
    return int(output.shape[1])


def check_data(classes: int, example_input: torch.Tensor, **datasets: TensorDataset | None,
               ) -> None:
    """Labels are class indices of the teacher's outputs; inputs fit ``example_input``.

    Raises:
        ValueError: Naming the dataset (``train``, ``val``, ``test``) and the problem.
    """
    names = {"train": "training data", "val": "validation data", "test": "test data"}
    for key, data in datasets.items():
        if data is None:
            continue
        what = names.get(key, key)
        inputs, labels = data.tensors[0], data.tensors[1]
        if key == "train" and len(inputs) < 2:
            raise ValueError(f"the {what} has {len(inputs)} sample: distillation needs at least "
                             "2 (BatchNorm cannot train on one); pass the whole training set")
        if inputs.is_floating_point() != example_input.is_floating_point():
            raise ValueError(f"the {what} has inputs of dtype {inputs.dtype} but example_input "
                             f"has {example_input.dtype}: pass an example_input taken from the "
                             "data (token ids stay integers)")
        if tuple(inputs.shape[1:]) != tuple(example_input.shape[1:]):
            raise ValueError(f"the {what} has inputs of shape {tuple(inputs.shape[1:])} but "
                             f"example_input has {tuple(example_input.shape[1:])} per sample: "
                             "pass an example_input taken from the data")
        if labels.dim() != 1:
            raise ValueError(f"the {what} must have one class index per sample (shape (N,)), "
                             f"got labels of shape {tuple(labels.shape)}; one-hot labels? "
                             "use labels.argmax(1)")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise ValueError(f"labels of the {what} range over [{low}, {high}] but the teacher "
                             f"has {classes} outputs: labels must be class indices 0..{classes - 1}"
                             " (is this the teacher of this data?)")


def _ratio(value: float, reference: float) -> str:
    if not reference:
        return f"{value:.4g}"
    return f"{value:.4g} ({value / reference:.3g} of the teacher's)"


def check_feasible(space: SearchSpace, example_input: torch.Tensor, limits: Limits,
                   latency: LatencyPredictor | TorchLatencyPredictor | None, *,
                   teacher_macs: int, teacher_params: int) -> None:
    """Even the smallest student must meet the hard limits; else say what it costs.

    Raises:
        ValueError: Naming the broken limit and the smallest achievable costs.
    """
    arch = space.repair(space.smallest())
    costs = student_costs(space.materialize(arch), example_input)
    if latency is not None:  # from the architecture, as every trial's: no export
        costs["latency"] = float(latency.predict(arch))
    reason = limits.reason(costs)
    if reason is None:
        return
    reachable = [f"{_ratio(costs['macs'], teacher_macs)} MACs",
                 f"{_ratio(costs['params'], teacher_params)} params"]
    if "latency" in costs:
        reachable.append(f"{costs['latency']:.4g} ms predicted latency")
    raise ValueError(f"no student can meet the limits: even the smallest student in the space "
                     f"breaks them ({reason}); the smallest achievable is "
                     f"{', '.join(reachable)}: loosen the limit to at least that, or widen the "
                     "space (level, space.options)")


def space_key(space: SearchSpace, objectives: Sequence[str]) -> str:
    """A hash of the choices and objectives: equal keys mean trials mean the same thing."""
    payload = {"choices": {name: list(options) for name, options in space.choices.items()},
               "level": space.level, "objectives": list(objectives)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def check_study(study: optuna.Study, *, key: str, config: Config, where: str) -> None:
    """Refuse to resume (or join) a study made for another space or other objectives.

    The first process records ``key``; later ones must match it.

    Raises:
        ValueError: Saying what differs and what to do.
    """
    fix = ("start a new study: another --out (or storage), or delete the old one to start over")
    if len(study.directions) != len(config.objectives):
        raise ValueError(f"the study in {where} has {len(study.directions)} objectives but the "
                         f"config lists {len(config.objectives)} ({', '.join(config.objectives)}); "
                         + fix)
    recorded = study.user_attrs.get(attrs.SPACE)
    if recorded is None:
        study.set_user_attr(attrs.SPACE, key)
        recorded = study.user_attrs.get(attrs.SPACE, key)  # another worker may have won
    if recorded != key:
        raise ValueError(f"the study in {where} was made for another search space (the teacher, "
                         "level, space options or objectives changed), so its trials do not "
                         "apply; " + fix)
