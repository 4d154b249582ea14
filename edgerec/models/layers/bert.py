"""BERT encoder blocks (post-LayerNorm, GELU), shared by the teacher and the EI-BERT student.

One implementation for both, so the teacher loaded from all-MiniLM-L6-v2's weights and the student
differ only in sizes; the numpy edge runtime (edgerec/serve/edge/runtime.py) mirrors exactly this
computation and is tested against it. Attention probabilities are returned because vocabulary
pruning scores tokens by the attention they receive and TinyBERT-style distillation matches them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

NEG = -1e4  # finite: a fully masked row stays finite (never happens with [CLS] present)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} is not divisible by heads {heads}")
        self.h, self.dh = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, H = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.h, self.dh).transpose(1, 2)  # (B, h, T, dh)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dh) + bias  # (B, h, T, T)
        probs = logits.softmax(-1)  # (B, h, T, T)
        ctx = (self.drop(probs) @ v).transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        x = self.ln1(x + self.drop(self.attn_out(ctx)))
        x = self.ln2(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))
        return x, probs


class BertEncoder(nn.Module):
    """Token + position (+ type 0) embeddings, optionally factorized (emb_dim < hidden), then layers.

    forward(ids (B, T), mask (B, T)) -> dict:
      hidden (B, T, H) last layer; states: list of (B, T, H), embeddings first; attentions: list of
      (B, h, T, T); pooled (B, H): mean over real tokens (all-MiniLM-L6-v2's sentence pooling).
    """

    def __init__(self, vocab_size: int, hidden: int = 384, layers: int = 6, heads: int = 12, ffn: int = 1536,
                 max_positions: int = 512, emb_dim: int | None = None, dropout: float = 0.1, eps: float = 1e-12):
        super().__init__()
        e = emb_dim or hidden
        self.word = nn.Embedding(vocab_size, e)
        self.emb_proj = nn.Linear(e, hidden, bias=False) if e != hidden else None
        self.position = nn.Embedding(max_positions, hidden)
        self.type0 = nn.Parameter(torch.zeros(hidden))  # token type 0 only (single sentences)
        self.emb_ln = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn, dropout, eps) for _ in range(layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        T = ids.shape[1]
        w = self.word(ids)  # (B, T, E)
        if self.emb_proj is not None:
            w = self.emb_proj(w)  # (B, T, H)
        x = self.drop(self.emb_ln(w + self.position.weight[:T] + self.type0))  # (B, T, H)
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * NEG  # (B, 1, 1, T)
        states, atts = [x], []
        for layer in self.layers:
            x, p = layer(x, bias)
            states.append(x)
            atts.append(p)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
        return {"hidden": x, "states": states, "attentions": atts, "pooled": pooled}

    def load_hf_bert(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a Hugging Face BertModel state dict (e.g. all-MiniLM-L6-v2's safetensors) into this
        module; every tensor must be used and match, so a wrong file fails loudly."""
        own = {"word.weight": "embeddings.word_embeddings.weight",
               "position.weight": "embeddings.position_embeddings.weight",
               "emb_ln.weight": "embeddings.LayerNorm.weight", "emb_ln.bias": "embeddings.LayerNorm.bias"}
        names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                 "attn_out": "attention.output.dense", "ln1": "attention.output.LayerNorm",
                 "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ln2": "output.LayerNorm"}
        for i in range(len(self.layers)):
            for ours, theirs in names.items():
                for p in ("weight", "bias"):
                    own[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        strip = {k.removeprefix("bert."): v for k, v in state.items()}
        new = {k: strip[v] for k, v in own.items()}
        new["type0"] = strip["embeddings.token_type_embeddings.weight"][0]
        missing, unexpected = self.load_state_dict(new, strict=False)
        if [m for m in missing if m != "emb_proj.weight"] or unexpected:
            raise ValueError(f"teacher weights do not fit: missing {missing}, unexpected {unexpected}")
