"""Internals of ``edgewise.converters.distill``; import from there, these modules may change freely.

    _config   DistillConfig / DistillResult (plain data)
    _data     transfer data: normalise, validate, split, teacher outputs (computed once)
    _presets  student_preset: a smaller student derived from the teacher's structure
    _train    the training loop: losses, held-out scoring, early stopping, checkpoints
"""
