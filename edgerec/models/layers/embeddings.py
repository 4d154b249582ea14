"""Embeddings for the target item, its history and user side features.

The target item and the history share one table per feature (item id, and each item side
feature), so an item means the same vector in both places. Each item-side vector is the
concatenation [item id emb ; side feature embs], of size item_dim.

Row 0 of every table is padding (zero, never trained). The item and user-id tables' last row is
the out-of-vocabulary index (FeatureSpec.oov_item / oov_user): training never sees it, so it stays
zero, and an id the run never saw reads as "nothing known" rather than as a random vector. With
frequency-capped item ids (data.max_items) the capped tail maps there, so the row is trained as
one shared "rare item" vector, which an unseen item then gets too.
"""

from __future__ import annotations

import torch
from torch import nn

from edgerec.features.spec import FeatureSpec


class FeatureEmbedding(nn.Module):
    def __init__(self, spec: FeatureSpec, dim: int, use_user_id: bool = False):
        super().__init__()
        self.item = nn.Embedding(spec.n_items, dim, padding_idx=0)
        self.item_side = nn.ModuleDict({n: nn.Embedding(v, dim, padding_idx=0)
                                        for n, v in spec.item_features.items()})
        user_tables = dict(spec.user_features)
        if use_user_id:
            user_tables["__id__"] = spec.n_users
        self.user_side = nn.ModuleDict({n: nn.Embedding(v, dim, padding_idx=0) for n, v in user_tables.items()})
        self.item_dim = dim * (1 + len(self.item_side))
        self.user_dim = dim * len(self.user_side)
        for emb in [self.item, *self.item_side.values(), *self.user_side.values()]:
            nn.init.normal_(emb.weight, std=0.01)
            with torch.no_grad():
                emb.weight[0].zero_()
        with torch.no_grad():  # the OOV rows
            self.item.weight[spec.oov_item].zero_()
            if use_user_id:
                self.user_side["__id__"].weight[spec.oov_user].zero_()

    def target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, item_dim)"""
        parts = [self.item(batch["item"])]
        parts += [emb(batch[f"item_{n}"]) for n, emb in self.item_side.items()]
        return torch.cat(parts, dim=-1)

    def candidates(self, items: torch.Tensor, item_features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """`target` of candidate indices (C,) with their side-feature codes (serving's candidate_logits)."""
        return self.target({"item": items, **{f"item_{n}": codes for n, codes in (item_features or {}).items()}})

    def history(self, batch: dict[str, torch.Tensor], packed=None) -> torch.Tensor:
        """(B, L, item_dim) with zero vectors at padding; or (N, item_dim) for the real behaviours
        of a PackedHistory `packed`."""
        take = (lambda t: t) if packed is None else packed.pack
        parts = [self.item(take(batch["hist_item"]))]
        parts += [emb(take(batch[f"hist_{n}"])) for n, emb in self.item_side.items()]
        return torch.cat(parts, dim=-1)

    def user(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, user_dim), or None when there are no user features."""
        if not self.user_side:
            return None
        parts = [emb(batch["user"] if n == "__id__" else batch[f"user_{n}"]) for n, emb in self.user_side.items()]
        return torch.cat(parts, dim=-1)
