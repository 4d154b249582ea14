"""The on-device EI-BERT runtime: numpy only, no torch import (issue 6).

    model = EdgeModel.load("eibert.pack")
    model.predict("pho noodles near me", task="item_category")   -> (label, probabilities)

Loads the packed file (edgerec/compress/pack.py: magic, version, CRC checked first), dequantizes
the int8/int4 weights once into float32, and runs the same post-LayerNorm BERT the PyTorch model
runs (edgerec/models/layers/bert.py): embeddings (+ factorized projection), L layers of
multi-head attention and GELU FFN, mean pooling, the merged task head. GELU needs erf, which numpy
lacks: Abramowitz & Stegun's 7.1.26 approximation (|error| < 1.5e-7) is used.
Parity with the PyTorch int8 model is tested to 1e-4 on the logits.
"""

from __future__ import annotations

import numpy as np

from edgerec.compress.pack import read_artifact
from edgerec.serve.edge.tokenizer import WordPiece


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, five multiply-adds and one exp."""
    z = np.abs(x)
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    y = 1.0 - t * (np.float32(0.254829592) + t * (np.float32(-0.284496736) + t * (np.float32(1.421413741) + t * (
        np.float32(-1.453152027) + t * np.float32(1.061405429))))) * np.exp(-z * z)
    return np.copysign(y, x)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / np.float32(np.sqrt(2.0))))


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


class EdgeModel:
    def __init__(self, artifact: dict):
        self.config = artifact["config"]
        self.tasks = artifact["tasks"]
        self.tok = WordPiece(artifact["vocab"])
        t = artifact["tensors"]
        self.t = t
        c = self.config
        self.heads_n, self.hidden, self.n_layers = c["heads"], c["hidden"], c["layers"]
        self.max_len = c["max_positions"]
        # fused q/k/v per layer: one (H, 3H) matmul instead of three, with 1/sqrt(d_head) folded into q
        self.qkv = []
        qs = np.float32(1.0 / np.sqrt(self.hidden // self.heads_n))
        for i in range(self.n_layers):
            p = f"encoder.layers.{i}."
            w = np.concatenate([t[p + "query.weight"] * qs, t[p + "key.weight"], t[p + "value.weight"]], axis=0).T.copy()
            b = np.concatenate([t[p + "query.bias"] * qs, t[p + "key.bias"], t[p + "value.bias"]])
            self.qkv.append((w, b))
        self.wt = {k: v.T.copy() for k, v in t.items() if v.ndim == 2 and ".layers." in k}  # (in, out) for x @ W

    @classmethod
    def load(cls, path) -> "EdgeModel":
        return cls(read_artifact(path))

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        t = self.t
        B, T = ids.shape
        x = t["encoder.word.weight"][ids]  # (B, T, E)
        if "encoder.emb_proj.weight" in t:
            x = x @ t["encoder.emb_proj.weight"].T  # (B, T, H)
        x = x + t["encoder.position.weight"][:T] + t["encoder.type0"]
        x = _layer_norm(x, t["encoder.emb_ln.weight"], t["encoder.emb_ln.bias"])
        h, H = self.heads_n, self.hidden
        dh = H // h
        padded = not mask.all()  # batch 1 has no padding: skip the additive mask entirely
        bias = (1.0 - mask[:, None, None, :].astype(np.float32)) * np.float32(-1e4)  # (B, 1, 1, T)
        for i in range(self.n_layers):
            p = f"encoder.layers.{i}."
            w, b = self.qkv[i]
            qkv = (x @ w + b).reshape(B, T, 3, h, dh).transpose(2, 0, 3, 1, 4)  # (3, B, h, T, dh)
            q, k, v = qkv[0], qkv[1], qkv[2]
            logits = q @ k.transpose(0, 1, 3, 2)  # (B, h, T, T), already scaled
            if padded:
                logits = logits + bias
            logits = logits - logits.max(-1, keepdims=True)
            e = np.exp(logits)
            probs = e / e.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H)  # (B, T, H)
            x = _layer_norm(x + ctx @ self.wt[p + "attn_out.weight"] + t[p + "attn_out.bias"],
                            t[p + "ln1.weight"], t[p + "ln1.bias"])
            f = _gelu(x @ self.wt[p + "ffn_in.weight"] + t[p + "ffn_in.bias"])
            x = _layer_norm(x + f @ self.wt[p + "ffn_out.weight"] + t[p + "ffn_out.bias"],
                            t[p + "ln2.weight"], t[p + "ln2.bias"])
        m = mask[..., None].astype(np.float32)
        return (x * m).sum(1) / np.maximum(m.sum(1), 1.0)  # (B, H)

    def logits(self, texts: list[str], task: str) -> np.ndarray:
        if task not in self.tasks:
            raise KeyError(f"task {task!r} is not in this artifact; it has {sorted(self.tasks)}")
        ids, mask = self.tok.batch(texts, self.max_len)
        pooled = self._encode(ids, mask)
        return pooled @ self.t[f"head.{task}.weight"].T + self.t[f"head.{task}.bias"]  # (B, C)

    def predict(self, text: str, task: str) -> tuple[str, np.ndarray]:
        z = self.logits([text], task)[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        return self.tasks[task][int(p.argmax())], p
