"""Knowledge distillation: a teacher model trains a smaller student, on unlabeled data if need be.

Quantization shrinks a model 2-4x; a distilled student is 5-20x cheaper at a small accuracy
cost, and can be quantized on top. ::

    from edgewise.converters.distill import DistillConfig, distill, student_preset

    student = student_preset(teacher, width=0.25, depth=0.5)
    result = distill(teacher, student, transfer_x, config=DistillConfig(checkpoint=Path("run.ckpt")),
                     progress=print)
    result.student, result.heldout_agreement, result.teacher_params / result.student_params

The teacher may be a torch module or a bundle/.onnx file (run by ``edgewise.device_runtime``).
Bad input (mismatched outputs, empty or inconsistent data) raises ``ConversionError`` /
``DataError`` before the first epoch.
"""

from edgewise.converters._distill._config import DistillConfig, DistillResult
from edgewise.converters._distill._presets import student_preset
from edgewise.converters._distill._train import distill

__all__ = ["DistillConfig", "DistillResult", "distill", "student_preset"]
