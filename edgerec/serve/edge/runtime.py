"""The on-device EI-BERT runtime: numpy only, no torch import (issue 6).

    model = EdgeModel.load("eibert.pack")
    model.predict("pho noodles near me", task="item_category")   -> (label, probabilities)

Loads the packed file (edgerec/compress/pack.py: magic, version, CRC checked first), keeps its
int8 (and int4, unpacked to int8) matrices int8 in memory, dequantizing one layer at a time into a
scratch buffer (one per thread) just before its matmul (`_Int8Linear`; `EdgeModel.load(path, "float32")`
dequantizes everything once, the runtime before December 2026), and runs the same post-LayerNorm
BERT the PyTorch model runs (edgerec/models/layers/bert.py): embeddings (+ factorized projection), L layers of
multi-head attention and GELU FFN, mean pooling, the merged task head. GELU needs erf, which numpy
lacks: Abramowitz & Stegun's 7.1.26 approximation (|error| < 1.5e-7) is used. Element-wise work
runs in place on temporaries: at batch 1 it, not the matmuls, dominated the time.
Parity with the PyTorch int8 model is tested to 1e-4 on the logits.
"""

from __future__ import annotations

import threading

import numpy as np

from edgerec.compress.pack import ArtifactError, QuantizedRows, read_artifact
from edgerec.serve.edge.tokenizer import WordPiece


_SQRT2 = np.float32(np.sqrt(2.0))
_AS_P = np.float32(0.3275911)
_AS_C = [np.float32(c) for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]


def _gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, in place on a temporary x, via Abramowitz & Stegun 7.1.26 for erfc.

    0.5 x (1 + erf(x/√2)) = max(x, 0) - 0.5 |x| erfc(|x|/√2), and erfc(z) = poly(t) exp(-z²) with
    t = 1 / (1 + p z): one formula for both signs, no copysign. |error| < 1.5e-7 · |x|. In place,
    because at batch 1 these element-wise passes, not the matmuls, were most of the time."""
    ax = np.abs(x)  # |x|
    t = ax * (_AS_P / _SQRT2)
    t += 1.0
    np.reciprocal(t, out=t)  # t = 1 / (1 + p |x| / √2)
    q = t * _AS_C[0]
    for c in _AS_C[1:]:  # Horner: ((((c5 t + c4) t + c3) t + c2) t + c1) t
        q += c
        q *= t
    e = np.square(ax, out=t)
    e *= np.float32(-0.5)
    np.exp(e, out=e)  # exp(-x²/2)
    q *= e
    q *= ax
    q *= np.float32(0.5)  # 0.5 |x| erfc(|x|/√2)
    np.maximum(x, 0.0, out=x)
    x -= q
    return x


_MEAN_VECTORS: dict[int, np.ndarray] = {}


def _layer_norm_(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """LayerNorm over the last axis, in place on a temporary x. Means as a matmul with a (H, 1)
    vector of 1/H: at 32 x 128 that is ~40 % faster than .mean() (fewer passes, BLAS)."""
    H = x.shape[-1]
    avg = _MEAN_VECTORS.get(H)
    if avg is None:
        avg = _MEAN_VECTORS[H] = np.full((H, 1), 1.0 / H, dtype=np.float32)
    x -= x @ avg
    inv = np.square(x) @ avg  # (..., 1) variance
    inv += np.float32(eps)
    np.sqrt(inv, out=inv)
    np.reciprocal(inv, out=inv)
    x *= inv
    x *= g
    x += b
    return x


class _Linear:
    """y = x @ W.T + b with W held as float32, transposed once to (in, out) for x @ W."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        self.wt, self.b = np.ascontiguousarray(w.T), b

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.wt  # a fresh array: safe to update in place
        y += self.b
        return y


class _Int8Linear:
    """y = x @ W.T + b with W kept int8 (out, in) and a float32 scale per output row.

    W = q * s[:, None], so x @ W.T = (x @ q.T) * s: the int8 rows are cast into a float32 scratch
    buffer that all layers share (one layer's worth per thread, filled just before its matmul), and
    the scale is applied to the (T, out) result instead of to the weights."""

    def __init__(self, w: QuantizedRows, b: np.ndarray, scratch: "_Scratch"):
        self.q, self.s, self.b, self.scratch = w.q, w.scale, b, scratch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        w = self.scratch.get()[: self.q.size].reshape(self.q.shape)  # (out, in) float32 view of the buffer
        np.copyto(w, self.q)  # int8 -> float32
        y = x @ w.T  # BLAS reads w.T as a transposed operand: no copy
        y *= self.s
        y += self.b
        return y


