"""TiSASRec (Li et al., WSDM 2020) as a CTR model: SASRec whose attention also sees the time
interval between every pair of behaviours.

Interval r_ij = min(floor(|t_i - t_j| / s_u), k), with s_u the user's smallest non-zero gap in the
window (TiSASRec's personalised scale) and k = `max_interval`. Interval embeddings R_K, R_V (shared
by all blocks, as in TiSASRec) enter the logits as q_i . R_K[r_ij] and the values as
Σ_j a_ij R_V[r_ij]. Both are computed without materialising the (B, L, L, d) tensor: the logit term
is q_i R_K^T gathered at r_ij, the value term a scatter-add of a_ij into interval buckets times R_V.
Deviation [C]: absolute positions are SASRec's input position embeddings, not separate K/V tables.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import register_model
from edgerec.models.sasrec import SASRec


def interval_buckets(hist_ts: torch.Tensor, mask: torch.Tensor, max_interval: int) -> torch.Tensor:
    """(B, L) timestamps -> (B, L, L) int64 personalised interval buckets in [0, max_interval]."""
    gaps = (hist_ts[:, 1:] - hist_ts[:, :-1]).abs()  # (B, L-1)
    both = mask[:, 1:] & mask[:, :-1]
    big = torch.iinfo(torch.int64).max
    scale = torch.where(both & (gaps > 0), gaps, torch.full_like(gaps, big)).min(dim=1).values  # (B,)
    scale = torch.where(scale == big, torch.ones_like(scale), scale)
    diff = (hist_ts.unsqueeze(2) - hist_ts.unsqueeze(1)).abs()  # (B, L, L)
    return (diff // scale.view(-1, 1, 1)).clamp_max(max_interval)


@register_model
class TiSASRec(SASRec):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, max_interval: int = 256, mlp_units: tuple[int, ...] = (200, 80),
                 activation: str = "relu"):
        super().__init__(spec, embedding_dim, blocks, heads, dropout, mlp_units, activation)
        d = self.emb.item_dim
        self.max_interval = max_interval
        self.interval_k = nn.Embedding(max_interval + 1, d)
        self.interval_v = nn.Embedding(max_interval + 1, d)
        self.heads = heads

    def relative_attention(self, batch: dict[str, torch.Tensor]):
        """Interval terms for SelfAttentionBlock: logit bias q_i . R_K[r_ij] and value Σ_j a_ij R_V[r_ij]."""
        mask = batch["hist_mask"]
        r = interval_buckets(batch["hist_ts"], mask, self.max_interval)  # (B, L, L)
        K = self.max_interval + 1
        h = self.heads
        rk = self.interval_k.weight.view(K, h, -1).permute(1, 2, 0)  # (h, dh, K)
        rv = self.interval_v.weight.view(K, h, -1).transpose(0, 1)  # (h, K, dh)
        idx = r.unsqueeze(1).expand(-1, h, -1, -1)  # (B, h, L, L)

        def relative(q: torch.Tensor):
            bias = (q @ rk).gather(-1, idx)  # (B, h, L, K) -> (B, h, L, L)

            def value(w: torch.Tensor) -> torch.Tensor:
                buckets = w.new_zeros(*w.shape[:3], K).scatter_add(-1, idx, w)  # (B, h, L, K)
                return buckets @ rv  # (B, h, L, dh)

            return bias, value

        return relative
