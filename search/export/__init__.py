"""What a run hands over: the student's files and its deployable forms.

``arch.json`` + ``student.pt`` (:func:`save_student`, :func:`load_student`), ONNX and
TorchScript checked against PyTorch (:func:`export_onnx`, :func:`export_torchscript`),
and onnxruntime's static int8 quantisation, measured before and after
(:func:`quantize_int8`).
"""

from protege.search.export._onnx import (
    ExportCheck,
    Int8Result,
    ModelFigures,
    export_onnx,
    export_pick_onnx,
    export_torchscript,
    quantize_int8,
)
from protege.search.export._student import load_student, save_student, write_json

__all__ = [
    "ExportCheck",
    "Int8Result",
    "ModelFigures",
    "export_onnx",
    "export_pick_onnx",
    "export_torchscript",
    "load_student",
    "quantize_int8",
    "save_student",
    "write_json",
]
