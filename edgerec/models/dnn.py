"""DNN: embeddings + mean-pooled history + MLP (the YouTube-DNN / "Embedding&MLP" baseline)."""

from __future__ import annotations

import torch

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding, masked_mean


@register_model
class DNN(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, mlp_units: tuple[int, ...] = (200, 80),
                 activation: str = "relu", dropout: float = 0.0, use_user_id: bool = False):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim, use_user_id=use_user_id)
        in_dim = 2 * self.emb.item_dim + self.emb.user_dim
        self.mlp = MLP(in_dim, mlp_units, activation=activation, dropout=dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        target = self.emb.target(batch)  # (B, D)
        hist = masked_mean(self.emb.history(batch), batch["hist_mask"])  # (B, D)
        parts = [target, hist]
        user = self.emb.user(batch)
        if user is not None:
            parts.append(user)  # (B, U)
        logit = self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)  # (B,)
        return self.output(logit)
