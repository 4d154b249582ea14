"""The packed EI-BERT artifact: one versioned, checksummed file (issue 6).

Layout (little endian):
  magic      8 bytes  b"EIBERT\\x00\\x01"
  version    u32      FORMAT_VERSION
  header_len u32      then the header, UTF-8 JSON: config, tasks (label names), tensor table
                      (name, kind, shape, offset, nbytes, scale offset), vocabulary length
  vocab      the tokenizer vocabulary, '\\n'-joined UTF-8 (its byte length is in the header)
  blob       tensor bytes (int8 rows, packed int4 rows, float32 scales/vectors), 4-byte aligned
  crc32      u32 over everything before it; sha256 of the same bytes is printed by `edgerec compress`

Reading checks magic, version, sizes and the CRC before touching a tensor, and every failure
names the file and says what is wrong (truncated, corrupted, not an EI-BERT file, newer format).
Writing goes to a temp file renamed into place: no half-written artifact.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from edgerec.compress.quantize import pack_int4, unpack_int4
from edgerec.errors import EdgerecError
from edgerec.io import atomic_path

MAGIC = b"EIBERT\x00\x01"
FORMAT_VERSION = 1


class ArtifactError(EdgerecError):
    """The packed model file is unusable (truncated, corrupted, wrong format)."""


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


def read_artifact(path: str | Path) -> dict:
    """-> {"config", "tasks", "vocab", "tensors": name -> float32 array (dequantized), "table"}."""
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
        except (ValueError, KeyError):
            expect = None
        if expect is not None and expect != len(data):
            raise ArtifactError(f"{path}: truncated or padded: {len(data)} bytes, the header says {expect}; "
                                "copy the file again.")
        raise ArtifactError(f"{path}: checksum mismatch (CRC32 {zlib.crc32(data[:-4]):08x} != stored {crc:08x}); "
                            "the file is corrupted, copy it again.")
    header = json.loads(data[16:16 + hlen])
    v0 = 16 + hlen
    vocab = data[v0: v0 + header["vocab_bytes"]].decode("utf-8").split("\n")
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
        else:
            q = unpack_int4(np.frombuffer(raw, dtype=np.uint8).reshape(shape[0], -1), shape[1])
        tensors[e["name"]] = q.astype(np.float32) * scale[:, None]
    return {"config": header["config"], "tasks": header["tasks"], "vocab": vocab, "tensors": tensors,
            "table": header["tensors"], "bytes": len(data)}
