"""Hugging Face Llama-family checkpoints -> GGUF, llama.cpp quantization, and its quality gate.

Private: the public names are re-exported by ``edgewise.converters.gguf``.
"""
