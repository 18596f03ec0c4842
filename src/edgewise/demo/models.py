"""Small real models for the demo, the tests and the benchmarks (trained here, on CPU, in seconds)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A LeNet-style classifier for 28x28 (MNIST) or 8x8 (scikit-learn digits) grey images."""

    def __init__(self, side: int = 28, channels: tuple[int, int] = (16, 32), hidden: int = 128) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = c2 * (side // 4) * (side // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))


class DigitsMLP(nn.Module):
    """A multi-layer perceptron over flattened pixels.

    The demo's and the benchmark's classifier: measured here, its INT8 version runs 1.6-2x faster
    than FP32 at batch 32, while a small CNN's INT8 (static QDQ) ran *slower* than FP32 because
    quantize/dequantize overhead outweighs the tiny convolutions (the report flags such variants).
    """

    def __init__(self, side: int = 28, hidden: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(side * side, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


def build() -> DigitsMLP:
    """Factory named by the demo recipe (weights come from the recipe's state_dict)."""
    return DigitsMLP()


def build_cnn() -> DigitsCNN:
    return DigitsCNN()


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 3, batch: int = 64,
                     lr: float = 2e-3, seed: int = 0, log=print) -> nn.Module:
    """Plain Adam training, seeded and deterministic on CPU."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        log(f"      epoch {epoch + 1}/{epochs}: loss {total / len(xt):.4f}")
    return model.eval()
