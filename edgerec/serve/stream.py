"""The stream processor: events in, online features updated, at-least-once and idempotent (issue 5).

    source  -> (offset, raw message) pairs, resumable from an offset
    decode  -> Event, or a rejected message written to the dead-letter file with its error
    store   -> `FeatureStore.apply(batch, definition, source, offset)`: one atomic step per batch

Delivery is at-least-once: the offset is committed in the same transaction as the batch's state, so
a crash before the commit re-reads the batch, and the store's event-id check makes the re-read a
no-op. Nothing is dropped silently: a malformed message goes to `<source>.rejected.jsonl` with
its offset and the reason, and is counted.

Sources: `FileEventSource` (JSON lines, the embedded default) and `edgerec/serve/kafka.py` (a
Kafka consumer group via confluent-kafka).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgerec.errors import DataFormatError
from edgerec.features.definition import Event, FeatureDefinition
from edgerec.features.store import FeatureStore
from edgerec.io import append_jsonl


class FileEventSource:
    """JSON lines; the offset of a message is its 0-based line number."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = f"file:{self.path.resolve()}"

    def read(self, start: int = 0) -> Iterator[tuple[int, str]]:
        with open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= start and line.strip():
                    yield i, line

    def dead_letter(self) -> Path:
        return self.path.with_suffix(".rejected.jsonl")


@dataclass
class StreamStats:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0


def decode(raw: str, where: str) -> Event:
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: not JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(d, dict):
        raise DataFormatError(f"{where}: a message must be a JSON object, got {type(d).__name__}.")
    return Event.from_dict(d, where)


def run_stream(source, store: FeatureStore, definition: FeatureDefinition, batch_size: int = 500,
               max_messages: int | None = None) -> StreamStats:
    """Consume from the committed offset to the end of the source (or `max_messages` messages)."""
    stats = StreamStats()
    committed = store.offset(source.name)
    start = 0 if committed is None else committed + 1
    batch: list[Event] = []
    last = None
    for offset, raw in source.read(start):
        if max_messages is not None and stats.read >= max_messages:
            break
        stats.read += 1
        last = offset
        try:
            batch.append(decode(raw, f"{source.name} offset {offset}"))
        except DataFormatError as e:
            append_jsonl(source.dead_letter(), {"offset": offset, "error": str(e), "message": raw.rstrip("\n")})
            stats.rejected += 1
        if len(batch) >= batch_size:
            _commit(store, definition, source, batch, last, stats)
            batch = []
    if last is not None:
        _commit(store, definition, source, batch, last, stats)
    return stats


def _commit(store, definition, source, batch, offset, stats) -> None:
    n = store.apply(batch, definition, source.name, offset)
    stats.applied += n
    stats.duplicates += len(batch) - n
    stats.batches += 1


def events_from_log(events_table) -> Iterator[Event]:
    """A logged exposure table (edgerec event schema) as wire events in time order: every row is an
    exposure; a clicked row is also a click (event ids `<row>e` and `<row>c`)."""
    t = events_table
    user, item, ts = (t.column(c).to_numpy() for c in ("user_id", "item_id", "ts"))
    label = t.column("label").to_numpy()
    pos = t.column("position").to_numpy(zero_copy_only=False) if "position" in t.column_names else None
    req = t.column("request_id").to_numpy() if "request_id" in t.column_names else None
    for i in np.argsort(ts, kind="stable"):
        p = None if pos is None or pos[i] is None or (isinstance(pos[i], float) and np.isnan(pos[i])) else int(pos[i])
        r = None if req is None else int(req[i])
        yield Event(f"{i}e", int(user[i]), int(item[i]), int(ts[i]), "exposure", p, r)
        if label[i] == 1:
            yield Event(f"{i}c", int(user[i]), int(item[i]), int(ts[i]), "click", p, r)


def write_event_file(events, path: str | Path) -> Path:
    """Events as JSON lines (what `edgerec stream` consumes)."""
    from edgerec.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_dict()) + "\n")
    return path
