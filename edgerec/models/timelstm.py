"""Time-LSTM (Zhu et al., IJCAI 2017), variant 1, as a CTR model.

An LSTM whose input step also carries the gap Δt_m = t_m - t_{m-1} (log1p hours) through a time
gate T_m = σ(x_m W_xt + σ(Δt_m w_tt) + b_t) that scales what is written to the cell:
c_m = f ⊙ c_{m-1} + i ⊙ T_m ⊙ tanh(...). The final hidden state is the user vector; an MLP scores
[u ; e_target ; u * e_target]. Padded (left) steps leave the state unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec
from edgerec.features.time import SECONDS_PER_HOUR
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding
from edgerec.models.layers.interaction import head_input


class TimeLSTMCell(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gates = nn.Linear(2 * dim, 4 * dim)  # input, forget, output, candidate from [x ; h]
        self.time_x = nn.Linear(dim, dim)
        self.time_t = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, x, dt, h, c):
        """x (B, d), dt (B,), h/c (B, d) -> new h, c."""
        i, f, o, g = self.gates(torch.cat([x, h], -1)).chunk(4, -1)  # each (B, d)
        t_gate = torch.sigmoid(self.time_x(x) + torch.sigmoid(dt.unsqueeze(-1) * self.time_t))  # (B, d)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * t_gate * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


@register_model
class TimeLSTM(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, mlp_units: tuple[int, ...] = (200, 80),
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim)
        d = self.emb.item_dim
        self.cell = TimeLSTMCell(d)
        self.mlp = MLP(3 * d + self.emb.user_dim, mlp_units, activation=activation, dropout=dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask, ts = batch["hist_mask"], batch["hist_ts"]  # (B, L)
        x = self.emb.history(batch)  # (B, L, d)
        prev = torch.cat([ts[:, :1], ts[:, :-1]], 1)  # (B, L)
        prev_valid = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1)  # (B, L)
        dt = torch.log1p((ts - prev).clamp_min(0).float() / SECONDS_PER_HOUR) * prev_valid  # first real step: 0
        B, L, d = x.shape
        h = c = x.new_zeros(B, d)
        first = int((~mask).all(0).sum())  # leading columns that are padding for every row
        for step in range(first, L):
            h_new, c_new = self.cell(x[:, step], dt[:, step], h, c)
            keep = mask[:, step].unsqueeze(-1)
            h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        logit = self.mlp(head_input(h, self.emb.target(batch), self.emb.user(batch))).squeeze(-1)  # (B,)
        return self.output(logit)
