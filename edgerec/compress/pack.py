"""The packed EI-BERT artifact: one versioned, checksummed file (issue 6).

Layout (little endian):
  magic      8 bytes  b"EIBERT\\x00\\x01"
  version    u32      FORMAT_VERSION
  header_len u32      then the header, UTF-8 JSON: config, tasks (label names), tensor table
                      (name, kind, shape, offset, nbytes, scale offset), vocabulary length
  vocab      the tokenizer vocabulary, '\\n'-joined UTF-8 (its byte length is in the header)
  blob       tensor bytes (int8 rows, packed int4 rows, float32 scales/vectors), 4-byte aligned
  crc32      u32 over everything before it; sha256 of the same bytes is printed by `edgerec compress`

Reading checks magic, version, sizes and the CRC before touching a tensor, then the header against
the file and the config (`_checked_header`: every size, offset, shape and kind) and the weights for
NaN/infinity; every failure names the file and says what is wrong (truncated, corrupted, not an
EI-BERT file, newer format, a header that does not fit).
Writing goes to a temp file renamed into place: no half-written artifact.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgerec.compress.quantize import dequantize_rows, pack_int4, unpack_int4
from edgerec.errors import EdgerecError
from edgerec.features.definition import cut
from edgerec.io import atomic_path
from edgerec.serve.edge.tokenizer import SPECIALS

MAGIC = b"EIBERT\x00\x01"
FORMAT_VERSION = 1


class ArtifactError(EdgerecError):
    """The packed model file is unusable (truncated, corrupted, wrong format)."""


def expected_shapes(config: dict, tasks: dict[str, list[str]]) -> dict[str, list[int]]:
    """Every tensor the runtime reads, with its shape: what BertEncoder (models/layers/bert.py) holds
    for `config`, plus a merged head (C, H) and bias (C,) per task of C labels."""
    V, H, F, P = (config[k] for k in ("vocab_size", "hidden", "ffn", "max_positions"))
    E = config.get("emb_dim") or H
    shapes = {"encoder.word.weight": [V, E], "encoder.position.weight": [P, H], "encoder.type0": [H],
              "encoder.emb_ln.weight": [H], "encoder.emb_ln.bias": [H]}
    if E != H:
        shapes["encoder.emb_proj.weight"] = [H, E]
    for i in range(config["layers"]):
        for name, (rows, cols) in {"query": (H, H), "key": (H, H), "value": (H, H), "attn_out": (H, H),
                                   "ffn_in": (F, H), "ffn_out": (H, F), "ln1": (H, None), "ln2": (H, None)}.items():
            p = f"encoder.layers.{i}.{name}."
            shapes[p + "weight"], shapes[p + "bias"] = [rows, cols] if cols else [rows], [rows]
    for task, labels in tasks.items():
        shapes[f"head.{task}.weight"], shapes[f"head.{task}.bias"] = [len(labels), H], [len(labels)]
    return shapes


def _align(buf: bytearray) -> None:
    buf.extend(b"\0" * (-len(buf) % 4))


def write_artifact(path: str | Path, config: dict, tasks: dict[str, list[str]], vocab: list[str],
                   tensors: dict[str, dict]) -> dict:
    """Write the file; returns the byte breakdown."""
    blob = bytearray()
    table = []
    for name, t in tensors.items():
        entry = {"name": name, "kind": t["kind"], "shape": t["shape"]}
        _align(blob)
        if t["kind"] == "f32":
            data = np.ascontiguousarray(t["value"], dtype="<f4").tobytes()
        elif t["kind"] == "q8":
            data = np.ascontiguousarray(t["q"], dtype=np.int8).tobytes()
        else:
            data = pack_int4(t["q"]).tobytes()
        entry.update(offset=len(blob), nbytes=len(data))
        blob.extend(data)
        if t["kind"] != "f32":
            _align(blob)
            s = np.ascontiguousarray(t["scale"], dtype="<f4").tobytes()
            entry.update(scale_offset=len(blob), scale_nbytes=len(s))
            blob.extend(s)
        table.append(entry)
    vocab_bytes = "\n".join(vocab).encode("utf-8")
    header = json.dumps({"config": config, "tasks": tasks, "tensors": table, "vocab_bytes": len(vocab_bytes),
                         "blob_bytes": len(blob)}, separators=(",", ":")).encode("utf-8")
    body = MAGIC + struct.pack("<II", FORMAT_VERSION, len(header)) + header + vocab_bytes + bytes(blob)
    data = body + struct.pack("<I", zlib.crc32(body))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        read_artifact(tmp)  # what the runtime would refuse (e.g. a weight beyond MAX_ABS_WEIGHT) is never written
    return breakdown(table, len(vocab_bytes), len(header) + 16 + 4, len(data))


def breakdown(table: list[dict], vocab_bytes: int, overhead: int, total: int) -> dict:
    parts = {"embeddings": 0, "encoder": 0, "heads": 0}
    for e in table:
        n = e["nbytes"] + e.get("scale_nbytes", 0)
        key = ("embeddings" if e["name"].startswith(("encoder.word", "encoder.position", "encoder.type0",
                                                     "encoder.emb_"))
               else "heads" if e["name"].startswith("head.") else "encoder")
        parts[key] += n
    parts.update(vocabulary=vocab_bytes, header_and_padding=total - sum(parts.values()) - vocab_bytes, total=total)
    return parts


class QuantizedRows(NamedTuple):
    """A quantized matrix as the file holds it: w[r] = q[r] * scale[r] (int4 rows unpacked to int8)."""

    q: np.ndarray  # (R, C) int8
    scale: np.ndarray  # (R,) float32

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return 2

    def dequantized(self) -> np.ndarray:
        return dequantize_rows(self.q, self.scale)

    def abs_max(self) -> float:
        # int16 before abs: np.abs(int8 -128) is -128
        return float((np.abs(self.q.astype(np.int16)).max(1) * np.abs(self.scale)).max()) if self.q.size else 0.0


def read_artifact(path: str | Path, dequantize: bool = True) -> dict:
    """-> {"config", "tasks", "vocab", "tensors", "table"}: tensors are name -> float32 array, or with
    dequantize=False the quantized ones stay `QuantizedRows` (int8 in memory, the edge runtime's way)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the model file ({e.strerror}).") from None
    if len(data) < 20 or data[:8] != MAGIC:
        raise ArtifactError(f"{path}: not an EI-BERT artifact (bad magic); build one with `edgerec compress`.")
    version, hlen = struct.unpack("<II", data[8:16])
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {version} is newer than this runtime ({FORMAT_VERSION}); "
                            "update edgerec.")
    if 16 + hlen + 4 > len(data):
        raise ArtifactError(f"{path}: truncated ({len(data)} bytes; the header alone needs {16 + hlen + 4}).")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        try:
            h = json.loads(data[16:16 + hlen])
            expect = 16 + hlen + h["vocab_bytes"] + h["blob_bytes"] + 4
        except (ValueError, KeyError, TypeError, RecursionError):  # a header too damaged to say
            expect = None
        if expect is not None and expect != len(data):
            raise ArtifactError(f"{path}: truncated or padded: {len(data)} bytes, the header says {expect}; "
                                "copy the file again.")
        raise ArtifactError(f"{path}: checksum mismatch (CRC32 {zlib.crc32(data[:-4]):08x} != stored {crc:08x}); "
                            "the file is corrupted, copy it again.")
    header = _checked_header(path, data, hlen)
    v0 = 16 + hlen
    try:
        vocab = data[v0: v0 + header["vocab_bytes"]].decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise _unfit(path, "the vocabulary is not UTF-8") from None
    missing = [t for t in SPECIALS if t not in vocab]
    if len(vocab) != header["config"]["vocab_size"] or missing:
        raise _unfit(path, f"the vocabulary has {len(vocab):,} tokens for a vocab_size of "
                           f"{header['config']['vocab_size']:,}" + (f" and lacks {missing}" if missing else ""))
    b0 = v0 + header["vocab_bytes"]
    blob = memoryview(data)[b0: b0 + header["blob_bytes"]]
    tensors = {}
    for e in header["tensors"]:
        shape = tuple(e["shape"])
        raw = blob[e["offset"]: e["offset"] + e["nbytes"]]
        if e["kind"] == "f32":
            tensors[e["name"]] = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
            continue
        scale = np.frombuffer(blob[e["scale_offset"]: e["scale_offset"] + e["scale_nbytes"]], dtype="<f4")
        if e["kind"] == "q8":
            q = np.frombuffer(raw, dtype=np.int8).reshape(shape)
            q = q if dequantize else q.copy()  # kept int8: a copy, so the file's bytes can go
        else:
            q = unpack_int4(np.frombuffer(raw, dtype=np.uint8).reshape(shape[0], -1), shape[1])
        rows = QuantizedRows(q, scale.astype(np.float32))
        tensors[e["name"]] = rows.dequantized() if dequantize else rows
    bad = [name for name, t in tensors.items()
           if not np.isfinite(t.scale if isinstance(t, QuantizedRows) else t).all()]
    if bad:
        raise _unfit(path, f"{len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})")
    # finite but absurd: a trained student's weights stay far below this; 3e38 overflowed to NaN scores
    huge = [name for name, t in tensors.items()
            if (t.abs_max() if isinstance(t, QuantizedRows) else float(np.abs(t).max()) if t.size else 0.0)
            > MAX_ABS_WEIGHT]
    if huge:
        raise _unfit(path, f"{len(huge)} tensor(s) hold values beyond +-{MAX_ABS_WEIGHT:g} ({', '.join(huge[:3])})")
    seen: set[str] = set()
    for token in vocab:
        if token in seen:  # the tokenizer would map it to its last id, silently
            raise _unfit(path, f"the vocabulary lists {cut(token)} more than once")
        seen.add(token)
    return {"config": header["config"], "tasks": header["tasks"], "vocab": vocab, "tensors": tensors,
            "table": header["tensors"], "bytes": len(data)}


