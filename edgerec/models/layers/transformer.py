"""A small self-attention block for left-padded behaviour sequences (SASRec / TiSASRec style).

Why not nn.TransformerEncoderLayer: with left padding and a causal mask, padded query rows have
no visible key, -inf masking turns them into NaN, and NaN values leak into real rows through
0 * NaN. Here masked logits use a large finite negative, and padded outputs are zeroed after every
block (as SASRec's `seqs *= timeline_mask`), so nothing non-finite can appear.
"""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e9


def causal_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) valid-mask -> (B, L, L) bool: query i may see key j iff j <= i and j is valid."""
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()  # (L, L)
    return causal.unsqueeze(0) & mask.unsqueeze(1)  # (B, L, L)


class SelfAttentionBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)); x + FFN(LN(x)); padded rows zeroed.

    `attention_bias` hooks let TiSASRec add relative-interval terms: a callable
    (q (B, h, L, dh)) -> (logit bias (B, h, L, L), value fn(weights (B, h, L, L)) -> (B, h, L, dh)).
    """

    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.2, ffn_mult: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.dh = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_mult * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, visible: torch.Tensor, relative=None) -> torch.Tensor:
        """x (B, L, d), mask (B, L), visible (B, L, L) -> (B, L, d)."""
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)  # each (B, h, L, dh)
        logits = q @ k.transpose(-1, -2)  # (B, h, L, L)
        extra_value = None
        if relative is not None:
            bias, extra_value = relative(q)
            logits = logits + bias
        logits = (logits * self.dh ** -0.5).masked_fill(~visible.unsqueeze(1), NEG)
        w = self.drop(torch.softmax(logits, dim=-1))  # (B, h, L, L)
        ctx = w @ v  # (B, h, L, dh)
        if extra_value is not None:
            ctx = ctx + extra_value(w)
        x = x + self.drop(self.out(ctx.transpose(1, 2).reshape(B, L, d)))
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x * mask.unsqueeze(-1)  # padded rows stay exactly zero
