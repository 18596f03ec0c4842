"""A Hugging Face encoder as the plain module ``edgewise.converters.distill`` trains and compares."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class HfEmbedder(torch.nn.Module):
    """Positional tensors in (in ``input_names`` order), one named output out.

    sentence-transformers models take one features dict and return a dict (``sentence_embedding``);
    transformers models take keyword tensors and return a ModelOutput (``last_hidden_state``).
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output: str,
                 sentence_transformer: bool) -> None:
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)
        self.output = output
        self.sentence_transformer = sentence_transformer

    def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, arrays, strict=True))
        out = self.model(features) if self.sentence_transformer else self.model(**features)
        return out[self.output]