class _Scratch:
    """The float32 buffer the int8 layers dequantize into, one per thread: numpy releases the GIL in
    copyto and matmul, so two threads sharing one buffer would overwrite each other's weights."""

    def __init__(self):
        self.size = 0  # floats; set once every layer is built (the largest int8 matrix, fused qkv included)
        self._local = threading.local()

    def get(self) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < self.size:
            buf = self._local.buf = np.empty(self.size, dtype=np.float32)
        return buf


def _rows(table, ids: np.ndarray) -> np.ndarray:
    """Embedding rows `ids` of a float32 or int8 table, as float32 (..., E)."""
    if isinstance(table, QuantizedRows):
        out = table.q[ids].astype(np.float32)
        out *= table.scale[ids][..., None]
        return out
    return table[ids]


class EdgeModel:
    """The edge model. `weights="int8"` (default) keeps every matrix int8 in memory, as in the file:
    resident weights are about the file's size. `weights="float32"` dequantizes once at load (the
    runtime before December 2026; kept for the side-by-side benchmark, bench/nlu_memory.py)."""

    def __init__(self, artifact: dict, source: str = "the edge model"):
        """`artifact` from read_artifact: its matrices are int8 (dequantize=False) or float32."""
        self.source = source  # the .pack file, for error messages
        self.config = artifact["config"]
        self.tasks = artifact["tasks"]
        self.tok = WordPiece(artifact["vocab"])
        t = dict(artifact["tensors"])
        self.weights = "int8" if any(isinstance(v, QuantizedRows) for v in t.values()) else "float32"
        c = self.config
        self.heads_n, self.hidden, self.n_layers = c["heads"], c["hidden"], c["layers"]
        self.max_len = c["max_positions"]
        self._scratch = _Scratch()  # one layer's weights, shared by every int8 layer (per thread)
        self.word, self.position = t.pop("encoder.word.weight"), t.pop("encoder.position.weight")
        self.emb_proj = self._linear(t.pop("encoder.emb_proj.weight"), None) if "encoder.emb_proj.weight" in t else None
        self.type0, self.emb_ln = t.pop("encoder.type0"), (t.pop("encoder.emb_ln.weight"), t.pop("encoder.emb_ln.bias"))
        # fused q/k/v per layer: one (H, 3H) matmul instead of three, with 1/sqrt(d_head) folded into q
        qs = np.float32(1.0 / np.sqrt(self.hidden // self.heads_n))
        self.layers = []
        for i in range(self.n_layers):
            p = f"encoder.layers.{i}."
            q, k, v = (t.pop(p + n + ".weight") for n in ("query", "key", "value"))
            b = np.concatenate([t.pop(p + "query.bias") * qs, t.pop(p + "key.bias"), t.pop(p + "value.bias")])
            if isinstance(q, QuantizedRows) != isinstance(k, QuantizedRows) or \
                    isinstance(q, QuantizedRows) != isinstance(v, QuantizedRows):  # mixed kinds: all float32
                q, k, v = (w.dequantized() if isinstance(w, QuantizedRows) else w for w in (q, k, v))
            if isinstance(q, QuantizedRows):
                qkv = QuantizedRows(np.concatenate([q.q, k.q, v.q]), np.concatenate([q.scale * qs, k.scale, v.scale]))
            else:
                qkv = np.concatenate([q * qs, k, v])
            self.layers.append({"qkv": self._linear(qkv, b),
                                **{n: self._linear(t.pop(p + n + ".weight"), t.pop(p + n + ".bias"))
                                   for n in ("attn_out", "ffn_in", "ffn_out")},
                                "ln1": (t.pop(p + "ln1.weight"), t.pop(p + "ln1.bias")),
                                "ln2": (t.pop(p + "ln2.weight"), t.pop(p + "ln2.bias"))})
        self.heads = {task: self._linear(t.pop(f"head.{task}.weight"), t.pop(f"head.{task}.bias")) for task in self.tasks}
        linears = [*(v for layer in self.layers for v in layer.values()), *self.heads.values(), self.emb_proj]
        self._scratch.size = max((m.q.size for m in linears if isinstance(m, _Int8Linear)), default=0)

    def _linear(self, w, b):
        b = np.zeros(w.shape[0], np.float32) if b is None else b
        return _Int8Linear(w, b, self._scratch) if isinstance(w, QuantizedRows) else _Linear(w, b)

    @classmethod
    def load(cls, path, weights: str = "int8") -> "EdgeModel":
        if weights not in ("int8", "float32"):
            raise ValueError(f"weights must be 'int8' or 'float32', got {weights!r}")
        return cls(read_artifact(path, dequantize=weights == "float32"), str(path))

    def resident_weight_bytes(self) -> int:
        """Bytes of every weight array the model holds (int8 rows, scales, float32 vectors and the
        shared scratch buffer): what loading the file costs in memory, tokenizer aside."""
        seen, total = set(), 0

        def add(a) -> None:
            nonlocal total
            if isinstance(a, QuantizedRows):
                add(a.q), add(a.scale)
            elif isinstance(a, np.ndarray) and id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes

        def walk(x) -> None:
            if isinstance(x, (_Linear, _Int8Linear)):
                for a in vars(x).values():
                    add(a)
            elif isinstance(x, dict):
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)) and not isinstance(x, QuantizedRows):
                for v in x:
                    walk(v)
            else:
                add(x)

        walk([self.word, self.position, self.emb_proj, self.type0, self.emb_ln, self.layers, self.heads])
        total += 4 * self._scratch.size  # one thread's scratch buffer
        return total

    def _encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        x = _rows(self.word, ids)  # (B, T, E)
        if self.emb_proj is not None:
            x = self.emb_proj(x)  # (B, T, H)
        x = x + _rows(self.position, np.arange(T)) + self.type0
        x = _layer_norm_(x, *self.emb_ln)
        h, H = self.heads_n, self.hidden
        dh = H // h
        padded = not mask.all()  # batch 1 has no padding: skip the additive mask entirely
        bias = (1.0 - mask[:, None, None, :].astype(np.float32)) * np.float32(-1e4)  # (B, 1, 1, T)
        for layer in self.layers:
            qkv = layer["qkv"](x)  # (B, T, 3H)
            qkv = qkv.reshape(B, T, 3, h, dh).transpose(2, 0, 3, 1, 4)  # (3, B, h, T, dh)
            q, k, v = qkv[0], qkv[1], qkv[2]
            logits = q @ k.transpose(0, 1, 3, 2)  # (B, h, T, T), already scaled
            if padded:
                logits = logits + bias
            logits -= logits.max(-1, keepdims=True)
            probs = np.exp(logits, out=logits)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, T, H)  # (B, T, H)
            y = layer["attn_out"](ctx)  # (B, T, H), a fresh array: safe to update in place
            y += x
            x = _layer_norm_(y, *layer["ln1"])
            y = layer["ffn_out"](_gelu_(layer["ffn_in"](x)))  # (B, T, F) -> (B, T, H)
            y += x
            x = _layer_norm_(y, *layer["ln2"])
        m = mask[..., None].astype(np.float32)
        return (x * m).sum(1) / np.maximum(m.sum(1), 1.0)  # (B, H)

    def logits(self, texts: list[str], task: str) -> np.ndarray:
        if task not in self.tasks:
            raise KeyError(f"task {task!r} is not in this artifact; it has {sorted(self.tasks)}")
        ids, mask = self.tok.batch(texts, self.max_len)
        pooled = self._encode(ids, mask)
        z = self.heads[task](pooled)  # (B, C)
        if not np.isfinite(z).all():  # never a prediction from NaN: the weights passed the load checks, yet overflow
            raise ArtifactError(f"{self.source}: task {task!r} gave non-finite scores; the file's weights are not "
                                "those of a trained model: build it again with `edgerec compress`.")
        return z

    def predict(self, text: str, task: str) -> tuple[str, np.ndarray]:
        z = self.logits([text], task)[0]
        p = np.exp(z - z.max())
        p /= p.sum()
        return self.tasks[task][int(p.argmax())], p
