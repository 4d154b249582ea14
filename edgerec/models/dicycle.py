"""DiCycle: Denoising Time Cycle Modeling for Recommendation (Xie et al., SIGIR 2022).
Spec: shared/specs/dicycle.md; every open choice is in docs/design.md.

    q_k = Λ(t_k) + Φ(t - t_k)          time embedding of behaviour k (ATC + RTC)
    q_a = Λ(t) + Φ(0)                  time embedding of the target
    r   = DIN-attention(e_a + q_a, {e_k + q_k})            user interest module
    f_k = cos(e_a, e_k) if >= δ else 0                     gated filter (item embeddings only)
    h   = softmax((q_a W_Q)(f q W_K)^T / sqrt(d)) (f q W_V) time-cycle attention, query = target time
    p   = sigmoid(MLP([r ; h]))

Head options (off by default, not in the paper): feed_target adds e_a, feed_target_time adds q_a to
[r ; h], so the MLP can learn "this kind of item at this hour" without going through the history.

Ablation flags: use_absolute_time, use_relative_time, use_time_cycle, gate_threshold = -1 (no gate:
cos >= -1 always holds), surrounding_range = 0 (no neighbouring slots).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from edgerec.features.spec import FeatureSpec
from edgerec.features.time import SECONDS_PER_HOUR
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import (MLP, AbsoluteTimeEncoding, FeatureEmbedding, FourierTimeEncoding,
                                   QueryAttention, TargetAttention)
from edgerec.models.layers.sequence import PackedHistory


@register_model
class DiCycle(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32,
                 granularities: tuple[str, ...] = ("hour", "weekday", "month"), surrounding_range: int = 2,
                 kernel_size: int = 3, use_absolute_time: bool = True, use_relative_time: bool = True,
                 use_time_cycle: bool = True, gate_threshold: float = 0.0, mask_filtered: bool = False,
                 attention_units: tuple[int, ...] = (80, 40), attention_activation: str = "prelu",
                 mlp_units: tuple[int, ...] = (200, 80), activation: str = "relu", dropout: float = 0.0,
                 feed_target: bool = False, feed_target_time: bool = False, use_user_id: bool = False):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim, use_user_id=use_user_id)
        d = self.emb.item_dim  # time embeddings are added to item embeddings, so they share its size
        self.absolute = AbsoluteTimeEncoding(d, granularities, surrounding_range, kernel_size) if use_absolute_time else None
        self.relative = FourierTimeEncoding(d) if use_relative_time else None
        self.interest = TargetAttention(d, attention_units, attention_activation)
        self.time_cycle = QueryAttention(d) if use_time_cycle else None
        self.gate_threshold = gate_threshold
        self.mask_filtered = mask_filtered
        self.feed_target, self.feed_target_time = feed_target, feed_target_time
        in_dim = d * (1 + int(use_time_cycle) + int(feed_target) + int(feed_target_time)) + self.emb.user_dim
        self.mlp = MLP(in_dim, mlp_units, activation=activation, dropout=dropout)

    def time_embeddings(self, batch: dict[str, torch.Tensor], packed: PackedHistory) -> tuple[torch.Tensor, torch.Tensor]:
        """q_a (B, d) for the target and q_k (N, d) for the real behaviours of the history."""
        ts = batch["ts"]  # (B,)
        d = self.emb.item_dim
        q_a = ts.new_zeros(ts.shape[0], d, dtype=torch.float32)
        q_k = q_a.new_zeros(packed.b_idx.shape[0], d)  # .shape, not len(): an ONNX trace keeps it dynamic
        if self.absolute is not None:
            table = self.absolute.table()  # (Σ P_g, d): computed once per step, then gathered
            q_a = q_a + self.absolute(ts, table)  # (B, d)
            slots = packed.pack(batch["hist_slots"]) if "hist_slots" in batch else None
            q_k = q_k + (self.absolute(table=table, packed=slots) if slots is not None
                         else self.absolute(packed.pack(batch["hist_ts"]), table))  # (N, d)
        if self.relative is not None:
            gap_h = (packed.rows(ts) - packed.pack(batch["hist_ts"])).clamp_min(0).float() / SECONDS_PER_HOUR  # (N,)
            q_k = q_k + self.relative(gap_h)  # (N, d)
            q_a = q_a + self.relative(q_a.new_zeros(ts.shape[0]))  # (B, d): Φ(0)
        return q_a, q_k

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        packed = PackedHistory(batch["hist_mask"])  # every per-behaviour term runs on real behaviours only
        e_a = self.emb.target(batch)  # (B, d)
        e_k = self.emb.history(batch, packed)  # (N, d)
        q_a, q_k = self.time_embeddings(batch, packed)  # (B, d), (N, d)
        r, interest_w = self.interest.forward_packed(e_a + q_a, e_k + q_k, packed)  # (B, d), (B, L)
        parts, extra = [r], {"interest_attention": interest_w}
        if self.time_cycle is not None:
            cos = F.cosine_similarity(e_k, packed.rows(e_a), dim=-1, eps=1e-8)  # (N,)
            keep = cos >= self.gate_threshold  # (N,)
            gate = cos * keep  # soft weight, hard cut-off
            attend = keep if self.mask_filtered else None  # literal reading: filtered keys stay (as zeros)
            h, cycle_w = self.time_cycle.forward_packed(q_a, gate.unsqueeze(-1) * q_k, packed, attend)  # (B, d), (B, L)
            parts.append(h)
            extra.update(gate=packed.unpack(gate), cycle_attention=cycle_w,
                         filtered_fraction=1 - keep.float().mean() if len(keep) else torch.tensor(0.0))
        if self.feed_target:
            parts.append(e_a)
        if self.feed_target_time:  # lets the head form item x time-of-request interactions directly
            parts.append(q_a)
        user = self.emb.user(batch)
        if user is not None:
            parts.append(user)
        logit = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
        return self.output(logit, **extra)

    # ---- serving: one request's history once, then its C candidates (as COUPA's and DIN's)
    @torch.no_grad()
    def serve_user(self, request: dict[str, torch.Tensor]) -> dict:
        """Everything candidate-free for ONE request (a batch of 1): the behaviours' item and time
        embeddings e_k, q_k (N, d), the target time's q_a (1, d), the user's features."""
        if self.training:
            raise RuntimeError("serve_user needs the model in eval mode (model.eval())")
        packed = PackedHistory(request["hist_mask"])
        q_a, q_k = self.time_embeddings(request, packed)  # (1, d), (N, d)
        return {"e_k": self.emb.history(request, packed), "q_a": q_a, "q_k": q_k, "user": self.emb.user(request)}

    @torch.no_grad()
    def candidate_logits(self, cache: dict, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """Logits (C,) of candidate item indices `items` (C,) for the cached request: the forward's
        numbers, each module against the one history instead of C tiled copies of it."""
        C = items.shape[0]
        e_a = self.emb.candidates(items, item_features)  # (C, d)
        q_a, q_k, e_k = cache["q_a"], cache["q_k"], cache["e_k"]
        r, _ = self.interest.forward_one_history(e_a + q_a, e_k + q_k)  # (C, d)
        parts = [r]
        if self.time_cycle is not None:
            cos = F.cosine_similarity(e_k[None], e_a[:, None], dim=-1, eps=1e-8)  # (C, N)
            keep = cos >= self.gate_threshold  # (C, N)
            h, _ = self.time_cycle.forward_one_query(q_a, q_k, cos * keep, keep if self.mask_filtered else None)
            parts.append(h)  # (C, d)
        if self.feed_target:
            parts.append(e_a)
        if self.feed_target_time:
            parts.append(q_a.expand(C, -1))
        if cache["user"] is not None:
            parts.append(cache["user"].expand(C, -1))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (C,)


# The paper's Table 3, as config overrides of a DiCycle experiment (bench/ctr.py --ablations).
ABLATIONS: dict[str, list[str]] = {
    "w/o ATC": ["model_args.use_absolute_time=false"],  # no absolute time cycles Λ
    "w/o RTC": ["model_args.use_relative_time=false"],  # no relative time cycles Φ
    "w/o TCM": ["model_args.use_time_cycle=false"],  # no gated filter + time-cycle attention
    "w/o gate": ["model_args.gate_threshold=-1"],  # δ = -1: every behaviour passes the filter
    "J=0": ["model_args.surrounding_range=0"],  # slot embeddings without neighbouring slots
}

# Not in the paper: head options measured next to the ablations (docs/results.md).
EXTENSIONS: dict[str, list[str]] = {
    "+target head": ["model_args.feed_target=true", "model_args.feed_target_time=true"],  # [r ; h ; e_a ; q_a]
    # o2o-sim spans 28 days from 5 January: "month" is January except on 1 February, the last day,
    # where most test targets are; hour and weekday alone carry the planted cycles
    "-month": ["model_args.granularities=[hour,weekday]"],
    "+target head -month": ["model_args.feed_target=true", "model_args.feed_target_time=true",
                               "model_args.granularities=[hour,weekday]"],
    # the Fourier frequencies ω at 1/100 of the learning rate, or frozen at their 24 h / 168 h grid:
    # at the full rate Adam moves them by ~lr per step and the learned periods wander (docs/results.md)
    "omega lr/100": ["train.lr_scale.*omega=0.01"],
    "omega frozen": ["train.lr_scale.*omega=0"],
}
