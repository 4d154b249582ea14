"""Crash-safe file writing: every artifact is written to a temp file and renamed into place.

os.replace is atomic on POSIX, so a reader sees either the old file or the complete new one,
never a half-written artifact (for example after Ctrl-C during a checkpoint save).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgerec.errors import EdgerecError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line with a single write() so concurrent appenders never interleave."""
    append_jsonl_many(path, [record])


def append_jsonl_many(path: str | os.PathLike, records: list[dict]) -> None:
    """Append JSON lines with one write() and ONE fsync: durable when this returns, at the cost of one
    disk flush per call, not per record (a stream's dead letters come in batches)."""
    if not records:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n" for r in records)
    created = not path.exists()
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END):  # a torn last record (a crash mid-write, a full disk) must not swallow the next one
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    if created:  # the new file's name is durable too, not only its bytes
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_json(obj: Any) -> str:
    """sha256 of `obj` as canonical JSON (sorted keys, no spaces), read back as it would be from a file
    written by `write_json_atomic`: the same number for the object before and after a round trip."""
    canonical = json.loads(json.dumps(obj, default=_json_default))
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks (weights can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """Raise EdgerecError now if `path` cannot be written: folder=True, no file can be created in it
    (it is created if missing); else the file cannot be appended to, or created. Outputs are checked
    before the work that fills them: an unwritable output_dir or ledger used to fail only after
    training had finished. A real attempt, not os.access, which says yes to root whatever the path."""
    path = Path(path)
    try:
        if folder or not path.exists():
            where = path if folder else path.parent
            if where.exists() and not where.is_dir():  # mkdir would say "File exists"
                raise NotADirectoryError(20, f"{where} is a file, not a folder")
            where.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=where).close()
        else:
            open(path, "a").close()
    except OSError as e:
        raise EdgerecError(f"{what}: cannot write {path} ({e.strerror}); choose a writable path.") from None


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays and Paths show up in metrics and configs.
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