MAX_ABS_WEIGHT = 1e4  # |weight| bound at load; trained students are below 100 (layer-norm gains, embeddings)


def _unfit(path: Path, what: str) -> ArtifactError:
    return ArtifactError(f"{path}: {what}; the file was not written by `edgerec compress` (or was altered after): "
                         "build it again.")


def _count(v, low: int = 0, high: int | None = None) -> bool:
    """v is a real integer (not a bool or a float) in [low, high]."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def _checked_header(path: Path, data: bytes, hlen: int) -> dict:
    """The header, with every size, offset, shape and kind checked against the file's length and the
    config before anything is sliced or reshaped. The CRC only proves the bytes are the ones written:
    crafted files with a valid CRC gave tracebacks (10 of 11) and one silent wrong prediction."""
    try:
        h = json.loads(data[16:16 + hlen])
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deeply
        raise _unfit(path, "the header is not JSON") from None
    keys = ("config", "tasks", "tensors", "vocab_bytes", "blob_bytes")
    if not isinstance(h, dict) or any(k not in h for k in keys):
        raise _unfit(path, f"the header lacks one of {list(keys)}")
    c, tasks, table, n = h["config"], h["tasks"], h["tensors"], len(data)
    sizes = _count(h["vocab_bytes"]) and _count(h["blob_bytes"])
    if not (sizes and 16 + hlen + h["vocab_bytes"] + h["blob_bytes"] + 4 == n):
        raise _unfit(path, f"the header's sizes (vocabulary {cut(h['vocab_bytes'])}, tensors {cut(h['blob_bytes'])} "
                           f"bytes) do not add up to the file's {n:,} bytes")
    if not isinstance(table, list) or not isinstance(c, dict):
        raise _unfit(path, "the header's config or tensor table is malformed")
    for k in ("vocab_size", "hidden", "layers", "heads", "ffn", "max_positions"):
        if not _count(c.get(k), 1, len(table) if k == "layers" else n):  # a layer has 16 tensors, a row >= 1 byte
            raise _unfit(path, f"config {k} = {cut(c.get(k))} is not a size this file can hold")
    if c["hidden"] % c["heads"] or not (c.get("emb_dim") is None or _count(c["emb_dim"], 1, n)):
        raise _unfit(path, f"config hidden {c['hidden']} / heads {c['heads']} / emb_dim {cut(c.get('emb_dim'))} "
                           "do not fit together")
    if not (isinstance(tasks, dict) and tasks and all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in tasks.values())):
        raise _unfit(path, "the header's tasks are not task -> list of label names")
    expected = expected_shapes(c, tasks)
    spans = []
    for e in table:
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(name, str) or name not in expected:
            raise _unfit(path, f"tensor {cut(name)} is not one the config has, or appears twice")
        shape, kind = expected.pop(name), e.get("kind")
        rows, cols = shape[0], shape[-1]
        if kind == "f32":
            nbytes = 4 * rows * (cols if len(shape) == 2 else 1)
        elif kind in ("q8", "q4") and len(shape) == 2:
            nbytes = rows * (cols if kind == "q8" else (cols + 1) // 2)
        else:
            raise _unfit(path, f"tensor {name}: kind {cut(kind)} is not f32 (or q8/q4 for a matrix)")
        if e.get("shape") != shape or not _count(e.get("nbytes")) or e["nbytes"] != nbytes:
            raise _unfit(path, f"tensor {name}: shape {cut(e.get('shape'))} of {cut(e.get('nbytes'))} bytes, but the "
                               f"config needs {shape} ({nbytes:,} bytes as {kind})")
        e["shape"] = shape  # the config's integers, not JSON's 16.0
        spans.append((e.get("offset"), nbytes, name))
        if kind != "f32":
            if not _count(e.get("scale_nbytes")) or e["scale_nbytes"] != 4 * rows:
                raise _unfit(path, f"tensor {name}: {cut(e.get('scale_nbytes'))} bytes of scales for {rows} rows")
            spans.append((e.get("scale_offset"), 4 * rows, name + " (scales)"))
    if expected:
        raise _unfit(path, f"{len(expected)} tensor(s) the config needs are missing ({', '.join(list(expected)[:3])})")
    end = 0  # every tensor inside the blob, none overlapping another
    for offset, nbytes, name in sorted(spans, key=lambda s: s[0] if _count(s[0]) else -1):
        if not _count(offset, end, h["blob_bytes"] - nbytes):
            raise _unfit(path, f"tensor {name}: offset {cut(offset)} lies outside the blob or overlaps another tensor")
        end = offset + nbytes
    return h
