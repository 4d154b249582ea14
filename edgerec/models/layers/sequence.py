"""Pooling over padded behaviour sequences."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the sequence axis where mask is True; zeros for empty sequences.

    x: (B, L, d), mask: (B, L) bool -> (B, d)
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
    total = (x * m).sum(dim=1)  # (B, d)
    count = m.sum(dim=1).clamp_min(1.0)  # (B, 1)
    return total / count
