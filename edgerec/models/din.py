"""DIN: Deep Interest Network (Zhou et al., KDD 2018).

The history is pooled by target attention: each behaviour is weighted by an MLP of
[behaviour, target, behaviour - target, behaviour * target], so the user representation depends
on the candidate. Head input: [target ; attention-pooled history ; target * pooled ; user], as in
FuxiCTR's DIN (the product term is our addition: it lets a small MLP read target-history match
directly; switch it off with `use_product=False`).
"""

from __future__ import annotations

import torch

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding, TargetAttention
from edgerec.models.layers.sequence import PackedHistory


@register_model
class DIN(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, attention_units: tuple[int, ...] = (80, 40),
                 attention_activation: str = "prelu", attention_softmax: bool = False,
                 mlp_units: tuple[int, ...] = (200, 80), activation: str = "dice", dropout: float = 0.0,
                 use_product: bool = True, use_user_id: bool = False):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim, use_user_id=use_user_id)
        d = self.emb.item_dim
        self.attention = TargetAttention(d, attention_units, attention_activation, normalize=attention_softmax)
        self.use_product = use_product
        in_dim = (3 if use_product else 2) * d + self.emb.user_dim
        self.mlp = MLP(in_dim, mlp_units, activation=activation, dropout=dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        packed = PackedHistory(batch["hist_mask"])  # embed and score the real behaviours only
        target = self.emb.target(batch)  # (B, D)
        hist = self.emb.history(batch, packed)  # (N, D)
        pooled, weights = self.attention.forward_packed(target, hist, packed)  # (B, D), (B, L)
        parts = [target, pooled]
        if self.use_product:
            parts.append(target * pooled)  # (B, D)
        user = self.emb.user(batch)
        if user is not None:
            parts.append(user)
        logit = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
        return self.output(logit, attention=weights)

    # ---- serving: one request's history once, then its C candidates (as COUPA's serve_user)
    @torch.no_grad()
    def serve_user(self, request: dict[str, torch.Tensor]) -> dict:
        """Everything candidate-free for ONE request (a batch of 1: user, hist_*)."""
        if self.training:
            raise RuntimeError("serve_user needs the model in eval mode (model.eval())")
        packed = PackedHistory(request["hist_mask"])
        return {"hist": self.emb.history(request, packed), "user": self.emb.user(request)}  # (N, D), (1, du)

    @torch.no_grad()
    def candidate_logits(self, cache: dict, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None
                         ) -> torch.Tensor:
        """Logits (C,) of candidate item indices `items` (C,) for the cached request: the forward's
        numbers, with the attention over the one history (TargetAttention.forward_one_history)."""
        target = self.emb.candidates(items, item_features)  # (C, D)
        pooled, _ = self.attention.forward_one_history(target, cache["hist"])  # (C, D)
        parts = [target, pooled]
        if self.use_product:
            parts.append(target * pooled)  # (C, D)
        if cache["user"] is not None:
            parts.append(cache["user"].expand(items.shape[0], -1))  # (C, du)
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (C,)
