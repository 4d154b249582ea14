"""The stream processor: events in, online features updated, at-least-once and idempotent (issue 5).

    source  -> Message(source partition, offset, raw), resumed from the store's committed offsets
    decode  -> Event, or a rejected message written to the dead-letter file with its error
    store   -> `FeatureStore.apply(batch, definition, source, offset)`: one atomic step per batch

Delivery is at-least-once: the offset is committed in the same transaction as the batch's state, so
a crash before the commit re-reads the batch, and the store's event-id check makes the re-read a
no-op. Nothing is dropped silently: a message that is not a valid event (`decode`, which checks it
with THE event validator `Event.from_dict`: bounded ints, valid UTF-8, no NaN, no far-future ts)
goes to `<source>.rejected.jsonl` with its offset and the reason, and is counted; so does an event
older than the store's dedup window (edgerec/features/store.py), which could no longer be checked
for duplicates. No input stops the processor: every message either becomes an Event the stores can
hold or a dead letter, and the valid events behind a bad one are applied. A batch's dead letters are
made durable together (`source.sync_rejects`, one fsync) just before its offset is committed, so a
crash never commits past a dead letter it did not write. A batch rolled back after its dead letters
were written (store unreachable, a crash) is re-read; the file source writes each offset to its
dead-letter file once, so a retry or a restart does not repeat it. Late events are decided per event
in stream order (`LateGate`), so the result does not depend on the batch size or on restarts.

Sources: `FileEventSource` (JSON lines, the embedded default) and `edgerec/serve/kafka.py` (a
Kafka consumer group via confluent-kafka). The store, not the source, owns the offsets: a
consumer that gets a partition seeks to the store's offset + 1, so a rebalance or a restart
resumes exactly where the stored state ends.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from edgerec.errors import DataFormatError, EdgerecError, StoreUnavailable
from edgerec.features.definition import (DEFAULT_FUTURE_SKEW_S, Event, FeatureDefinition, FutureEventError,
                                         latest_accepted_ts)
from edgerec.features.store import FeatureStore
from edgerec.io import append_jsonl_many


class Message(NamedTuple):
    """One raw message: the partition-level source it came from and its offset there."""

    source: str  # e.g. file:/abs/path or kafka:topic:3; the store keeps one offset per source
    offset: int
    raw: str | bytes
    final: bool = True  # False: a file's last line without its newline, applied but never committed


def file_source_name(path: str | Path) -> str:
    """The name the stores keep a file's offset and watermark under. A file name that is not UTF-8
    is kept as \\xNN escapes: the stores take text names."""
    return "file:" + os.fsencode(Path(path).resolve()).decode("utf-8", "backslashreplace")


class FileEventSource:
    """JSON lines; the offset of a message is its 0-based line number. The embedded default.

    Lines are read as bytes and decoded as UTF-8 per line, so one line of bad bytes is one dead
    letter, not a stopped reader. A line counts once it ends with a newline: an unfinished last line
    (a writer still writing it) is never decoded half. At the end of the input (end of file without
    `follow`; `idle_timeout` with it) a last line without a newline is read but NEVER committed
    (`Message.final` False): the committed offset stays at the last line that ends in a newline,
    so whatever a writer appends to that line later is read again (the event-id check absorbs a
    re-read event; a line that grew into something else becomes a visible dead letter). It is read
    only if it is a whole JSON object (`_whole_json_object`); anything else is not read at all: its
    offset goes to `self.incomplete` (reported by `edgerec stream`)."""

    def __init__(self, path: str | Path, follow: bool = False, poll_interval: float = 0.1,
                 idle_timeout: float | None = None):
        """`follow`: like `tail -f`, keep reading lines appended by a writer (the service's feedback
        sink) until `idle_timeout` seconds pass without one (None: forever)."""
        self.path = Path(path)
        self.name = file_source_name(self.path)
        self.revoked: set[str] = set()
        self.follow, self.poll_interval, self.idle_timeout = follow, poll_interval, idle_timeout
        self.stop_following = threading.Event()  # set it to end a `follow` read at its next idle moment
        self.incomplete: int | None = None  # offset of a last line left unread (no newline, breaks off)
        self._dead: set[tuple[int, str]] = set()  # (offset, sha256 of the line) already in the dead-letter file
        self._unsynced: dict[tuple[int, str], dict] = {}  # dead letters of the batch in flight, not yet written

    def messages(self, store: FeatureStore) -> Iterator[Message | None]:
        committed = store.offset(self.name)
        start = 0 if committed is None else committed + 1
        self.incomplete = None
        self._dead, self._unsynced = self._dead_offsets(start), {}  # a retry forgets what it never wrote
        if self.follow and not self.path.exists():
            self.path.touch()
        with open(self.path, "rb") as f:
            i, idle_since, partial = 0, time.monotonic(), b""
            while True:
                partial += f.readline()
                if partial.endswith(b"\n"):
                    if i >= start and partial.strip():
                        yield Message(self.name, i, partial)
                    i, partial = i + 1, b""
                    idle_since = time.monotonic()
                    continue
                # end of what is written so far (partial: a last line without its newline, or b"")
                if self.follow:
                    yield None  # idle: the runner commits what it holds
                    if not self.stop_following.is_set() and (
                            self.idle_timeout is None or time.monotonic() - idle_since <= self.idle_timeout):
                        time.sleep(self.poll_interval)
                        continue
                if i >= start and partial.strip():
                    if _whole_json_object(partial):
                        yield Message(self.name, i, partial, final=False)
                    else:  # a writer may still be writing it: never read half, never dead-lettered
                        self.incomplete = i
                return

    def dead_letter(self) -> Path:
        return self.path.with_suffix(".rejected.jsonl")

    def _dead_offsets(self, start: int) -> set[tuple[int, str]]:
        """The dead letters at offsets >= start already in the file: written for a batch that was
        rolled back (or by a run that died before its commit), so the re-read must not write them
        again. Keyed by offset and the sha256 of the line's bytes, so a different line at a reused
        offset (a rewritten file, a last line that grew) is still written."""
        seen: set[tuple[int, str]] = set()
        if self.dead_letter().exists():
            with open(self.dead_letter(), "rb") as f:
                for line in f:
                    try:
                        d = json.loads(line)
                        key = (d["offset"], d["sha256"])
                    except (ValueError, TypeError, KeyError):  # a torn line (crash mid-write), an old record
                        continue
                    if isinstance(key[0], int) and key[0] >= start:
                        seen.add(key)
        return seen

    def reject(self, msg: Message, error: str) -> None:
        raw = msg.raw if isinstance(msg.raw, bytes) else msg.raw.encode("utf-8", "surrogatepass")
        raw = raw.rstrip(b"\r\n")
        key = (msg.offset, hashlib.sha256(raw).hexdigest())
        if key in self._dead or key in self._unsynced:
            return  # written before a retry or restart re-read its batch: once is enough
        # the message as text; bytes that are not UTF-8 are kept as \xNN escapes, so nothing is lost
        text = raw.decode("utf-8", "backslashreplace")
        self._unsynced[key] = {"offset": msg.offset, "error": error, "message": text, "sha256": key[1]}

    def sync_rejects(self) -> None:
        """Write the batch's dead letters, one fsync for all of them; the stream calls this before it
        commits the offset past them (a dead letter per fsync was 11x slower than applying)."""
        try:
            append_jsonl_many(self.dead_letter(), list(self._unsynced.values()))
        except OSError as e:  # a full disk, a revoked permission: stop before the commit, lose nothing
            raise EdgerecError(f"cannot write the dead-letter file {self.dead_letter()} ({e.strerror or e}); "
                               "nothing past the last commit was committed. Free space or fix its permissions "
                               "and run again.") from None
        self._dead.update(self._unsynced)
        self._unsynced = {}

    def committed(self, source: str, offset: int) -> None:
        """The store holds the offset; a file has nobody else to tell. Its dead letters up to there
        are never re-read."""
        if self._dead:
            self._dead = {k for k in self._dead if k[0] > offset}

    def close(self) -> None:
        pass


def _whole_json_object(raw: bytes) -> bool:
    """A last line without its newline is read only if it is a complete JSON object: then a writer can
    only add the newline. Anything else (cut anywhere, even inside `null` or a \\u escape, or bad as
    it stands) is left unread and uncommitted until its newline comes, and dead-lettered then if bad."""
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


@dataclass
class StreamStats:
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0  # invalid messages and late events, all in the dead-letter file
    late: int = 0  # of which: older than the store's dedup window
    future: int = 0  # of which: later than the clock + the allowed skew
    incomplete: int | None = None  # offset of a last line left unread and uncommitted (no newline yet)
    batches: int = 0
    retries: int = 0
    lag_seconds: list[float] = field(default_factory=list)  # event time -> applied, per batch (max)


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NotFinite(f"{name} is not a JSON number; send a finite value")


def decode(raw: str | bytes, where: str, latest_ts: int | None = None) -> Event:
    """One raw message -> a valid Event, or DataFormatError saying why (never another exception).
    `latest_ts`: the newest event time accepted (`latest_accepted_ts`), None: no future bound."""
    if not isinstance(raw, (str, bytes)):  # a Kafka message without a value (a tombstone)
        raise DataFormatError(f"{where}: an empty message (no value); a message is one JSON event.")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{where}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at byte {e.start}); "
                                  "write events as UTF-8 JSON lines.") from None
    try:
        d = json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{where}: not JSON ({e.msg} at column {e.colno}).") from None
    except _NotFinite as e:
        raise DataFormatError(f"{where}: not JSON ({e}).") from None
    except ValueError:  # Python refuses to read an integer of more than 4300 digits
        raise DataFormatError(f"{where}: not JSON we read (a number of more than 4,300 digits; no id or time "
                              "has that many).") from None
    except RecursionError:
        raise DataFormatError(f"{where}: not JSON we read (nested too deeply).") from None
    if not isinstance(d, dict):
        raise DataFormatError(f"{where}: a message must be a JSON object, got {type(d).__name__}.")
    return Event.from_dict(d, where, latest_ts)


def run_stream(source, store: FeatureStore, definition: FeatureDefinition, batch_size: int = 500,
               max_messages: int | None = None, retries: int = 0, retry_wait: float = 1.0,
               future_skew_s: int | None = DEFAULT_FUTURE_SKEW_S) -> StreamStats:
    """Consume from the store's committed offsets until the source ends (a file), stays idle past its
    `idle_timeout` (Kafka), or `max_messages` were read. Pending batches are committed whenever the
    source reports idle (`None`), so an event is applied at most `poll_timeout` after it arrives.

    `future_skew_s`: an event later than this machine's clock plus this many seconds is dead-lettered
    (it would move the store's watermark ahead of every real event); None: no bound. The clock is
    wall-clock time, so a replay of a historical log is unaffected.

    `retries`: when the store is unreachable (StoreUnavailable), wait `retry_wait` seconds and resume
    from the committed offsets: the batch in flight is re-read, never half-applied or skipped."""
    stats = StreamStats()
    committed = [copy.deepcopy(stats)]  # the counts as of the last commit: a retry re-reads from there
    while True:
        try:
            _consume(source, store, definition, batch_size, max_messages, future_skew_s, stats, committed)
            stats.incomplete = getattr(source, "incomplete", None)
            return stats
        except StoreUnavailable:
            if stats.retries >= retries:
                raise
            stats = copy.deepcopy(committed[0])  # what the rolled-back batch counted is counted again
            stats.retries = committed[0].retries = committed[0].retries + 1
            time.sleep(retry_wait)


def _consume(source, store, definition, batch_size, max_messages, future_skew_s, stats: StreamStats,
             committed: list[StreamStats]) -> None:
    """One attempt; `committed[0]` is replaced by a copy of `stats` after every commit."""
    pending: dict[str, _Pending] = {}  # per source: what was read since its last commit

    def flush(name: str) -> None:
        p = pending.pop(name)
        if name in source.revoked:  # partition moved to another consumer: it re-reads from the store
            return
        batch = [e for e, _ in p.pairs]
        message_of = {id(e): m for e, m in p.pairs}  # the stores hand on_late the very Event objects given
        late: list[Event] = []

        def on_late(e: Event, reason: str) -> None:
            source.reject(message_of[id(e)], reason)
            late.append(e)

        n = store.apply(batch, definition, name, p.last, on_late=on_late, before_commit=source.sync_rejects)
        if batch:
            stats.lag_seconds.append(max(time.time() - max(e.ts for e in batch), 0.0))
        if p.last is not None:
            source.committed(name, p.last)
        stats.applied += n
        stats.late += len(late)
        stats.rejected += len(late)
        stats.duplicates += len(batch) - n - len(late)
        stats.batches += 1
        committed[0] = copy.deepcopy(stats)

    for msg in source.messages(store):
        if msg is None:  # the source is idle: commit what is pending (bounded update delay)
            for name in list(pending):
                flush(name)
            continue
        if max_messages is not None and stats.read >= max_messages:
            break
        stats.read += 1
        p = pending.setdefault(msg.source, _Pending())
        try:
            p.pairs.append((decode(msg.raw, f"{msg.source} offset {msg.offset}", latest_accepted_ts(future_skew_s)),
                            msg))
        except DataFormatError as e:
            source.reject(msg, str(e))  # kept, with its reason; its offset still advances
            stats.rejected += 1
            stats.future += isinstance(e, FutureEventError)
        p.messages += 1
        if msg.final:  # never commit an unfinished line (a last line without its newline)
            p.last = msg.offset
        if p.messages >= batch_size:  # dead letters count: a long run of bad lines is committed in batches too
            flush(msg.source)
    for name in list(pending):
        flush(name)


@dataclass
class _Pending:
    """What one source delivered since its last commit."""

    pairs: list[tuple[Event, Message]] = field(default_factory=list)  # decoded events and their messages
    messages: int = 0  # events and dead letters: the batch size counts both
    last: int | None = None  # the offset to commit: the last FINAL message read (None: nothing to commit)


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
