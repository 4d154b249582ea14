"""The stream processor: events in, online features updated, at-least-once and idempotent (issue 5).

    source  -> Message(source partition, offset, raw), resumed from the store's committed offsets
    decode  -> Event, or a rejected message written to the dead-letter file with its error
    store   -> `FeatureStore.apply(batch, definition, source, offset)`: one atomic step per batch

Delivery is at-least-once: the offset is committed in the same transaction as the batch's state, so
a crash before the commit re-reads the batch, and the store's event-id check makes the re-read a
no-op. Nothing is dropped silently: a malformed message goes to `<source>.rejected.jsonl` with
its offset and the reason, and is counted; so does an event older than the store's dedup window
(edgerec/features/store.py), which could no longer be checked for duplicates. A batch rolled back
after that (store unreachable) is re-read, so a dead letter can appear twice: at least once, too.

Sources: `FileEventSource` (JSON lines, the embedded default) and `edgerec/serve/kafka.py` (a
Kafka consumer group via confluent-kafka). The store, not the source, owns the offsets: a
consumer that gets a partition seeks to the store's offset + 1, so a rebalance or a restart
resumes exactly where the stored state ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from edgerec.errors import DataFormatError, StoreUnavailable
from edgerec.features.definition import Event, FeatureDefinition
from edgerec.features.store import FeatureStore
from edgerec.io import append_jsonl


class Message(NamedTuple):
    """One raw message: the partition-level source it came from and its offset there."""

    source: str  # e.g. file:/abs/path or kafka:topic:3; the store keeps one offset per source
    offset: int
    raw: str | bytes


class FileEventSource:
    """JSON lines; the offset of a message is its 0-based line number. The embedded default."""

    def __init__(self, path: str | Path, follow: bool = False, poll_interval: float = 0.1,
                 idle_timeout: float | None = None):
        """`follow`: like `tail -f`, keep reading lines appended by a writer (the service's feedback
        sink) until `idle_timeout` seconds pass without one (None: forever)."""
        self.path = Path(path)
        self.name = f"file:{self.path.resolve()}"
        self.revoked: set[str] = set()
        self.follow, self.poll_interval, self.idle_timeout = follow, poll_interval, idle_timeout

    def messages(self, store: FeatureStore) -> Iterator[Message | None]:
        committed = store.offset(self.name)
        start = 0 if committed is None else committed + 1
        if self.follow and not self.path.exists():
            self.path.touch()
        with open(self.path, encoding="utf-8") as f:
            i, idle_since, partial = 0, time.monotonic(), ""
            while True:
                line = f.readline()
                if line and not line.endswith("\n") and self.follow:  # a writer is mid-line: wait for the rest
                    partial += line
                    continue
                if line:
                    line, partial = partial + line, ""
                    if i >= start and line.strip():
                        yield Message(self.name, i, line)
                    i += 1
                    idle_since = time.monotonic()
                    continue
                if not self.follow:
                    return
                yield None  # idle: the runner commits what it holds
                if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
                    return
                time.sleep(self.poll_interval)

    def dead_letter(self) -> Path:
        return self.path.with_suffix(".rejected.jsonl")

    def reject(self, msg: Message, error: str) -> None:
        raw = msg.raw.decode("utf-8", "replace") if isinstance(msg.raw, bytes) else msg.raw
        append_jsonl(self.dead_letter(), {"offset": msg.offset, "error": error, "message": raw.rstrip("\n")})

    def committed(self, source: str, offset: int) -> None:
        """The store holds the offset; a file has nobody else to tell."""

    def close(self) -> None:
        pass


@dataclass
class StreamStats:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0  # malformed messages and late events, both in the dead-letter file
    late: int = 0  # of which: older than the store's dedup window
    batches: int = 0
    retries: int = 0
    lag_seconds: list[float] = field(default_factory=list)  # event time -> applied, per batch (max)


def decode(raw: str | bytes, where: str) -> Event:
    try:
        d = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise DataFormatError(f"{where}: not JSON ({msg}).") from None
    if not isinstance(d, dict):
        raise DataFormatError(f"{where}: a message must be a JSON object, got {type(d).__name__}.")
    return Event.from_dict(d, where)


def run_stream(source, store: FeatureStore, definition: FeatureDefinition, batch_size: int = 500,
               max_messages: int | None = None, retries: int = 0, retry_wait: float = 1.0) -> StreamStats:
    """Consume from the store's committed offsets until the source ends (a file), stays idle past its
    `idle_timeout` (Kafka), or `max_messages` were read. Pending batches are committed whenever the
    source reports idle (`None`), so an event is applied at most `poll_timeout` after it arrives.

    `retries`: when the store is unreachable (StoreUnavailable), wait `retry_wait` seconds and resume
    from the committed offsets: the batch in flight is re-read, never half-applied or skipped."""
    stats = StreamStats()
    while True:
        try:
            _consume(source, store, definition, batch_size, max_messages, stats)
            return stats
        except StoreUnavailable:
            if stats.retries >= retries:
                raise
            stats.retries += 1
            time.sleep(retry_wait)


def _consume(source, store, definition, batch_size, max_messages, stats: StreamStats) -> None:
    # per source: the decoded events, each with the message it came in (for a late event's dead letter)
    pending: dict[str, tuple[list[tuple[Event, Message]], int]] = {}

    def flush(name: str) -> None:
        pairs, last = pending.pop(name)
        if name in source.revoked:  # partition moved to another consumer: it re-reads from the store
            return
        batch = [e for e, _ in pairs]
        message_of = {id(e): m for e, m in pairs}  # the store hands back the same Event objects
        late: list[Event] = []

        def on_late(e: Event, reason: str) -> None:
            source.reject(message_of[id(e)], reason)
            late.append(e)

        n = store.apply(batch, definition, name, last, on_late=on_late)
        if batch:
            stats.lag_seconds.append(max(time.time() - max(e.ts for e in batch), 0.0))
        source.committed(name, last)
        stats.applied += n
        stats.late += len(late)
        stats.rejected += len(late)
        stats.duplicates += len(batch) - n - len(late)
        stats.batches += 1

    for msg in source.messages(store):
        if msg is None:  # the source is idle: commit what is pending (bounded update delay)
            for name in list(pending):
                flush(name)
            continue
        if max_messages is not None and stats.read >= max_messages:
            break
        stats.read += 1
        pairs, _ = pending.get(msg.source, ([], msg.offset))
        try:
            pairs.append((decode(msg.raw, f"{msg.source} offset {msg.offset}"), msg))
        except DataFormatError as e:
            source.reject(msg, str(e))  # kept, with its reason; its offset still advances
            stats.rejected += 1
        pending[msg.source] = (pairs, msg.offset)
        if len(pairs) >= batch_size:
            flush(msg.source)
    for name in list(pending):
        flush(name)


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
