"""Knowledge distillation: losses, the teacher-output cache, brief trial training and the
sandwich training of a weight-sharing supernet."""

from protege.distill._cache import TeacherOutputs, as_tensors, cache_teacher_outputs, fingerprint
from protege.distill._calibrate import recalibrate_batchnorm
from protege.distill._config import DEFAULT_EPOCHS, INIT_TEMPERATURE, TEACHER_MODES, DistillConfig
from protege.distill._hints import HintAdapters, select_hint_layers
from protege.distill._losses import (
    LOSSES,
    LogitLoss,
    ce_loss,
    dkd_loss,
    hint_loss,
    hinton_loss,
    register_loss,
)
from protege.distill._module import Augment, DistillModule, EpochReport
from protege.distill._sandwich import (
    SandwichModule,
    SupernetResult,
    WeightSharing,
    calibration_rows,
    train_supernet,
)
from protege.distill._trainer import (
    NoSingleBatches,
    TrainResult,
    batch_loader,
    batch_starts,
    evaluate,
    train_student,
)

__all__ = [
    "DEFAULT_EPOCHS",
    "INIT_TEMPERATURE",
    "LOSSES",
    "TEACHER_MODES",
    "Augment",
    "DistillConfig",
    "DistillModule",
    "EpochReport",
    "HintAdapters",
    "LogitLoss",
    "NoSingleBatches",
    "SandwichModule",
    "SupernetResult",
    "TeacherOutputs",
    "TrainResult",
    "WeightSharing",
    "as_tensors",
    "batch_loader",
    "batch_starts",
    "cache_teacher_outputs",
    "calibration_rows",
    "ce_loss",
    "dkd_loss",
    "evaluate",
    "fingerprint",
    "hint_loss",
    "recalibrate_batchnorm",
    "hinton_loss",
    "register_loss",
    "select_hint_layers",
    "train_student",
    "train_supernet",
]
