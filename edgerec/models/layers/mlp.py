"""Multi-layer perceptron block used by every model's head."""

from __future__ import annotations

import torch
from torch import nn


def make_activation(name: str, dim: int) -> nn.Module:
    from edgerec.models.layers.attention import Dice  # local import: Dice lives with attention

    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return PReLU(dim)
    if name == "dice":
        return Dice(dim)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; use relu, prelu, dice or sigmoid")


class PReLU(nn.PReLU):
    """PReLU with one slope per feature of the LAST axis (torch's acts on axis 1), for (B, L, d) input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class MLP(nn.Module):
    """Linear -> activation -> dropout for each hidden size, then an optional output layer."""

    def __init__(self, in_dim: int, hidden_units: tuple[int, ...] | list[int], activation: str = "relu",
                 dropout: float = 0.0, output_dim: int | None = 1):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden_units:
            layers += [nn.Linear(d, h), make_activation(activation, h)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if output_dim is not None:
            layers.append(nn.Linear(d, output_dim))
            d = output_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in_dim) -> (..., out_dim)
        return self.net(x)
