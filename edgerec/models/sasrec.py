"""SASRec (Kang & McAuley, ICDM 2018) as a CTR model: causal self-attention over the history with
learned position embeddings; the output at the most recent behaviour is the user vector, and an
MLP scores [u ; e_target ; u * e_target] (dicycle.md §6.1 [C]). Positions count back from the most
recent behaviour, so position 0 is always "the last thing the user did"."""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec
from edgerec.models.base import CTRModel, register_model
from edgerec.models.layers import MLP, FeatureEmbedding
from edgerec.models.layers.interaction import head_input, last_valid
from edgerec.models.layers.transformer import SelfAttentionBlock, causal_padding_mask


@register_model
class SASRec(CTRModel):
    def __init__(self, spec: FeatureSpec, embedding_dim: int = 32, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, mlp_units: tuple[int, ...] = (200, 80), activation: str = "relu",
                 ffn_mult: int = 1):
        super().__init__(spec)
        self.emb = FeatureEmbedding(spec, embedding_dim)
        d = self.emb.item_dim
        self.position = nn.Embedding(spec.max_len, d)
        self.blocks = nn.ModuleList([SelfAttentionBlock(d, heads, dropout, ffn_mult) for _ in range(blocks)])
        self.ln = nn.LayerNorm(d)
        self.mlp = MLP(3 * d + self.emb.user_dim, mlp_units, activation=activation)

    def encode(self, batch: dict[str, torch.Tensor], relative=None) -> torch.Tensor:
        mask = batch["hist_mask"]  # (B, L)
        L = mask.shape[1]
        x = self.emb.history(batch) * self.emb.item_dim ** 0.5  # (B, L, d)
        back = (L - 1 - torch.arange(L, device=mask.device)).clamp_max(self.position.num_embeddings - 1)  # (L,) 0 = most recent
        x = (x + self.position(back)) * mask.unsqueeze(-1)
        visible = causal_padding_mask(mask)  # (B, L, L)
        for block in self.blocks:
            x = block(x, mask, visible, relative)
        return last_valid(self.ln(x), mask)  # (B, d)

    def relative_attention(self, batch: dict[str, torch.Tensor]):
        """Extra attention terms for every block (None here; TiSASRec adds time intervals)."""
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        user = self.encode(batch, self.relative_attention(batch))  # (B, d)
        logit = self.mlp(head_input(user, self.emb.target(batch), self.emb.user(batch))).squeeze(-1)  # (B,)
        return self.output(logit)
