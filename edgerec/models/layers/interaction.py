"""How a sequence model's user vector meets the target item in a CTR head."""

from __future__ import annotations

import torch


def match_features(user: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[u ; e ; u * e]: (B, d), (B, d) -> (B, 3d). The product lets a small MLP read the match."""
    return torch.cat([user, target, user * target], dim=-1)


def head_input(user: torch.Tensor, target: torch.Tensor, user_features: torch.Tensor | None) -> torch.Tensor:
    """match_features plus the user side features when the data has them: (B, 3d [+ U])."""
    x = match_features(user, target)
    return x if user_features is None else torch.cat([x, user_features], dim=-1)


def last_valid(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Output at the most recent behaviour (the last slot, sequences are left-padded); 0 if none.

    seq (B, L, d), mask (B, L) -> (B, d)
    """
    return seq[:, -1] * mask[:, -1:].to(seq.dtype)
