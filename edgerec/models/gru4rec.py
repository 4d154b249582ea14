"""GRU4Rec (Hidasi et al., ICLR 2016) as a CTR model: a GRU reads the history, its last state is
the user vector, and an MLP scores [u ; e_target ; u * e_target] (dicycle.md §6.1 [C])."""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding
from edgerec.models.layers.interaction import head_input


@register_model
class GRU4Rec(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, hidden_layers: int = 1, dropout: float = 0.0,
                 mlp_units: tuple[int, ...] = (200, 80), activation: str = "relu"):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim)
        d = self.emb.item_dim
        self.gru = nn.GRU(d, d, num_layers=hidden_layers, batch_first=True,
                          dropout=dropout if hidden_layers > 1 else 0.0)
        self.mlp = MLP(3 * d + self.emb.user_dim, mlp_units, activation=activation, dropout=dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch["hist_mask"]  # (B, L), left-padded
        hist = self.emb.history(batch)  # (B, L, d)
        lengths = mask.sum(1)  # (B,)
        # right-align -> left-align so packing can skip the padding
        L = mask.shape[1]
        shift = (torch.arange(L, device=mask.device).unsqueeze(0) + (L - lengths).unsqueeze(1)) % L  # (B, L)
        left = hist.gather(1, shift.unsqueeze(-1).expand_as(hist))  # (B, L, d), real items first
        packed = nn.utils.rnn.pack_padded_sequence(left, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h_n = self.gru(packed)  # (layers, B, d)
        user = h_n[-1] * (lengths > 0).unsqueeze(-1).to(hist.dtype)  # (B, d), 0 for empty history
        logit = self.mlp(head_input(user, self.emb.target(batch), self.emb.user(batch))).squeeze(-1)  # (B,)
        return self.output(logit)
