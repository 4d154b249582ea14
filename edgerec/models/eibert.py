"""EI-BERT: one BERT encoder shared by several NLU tasks, one linear head per task (issue 6).

The same class is the teacher (all-MiniLM-L6-v2's sizes and weights, one task each) and the
student (a few hundred KB of encoder, a pruned vocabulary, factorized embeddings). Config keys are
the constructor arguments; unknown keys are rejected by the dataclass.

forward(ids (B, T), mask (B, T), task) -> dict(logits (B, C), pooled (B, H), hidden, states,
attentions). A head is `Linear(H -> C)`, or, for a student built by cross-distillation,
`Linear(H -> H_teacher)` followed by the teacher's own fine-tuned head (the teacher's task layer
integrated into the student; at packing time the two are multiplied into one matrix).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgerec.models.layers.bert import BertEncoder


@dataclass(frozen=True)
class EIBertConfig:
    vocab_size: int
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 512
    max_positions: int = 64
    emb_dim: int | None = None  # < hidden: factorized embedding table (V x E, then E -> H)
    dropout: float = 0.1
    tasks: dict[str, int] = field(default_factory=dict)  # task -> number of classes
    head_via: int | None = None  # cross-distillation: heads go H -> head_via -> C (teacher's head)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EIBertConfig":
        return cls(**d)


TEACHER_CONFIG = dict(hidden=384, layers=6, heads=12, ffn=1536, max_positions=512)  # all-MiniLM-L6-v2


class EIBert(nn.Module):
    def __init__(self, config: EIBertConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = BertEncoder(c.vocab_size, c.hidden, c.layers, c.heads, c.ffn, c.max_positions, c.emb_dim,
                                   c.dropout)
        self.drop = nn.Dropout(c.dropout)
        if c.head_via:
            self.up = nn.ModuleDict({t: nn.Linear(c.hidden, c.head_via) for t in c.tasks})
            self.heads = nn.ModuleDict({t: nn.Linear(c.head_via, n) for t, n in c.tasks.items()})
        else:
            self.up = None
            self.heads = nn.ModuleDict({t: nn.Linear(c.hidden, n) for t, n in c.tasks.items()})

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, task: str) -> dict:
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r}; heads: {sorted(self.heads)}")
        out = self.encoder(ids, mask)
        z = self.drop(out["pooled"])  # (B, H)
        if self.up is not None:
            z = self.up[task](z)  # (B, H_teacher): the teacher's pooled space
            out["up"] = z
        out["logits"] = self.heads[task](z)  # (B, C)
        return out

    def merged_head(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (C, H), b (C,)) of the task head with the integrated teacher layer multiplied in."""
        h = self.heads[task]
        if self.up is None:
            return h.weight.detach(), h.bias.detach()
        u = self.up[task]
        return (h.weight @ u.weight).detach(), (h.weight @ u.bias + h.bias).detach()
