"""Target attention (DIN) and the Dice activation.

DIN (Zhou et al., KDD 2018): the weight of each behaviour is an MLP of
[key, query, key - query, key * query]; weights are NOT softmax-normalized, so the pooled
vector's norm carries how much of the history is relevant to the target.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.models.layers.mlp import MLP
from edgerec.models.layers.sequence import PackedHistory, bucket_rows, one_history_product


class Dice(nn.Module):
    """Data-adaptive activation from DIN: p(x) * x + (1 - p(x)) * alpha * x, p = sigmoid(BN(x))."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        if self.training:
            shape = x.shape
            p = torch.sigmoid(self.bn(x.reshape(-1, shape[-1]))).reshape(shape)  # batch statistics
        else:  # BN with its running statistics is elementwise on the last axis: no reshape (ONNX export)
            inv_std = torch.rsqrt(self.bn.running_var + self.bn.eps)  # (dim,)
            p = torch.sigmoid((x - self.bn.running_mean) * inv_std)  # (..., dim)
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
        packed = PackedHistory(mask)
        return self.forward_packed(query, packed.pack(keys), packed)

    def forward_packed(self, query: torch.Tensor, keys: torch.Tensor, packed: PackedHistory) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, d), keys (N, d) of the real behaviours -> pooled (B, d), weights (B, L).

        The unit runs on real behaviours only; padding keeps weight 0. Its first layer on
        [k, q, k-q, k*q] is factorized so the 4d-wide concat is never built:
        W [k; q; k-q; k*q] + b = [Wk + Wd, Wp] [k; k*q] + ((Wq - Wd) q + b), the last term once per row,
        as ONE addmm over the behaviours (under bf16 autocast it stays bf16: no fp32 (N, h) copy).
        """
        first, rest = self.unit.net[0], self.unit.net[1:]
        w_k, w_q, w_d, w_p = first.weight.split(keys.shape[-1], dim=1)  # each (h, d)
        q_term = torch.addmm(first.bias, query, (w_q - w_d).T)  # (B, h)
        # bf16: N' >= N rows (bucket_rows), unless a Dice BatchNorm in the unit would see the padding
        pair = bucket_rows(torch.cat([keys, keys * packed.rows(query)], dim=-1), self.unit)  # (N', 2d)
        hidden = torch.addmm(bucket_rows(packed.rows(q_term), self.unit), pair,
                             torch.cat([w_k + w_d, w_p], dim=1).T)  # (N', h)
        score = rest(hidden).squeeze(-1)[: keys.shape[0]]  # (N,)
        weights = packed.softmax(score) if self.normalize else score  # (N,)
        return packed.pool(weights, keys), packed.unpack(weights)  # (B, d), (B, L)

    def forward_one_history(self, query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving: C candidate queries (C, d) against ONE request's N real behaviours keys (N, d)
        -> pooled (C, d), weights (C, N); the same numbers as forward_packed over C tiled rows.

        The unit's first layer for behaviour n and candidate c is pre[n] + M[n] q_c, with
        pre = (W_k + W_d) k + b (N, h) and M[n] = W_p diag(k_n) + (W_q - W_d) (N, h, d), both free
        of the candidate: the (C, N, h) block is ONE matrix product (`one_history_product`, as
        COUPA's excitation). No packing, no tiled rows: the gathers and scatters that made the tiled
        graph slow under ONNX Runtime."""
        first, rest = self.unit.net[0], self.unit.net[1:]
        C, d = query.shape
        N, h = keys.shape[0], first.out_features
        w_k, w_q, w_d, w_p = first.weight.split(d, dim=1)  # each (h, d)
        pre = torch.addmm(first.bias, keys, (w_k + w_d).T)  # (N, h)
        m = keys[:, None, :] * w_p[None] + (w_q - w_d)[None]  # (N, h, d)
        hidden = one_history_product(query, m, pre)  # (C, N, h)
        score = rest(hidden.view(C * N, h)).view(C, N)  # 2-D layers (plain GEMMs under ONNX Runtime) -> (C, N)
        weights = torch.softmax(score, dim=-1) if self.normalize else score  # (C, N)
        return weights @ keys, weights  # (C, d), (C, N)


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
        packed = PackedHistory(mask)
        return self.forward_packed(query, packed.pack(seq), packed)

    def forward_packed(self, query: torch.Tensor, seq: torch.Tensor, packed: PackedHistory,
                       keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, d), seq (N, d) real behaviours, keep (N,) which of them may be attended.

        Exact rewrite that never projects the sequence:
          (q W_Q^T + b_q)·(x W_K^T + b_K) = ((q W_Q^T + b_q) W_K)·x + const  (const cancels in softmax)
          Σ_k w_k (x_k W_V^T + b_V) = (Σ_k w_k x_k) W_V^T + b_V Σ_k w_k
        """
        qk = self.w_q(query) @ self.w_k.weight  # (B, d)
        logits = (packed.rows(qk) * seq).sum(-1) * self.scale  # (N,)
        weights = packed.softmax(logits, keep)  # (N,)
        out = packed.pool(weights, seq) @ self.w_v.weight.T  # (B, d)
        if self.w_v.bias is not None:
            out = out + packed.pool(weights, torch.ones_like(seq[:, :1])) * self.w_v.bias
        return out, packed.unpack(weights)  # (B, d), (B, L)

    def forward_one_query(self, query: torch.Tensor, seq: torch.Tensor, gate: torch.Tensor,
                          keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving: ONE query (1, d) over C gated copies of one sequence, row c being gate[c] * seq:
        seq (N, d), gate (C, N), keep (C, N) or None -> (C, d), weights (C, N). forward_packed's
        numbers over C rows, with the gate applied to the logits and the pooling instead of to C
        copies of the sequence: (q W_K)·(g x) = g ((q W_K)·x) and Σ w (g x) = (w g) @ x."""
        if query.shape[0] != 1:
            raise ValueError(f"forward_one_query takes one query (1, d), got {tuple(query.shape)}")
        qk = self.w_q(query) @ self.w_k.weight  # (1, d)
        logits = gate * (seq @ qk[0]) * self.scale  # (C, N)
        if keep is not None:
            logits = logits.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # (C, N); zeros when nothing may be attended
        if keep is not None:  # a row with nothing kept is 0 in torch (NaN -> 0); ONNX Runtime may give 1/N
            weights = weights.masked_fill(~keep, 0.0)
        out = (weights * gate) @ seq @ self.w_v.weight.T  # (C, d)
        if self.w_v.bias is not None:
            out = out + weights.sum(-1, keepdim=True) * self.w_v.bias
        return out, weights
