"""LR: logistic regression, a first-order baseline.

logit = bias + w[target item] + sum of w[side features] + mean over history of v[history item].
It cannot relate the target to the history (no interaction terms), so on the leave-last-out
protocol it mostly learns item popularity: the floor every other model must clear.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import FeatureEmbedding, masked_mean


@register_model
class LR(CTRModel):
    def __init__(self, spec: FeatureSpec, use_history: bool = True, use_user_id: bool = False):
        super().__init__(spec)
        self.weights = FeatureEmbedding(spec, dim=1, use_user_id=use_user_id)  # 1-d "embeddings" = weights
        self.use_history = use_history
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logit = self.weights.target(batch).sum(-1) + self.bias  # (B,)
        user = self.weights.user(batch)
        if user is not None:
            logit = logit + user.sum(-1)
        if self.use_history:
            hist = self.weights.history(batch)  # (B, L, n_fields)
            logit = logit + masked_mean(hist, batch["hist_mask"]).sum(-1)
        return self.output(logit)
