"""The model registry: `linear`, `mlp`, `cnn` (image-shaped inputs such as 8x8 digits), or a
user's `path/to/model.py:build(in_features, out_features)`. Imported only by job processes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

REGISTRY = ("linear", "mlp", "cnn")


class _Image(nn.Module):
    """Flat features -> (1, side, side) images."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 1, self.side, self.side)


def image_side(in_features: int) -> int | None:
    side = math.isqrt(in_features)
    return side if side * side == in_features and side >= 4 else None


def build(
    name: str, in_features: int, out_features: int, params: dict[str, Any] | None = None
) -> nn.Module:
    """A fresh model; `params` are the architecture's own settings (hidden sizes, dropout...)."""
    params = params or {}
    if name == "linear":
        return nn.Linear(in_features, out_features)
    if name == "mlp":
        layers: list[nn.Module] = []
        width = in_features
        for hidden in params.get("hidden", [64, 64]):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if params.get("dropout", 0.0):
                layers.append(nn.Dropout(params["dropout"]))
            width = hidden
        layers.append(nn.Linear(width, out_features))
        return nn.Sequential(*layers)
    if name == "cnn":
        side = image_side(in_features)
        if side is None:
            raise ValueError(
                f"model 'cnn' needs image-shaped input (a square number of features such as 64 for"
                f" 8x8); this data has {in_features} features"
            )
        channels = params.get("channels", [16, 32])
        pooled = side // 2
        return nn.Sequential(
            _Image(side),
            nn.Conv2d(1, channels[0], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(channels[1] * pooled * pooled, out_features),
        )
    if ":" in name:  # path/to/model.py:build or package.module:build
        from jobs.bundle import import_user_model

        model = import_user_model(name)(in_features, out_features)
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model {name!r}: build() returned {type(model).__name__}, not a torch.nn.Module"
            )
        return model
    raise ValueError(
        f"unknown model {name!r} (known: {', '.join(REGISTRY)}, or path/to/model.py:build)"
    )
