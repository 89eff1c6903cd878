"""Knowledge distillation: losses, the teacher-output cache and brief trial training."""

from protege.distill._cache import TeacherOutputs, as_tensors, cache_teacher_outputs, fingerprint
from protege.distill._config import DistillConfig
from protege.distill._losses import hinton_loss
from protege.distill._module import DistillModule
from protege.distill._trainer import TrainResult, evaluate, train_student

__all__ = [
    "DistillConfig",
    "DistillModule",
    "TeacherOutputs",
    "TrainResult",
    "as_tensors",
    "cache_teacher_outputs",
    "evaluate",
    "fingerprint",
    "hinton_loss",
    "train_student",
]
