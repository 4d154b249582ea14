"""Target attention (DIN) and the Dice activation.

DIN (Zhou et al., KDD 2018): the weight of each behaviour is an MLP of
[key, query, key - query, key * query]; weights are NOT softmax-normalized, so the pooled
vector's norm carries how much of the history is relevant to the target.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.models.layers.mlp import MLP


class Dice(nn.Module):
    """Data-adaptive activation from DIN: p(x) * x + (1 - p(x)) * alpha * x, p = sigmoid(BN(x))."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, dim)
        p = torch.sigmoid(self.bn(flat)).reshape(shape)
        return x * (self.alpha + (1 - self.alpha) * p)  # = p*x + (1-p)*alpha*x, fewer passes


class TargetAttention(nn.Module):
    """DIN activation unit + weighted sum pooling, with padding masked out."""

    def __init__(self, dim: int, hidden_units: tuple[int, ...] = (80, 40), activation: str = "dice",
                 normalize: bool = False):
        super().__init__()
        self.unit = MLP(4 * dim, hidden_units, activation=activation, output_dim=1)
        self.normalize = normalize  # softmax over the history instead of raw DIN weights

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, d), keys (B, L, d), mask (B, L) -> pooled (B, d), weights (B, L)."""
        # The unit runs on real behaviours only (history is often mostly padding at large L):
        # gather valid (row, step) pairs, score them, scatter back; padding keeps score 0.
        b_idx, l_idx = mask.nonzero(as_tuple=True)  # (N,), (N,)
        k = keys[b_idx, l_idx]  # (N, d)
        # First layer on [k, q, k-q, k*q] without building the 4d-wide concat:
        # W [k; q; k-q; k*q] = (Wk + Wd) k + (Wq - Wd) q + Wp (k*q); the q term is computed per row.
        first, rest = self.unit.net[0], self.unit.net[1:]
        w_k, w_q, w_d, w_p = first.weight.split(keys.shape[-1], dim=1)  # each (h, d)
        q_term = query @ (w_q - w_d).T + first.bias  # (B, h)
        hidden = k @ (w_k + w_d).T + (k * query[b_idx]) @ w_p.T + q_term[b_idx]  # (N, h)
        score = keys.new_zeros(mask.shape).index_put((b_idx, l_idx), rest(hidden).squeeze(-1))  # (B, L)
        if self.normalize:
            score = score.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(score, dim=-1).nan_to_num(0.0)  # all-padding rows -> 0
        else:
            weights = score * mask.to(score.dtype)  # (B, L)
        pooled = torch.einsum("bl,bld->bd", weights, keys)  # (B, d)
        return pooled, weights


class QueryAttention(nn.Module):
    """Single-head scaled dot-product attention of one query over a sequence, with W_Q, W_K, W_V.

    softmax((q W_Q)(X W_K)^T / sqrt(d)) (X W_V) over the positions where mask is True; a row with
    no valid position returns zeros (not NaN).
    """

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        self.w_q = nn.Linear(dim, dim, bias=bias)
        self.w_k = nn.Linear(dim, dim, bias=bias)
        self.w_v = nn.Linear(dim, dim, bias=bias)
        self.scale = dim ** -0.5

    def forward(self, query: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, d), seq (B, L, d), mask (B, L) -> (B, d), weights (B, L)."""
        # Exact rewrite that never projects the (B, L, d) sequence:
        #   (q W_Q^T + b_q)·(x W_K^T + b_K) = ((q W_Q^T + b_q) W_K)·x + const  (const cancels in softmax)
        #   Σ_k w_k (x_k W_V^T + b_V) = (Σ_k w_k x_k) W_V^T + b_V Σ_k w_k
        qk = self.w_q(query) @ self.w_k.weight  # (B, d)
        logits = torch.einsum("bd,bld->bl", qk, seq) * self.scale  # (B, L)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # all-masked rows -> 0
        pooled = torch.einsum("bl,bld->bd", weights, seq)  # (B, d)
        out = pooled @ self.w_v.weight.T  # (B, d)
        if self.w_v.bias is not None:
            out = out + weights.sum(-1, keepdim=True) * self.w_v.bias
        return out, weights  # (B, d), (B, L)
