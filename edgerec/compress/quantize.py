"""Per-channel int8 weight quantization (int4 for the embedding table as an option) (issue 6).

Every weight MATRIX (each Linear, the word and position embeddings, the merged task heads) is
stored as signed integers with one float scale per output row: w ≈ q · s_row, q in [-127, 127]
(int8) or [-7, 7] (int4, two per byte). The scale is CALIBRATED per row by trying clip ratios
(1.0, 0.99, ..., 0.80 of max |w|) and keeping the one with the lowest squared error on that row:
clipping a few outliers buys resolution for the rest. Vectors (biases, LayerNorm) stay float32:
they are < 2 % of the bytes and quantizing LayerNorm gains hurts.

This is weight-only post-training quantization: the int8 values are what is stored and shipped;
inference dequantizes them once at load (the numpy runtime computes in float32; numpy has no fast
int8 GEMM). `dequantized_state` gives the PyTorch model the same rounded weights, so "PyTorch int8
model" and the edge runtime compute the same function (parity-tested).
"""

from __future__ import annotations

import numpy as np

CLIPS = np.linspace(1.0, 0.8, 11)


def quantize_rows(w: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) float -> (q int8 (R, C), scale float32 (R,)). int4 values are kept in int8 here and
    packed two per byte by the packer."""
    w = np.asarray(w, dtype=np.float32)
    qmax = 127 if bits == 8 else 7
    amax = np.abs(w).max(axis=1)  # (R,)
    best_err = np.full(w.shape[0], np.inf)
    best_scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    for c in CLIPS:
        s = np.where(amax > 0, c * amax / qmax, 1.0).astype(np.float32)  # (R,)
        q = np.clip(np.round(w / s[:, None]), -qmax, qmax)
        err = ((q * s[:, None] - w) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, s, best_scale)
    q = np.clip(np.round(w / best_scale[:, None]), -qmax, qmax).astype(np.int8)
    return q, best_scale.astype(np.float32)


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale[:, None].astype(np.float32)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """(R, C) int8 in [-7, 7] -> (R, ceil(C/2)) uint8, low nibble first."""
    R, C = q.shape
    u = (q.astype(np.int16) & 0xF).astype(np.uint8)
    if C % 2:
        u = np.concatenate([u, np.zeros((R, 1), np.uint8)], axis=1)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(p: np.ndarray, cols: int) -> np.ndarray:
    lo, hi = (p & 0xF).astype(np.int8), (p >> 4).astype(np.int8)
    u = np.stack([lo, hi], axis=-1).reshape(p.shape[0], -1)[:, :cols]
    return np.where(u > 7, u - 16, u).astype(np.int8)


def export_tensors(model, embedding_bits: int = 8) -> dict[str, dict]:
    """The student's inference tensors, quantized: name -> {"kind": "q8"|"q4"|"f32", arrays...}.
    Task heads are exported merged (teacher layer multiplied in, see EIBert.merged_head)."""
    sd = {k: v.detach().cpu().numpy() for k, v in model.encoder.state_dict().items()}
    out: dict[str, dict] = {}
    for name, w in sd.items():
        if w.ndim == 2:
            bits = embedding_bits if name == "word.weight" else 8
            q, s = quantize_rows(w, bits)
            out[f"encoder.{name}"] = {"kind": "q4" if bits == 4 else "q8", "q": q, "scale": s, "shape": list(w.shape)}
        else:
            out[f"encoder.{name}"] = {"kind": "f32", "value": w.astype(np.float32), "shape": list(w.shape)}
    for task in model.heads:
        W, b = (t.cpu().numpy() for t in model.merged_head(task))
        q, s = quantize_rows(W, 8)
        out[f"head.{task}.weight"] = {"kind": "q8", "q": q, "scale": s, "shape": list(W.shape)}
        out[f"head.{task}.bias"] = {"kind": "f32", "value": b.astype(np.float32), "shape": list(b.shape)}
    return out


def dequantized(t: dict) -> np.ndarray:
    if t["kind"] == "f32":
        return t["value"]
    return dequantize_rows(t["q"], t["scale"])
