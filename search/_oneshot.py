"""One-shot search (``method: oneshot``): the teacher trained once as a weight-sharing
supernet, then students scored as its slices, with no training of their own.

The supernet (:class:`protege.spaces.Supernet`) is trained with the sandwich rule
(:func:`protege.distill.train_supernet`) once per run folder, by one process: the
first to take ``supernet.lock``; other workers on the same storage wait for
``supernet.pt`` (workers of a one-shot study share the run folder). A resumed run
loads ``supernet.pt`` and does not train it again; with ``backend: ray`` the driver trains
it and ships the trained space to Ray's trials. The trials then score students cut
from the trained weights (BatchNorm recalibrated, validation accuracy), and the pick
is fine-tuned starting from its supernet weights.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protege import distill
from protege.estimators import count_macs
from protege.search._storage import _alive, worker_id
from protege.search._trial import StudentEvaluator, device_of
from protege.search.export import write_json
from protege.spaces import SearchSpace, Supernet

__all__ = ["SUPERNET_FILE", "ready_supernet"]

logger = logging.getLogger(__name__)

SUPERNET_FILE = "supernet.pt"
"""The trained supernet's weights and facts, in the run folder."""
_LOCK_FILE = "supernet.lock"
_MAC_SAMPLES = 16
"""Random students whose MACs estimate the MACs of the sandwich's random students."""


def ready_supernet(evaluator: StudentEvaluator, out: Path, *, train: bool,
                   poll: float = 2.0) -> tuple[SearchSpace, dict[str, Any]] | None:
    """The space whose students are cut from the trained supernet, and the training's facts.

    Loads ``out/supernet.pt``; without it, and with ``train``, trains the supernet first
    (or, when another process holds ``supernet.lock``, waits for it to finish; a lock
    whose process on this host is gone is taken over).

    Returns:
        ``(space, facts)``, or None when there is no trained supernet and ``train`` is
        False. ``facts`` holds the epochs, steps, seconds, sample-passes, the largest and
        smallest students' validation accuracy after each epoch and the MACs of the
        students trained (largest, smallest, mean of random ones).
    """
    path = out / SUPERNET_FILE
    supernet = Supernet(evaluator.space, ranks=evaluator.config.oneshot.ranks)
    waited = False
    while True:
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            supernet.load_state_dict(state["weights"])
            if waited or not train:
                logger.info("loaded the trained supernet from %s", path)
            return supernet.full_space.with_weights(supernet.net), state["facts"]
        if not train:
            return None
        if _claim(out / _LOCK_FILE):
            try:
                facts = _train(supernet, evaluator)
                partial = path.with_name(f".{path.name}.{os.getpid()}")
                torch.save({"weights": {k: v.detach().cpu()
                                        for k, v in supernet.state_dict().items()},
                            "facts": facts}, partial)
                os.replace(partial, path)
                write_json(out / "supernet.json", facts)
            finally:
                (out / _LOCK_FILE).unlink(missing_ok=True)
            supernet.cpu()
            return supernet.full_space.with_weights(supernet.net), facts
        if not waited:
            logger.info("another process trains the supernet (%s); waiting for %s",
                        (out / _LOCK_FILE).read_text().strip() or "?", path)
            waited = True
        time.sleep(poll)


def _claim(lock: Path) -> bool:
    """Take ``lock`` (created exclusively, naming this process); a lock of a process on
    this host that is gone is removed first. False when a live process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = lock.read_text().strip()
            except FileNotFoundError:
                continue  # released meanwhile
            if holder and _alive(holder) is False:
                logger.warning("the supernet's lock names %s, which is gone: training it here",
                               holder)
                lock.unlink(missing_ok=True)
                continue
            return False
        with os.fdopen(handle, "w") as file:
            file.write(worker_id())
        return True
    return False


def _train(supernet: Supernet, evaluator: StudentEvaluator) -> dict[str, Any]:
    config = evaluator.config
    settings = config.oneshot
    epochs = config.supernet_epochs
    logger.info("training the supernet: %d epochs, the largest, the smallest and %d random "
                "students per step", epochs, settings.students)
    device = device_of(evaluator.accelerator)
    result = distill.train_supernet(
        supernet.to(device), evaluator.outputs, evaluator.val, config=config.distill,
        epochs=epochs, students=settings.students, inplace=settings.inplace, seed=config.seed,
        calibration_samples=settings.calibration_samples, accelerator=evaluator.accelerator)
    supernet.cpu()
    macs = _student_macs(supernet, evaluator.example_input, seed=config.seed)
    per_step = (macs["largest"] + macs["smallest"] + settings.students * macs["random_mean"])
    return {"epochs": epochs, "students_per_step": result.students_per_step,
            "inplace": settings.inplace, "ranks": settings.ranks,
            "rank_choices": len(supernet.full_space.ranks), "steps": result.steps,
            "seconds": result.seconds,
            "samples": result.samples, "sample_passes": result.sample_passes,
            "mac_passes": int(round(per_step * result.sample_passes / result.students_per_step)),
            "macs": macs, "history": [dict(h) for h in result.history]}


def _student_macs(supernet: Supernet, example_input: torch.Tensor, *,
                  seed: int) -> dict[str, float]:
    """MACs per sample of the largest, the smallest and (mean of ``_MAC_SAMPLES``) random
    students of the supernet's training: what a sandwich step's passes cost."""
    def macs(arch: dict[str, Any]) -> int:
        return count_macs(supernet.student(arch), example_input)[0]

    rng = np.random.default_rng(seed)
    random = [macs(supernet.sample(rng)) for _ in range(_MAC_SAMPLES)]
    return {"largest": macs(supernet.largest()), "smallest": macs(supernet.smallest()),
            "random_mean": float(np.mean(random))}

