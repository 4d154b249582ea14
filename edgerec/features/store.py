"""Online feature stores: where the folded features live for serving (issue 5).

Interface (`FeatureStore`): `apply(events, definition, source=None, offset=None)` folds a batch of
events ATOMICALLY together with the source offset it was read up to, and skips any event whose
`event_id` was applied before. That is what makes at-least-once delivery safe: a replayed event,
or a batch re-read after a crash between "applied" and "offset committed", changes nothing.

The applied ids are kept for a DEDUP WINDOW of event time (default 7 days, `dedup_window_s`), not
forever. Watermarks are PER SOURCE (a file, a Kafka partition: what `source` names; `None` is one
source of its own): a consumer reads one partition ahead of another, so one global watermark would
make the slower partition's events look late. An id is dropped once its source's newest applied
event (the watermark) is more than the window past it; the duplicate check covers every id still
kept, whatever its source. A duplicate of an event older than its source's watermark - window could
no longer be recognised, so such an event is not applied at all (`LateGate`, decided per event in
stream order, so batch sizes do not change the result): it is handed to `on_late` (the
stream processor writes it to its dead-letter file with the reason) or, with no `on_late`, raises
`LateEventError`. Nothing is dropped silently and nothing is counted twice; `dedup_window_s=None`
keeps every id (unbounded). The one assumption, Kafka Streams' too (its dedup state is per
partition): a duplicate comes back through the source of its original (what at-least-once
redelivery does: a partition or file re-read), and an event id names one event: a re-sent event
carries its original ts (an id reused for another event at a later time is a duplicate while the id is
kept, and new once it has left the window). An old event re-sent through ANOTHER source after its
id left the window cannot be recognised (docs/design.md, "Dedup window").

  MemoryStore   dicts, for tests and the in-process demo
  SQLiteStore   one file, the embedded default (`edgerec stream --store sqlite:PATH`); one
                transaction per batch holds the states, the applied event ids and the offset
  RedisStore    edgerec/features/redis_store.py (`--store redis://HOST:PORT/DB`), one MULTI/EXEC per batch
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from edgerec.errors import ConfigError, DataFormatError, StoreUnavailable
from edgerec.features.definition import Event, FeatureDefinition, ItemState, UserState, cut
from edgerec.features.time import same_zone


DEFAULT_DEDUP_WINDOW_S = 7 * 86400
OnLate = Callable[[Event, str], None]  # (event, reason): an event too old to check for duplicates


class LateEventError(DataFormatError):
    """An event older than the store's dedup window: it can no longer be checked for duplicates."""


def late_reason(e: Event, watermark: int, window_s: int) -> str:
    return (f"event {e.event_id!r} (ts {e.ts}) is older than the feature store's dedup window: its source's newest "
            f"applied event is at ts {watermark} and applied ids are kept for {window_s / 86400:g} days, so it can no "
            "longer be checked for duplicates and was NOT applied. If it is new, apply it with a longer window "
            "(`edgerec stream --dedup-days N`).")


class LateGate:
    """THE late-event rule, decided event by event in stream order: an event is late when it is older
    than its source's newest APPLIED event so far (earlier events of the same batch included) minus
    the dedup window. Deciding per event, not per batch, is what makes a stream's result independent
    of how it is cut into batches (and of where a restart cut it): with a per-batch watermark the
    first batch had none, so old events in it were applied that later batches dead-lettered.

    Use: `if gate.admits(e): ... if new: apply; gate.applied(e)`. Only applied events move the
    watermark, as the stores persist it (a duplicate from another source does not)."""

    def __init__(self, watermark: int | None, window_s: int | None, on_late: OnLate | None):
        self.watermark, self.window_s, self.on_late = watermark, window_s, on_late

    def admits(self, e: Event) -> bool:
        """True: young enough to check against the kept ids. False: handed to `on_late` (or
        LateEventError with no `on_late`, before the caller has changed anything for it)."""
        if self.window_s is None or self.watermark is None or e.ts >= self.watermark - self.window_s:
            return True
        reason = late_reason(e, self.watermark, self.window_s)
        if self.on_late is None:
            raise LateEventError(reason)
        self.on_late(e, reason)
        return False

    def applied(self, e: Event) -> None:
        self.watermark = e.ts if self.watermark is None else max(self.watermark, e.ts)


def source_key(source: str | None) -> str:
    """How a store names `source` beside its applied ids ('' for direct applies, which have none)."""
    return "" if source is None else source


def check_zone(recorded: str | None, definition: FeatureDefinition, where: str) -> None:
    """A store's per-user hour-of-week counts are in the zone of its first apply: folding more events
    in another zone would mix two clocks in one count, silently, so it is refused."""
    if recorded is not None and not same_zone(recorded, definition.tz):
        raise ConfigError(f"{where} holds hour-of-week counts folded in time zone {recorded}, and this fold uses "
                          f"{definition.tz}: one store has one clock. Pass --tz {recorded} (a stream), serve a run "
                          "of that zone, or start a new store")


def checked_window(dedup_window_s: int | None) -> int | None:
    """The constructor argument, validated: positive seconds, or None to keep every id."""
    if dedup_window_s is not None and dedup_window_s <= 0:
        raise ConfigError(f"dedup window must be positive seconds or None (keep every id), got {dedup_window_s}")
    return dedup_window_s


class FeatureStore(Protocol):
    def apply(self, events: Iterable[Event], definition: FeatureDefinition, source: str | None = None,
              offset: int | None = None, on_late: OnLate | None = None,
              before_commit: Callable[[], None] | None = None) -> int: ...
    # -> events newly applied. `before_commit` runs after every decision and before the batch and its
    # offset are committed (the stream makes its dead letters durable there: nothing skipped is lost)

    def user(self, user_id: int) -> UserState: ...

    def item(self, item_id: int) -> ItemState: ...

    def items(self, item_ids: list[int]) -> list[ItemState]: ...  # one round trip

    def item_counts(self, item_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(exposures, clicks) int64 arrays in the order of item_ids, 0 for an item never seen: serving's
        stage 1 reads its 200 candidates' counts per request, one round trip, no per-item objects."""
        ...

    def offset(self, source: str) -> int | None: ...

    def watermark(self, source: str | None = None) -> int | None: ...  # newest applied event ts of `source`

    def zone(self) -> str | None: ...  # the definition's tz the store was folded in (None: nothing applied yet)

    def claim_zone(self, tz: str) -> str: ...  # record tz unless a zone is recorded; -> the store's zone


class MemoryStore:
    def __init__(self, dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S) -> None:
        self.users: dict[int, UserState] = {}
        self.item_states: dict[int, ItemState] = {}
        self.applied: dict[str, int] = {}  # event_id -> event ts, within its source's dedup window
        self._by_ts: dict[str | None, list[tuple[int, str]]] = {}  # per source, min-heap of (ts, id): next to drop
        self.watermarks: dict[str | None, int] = {}  # per source, the newest applied event ts
        self.dedup_window_s = checked_window(dedup_window_s)
        self.offsets: dict[str, int] = {}
        self.tz: str | None = None

    def watermark(self, source: str | None = None) -> int | None:
        return self.watermarks.get(source)

    def zone(self) -> str | None:
        return self.tz

    def claim_zone(self, tz: str) -> str:
        if self.tz is None:
            self.tz = tz
        return self.tz

    def apply(self, events, definition, source=None, offset=None, on_late=None, before_commit=None) -> int:
        check_zone(self.tz, definition, "the in-memory feature store")
        gate = LateGate(self.watermarks.get(source), self.dedup_window_s, on_late)
        fresh: list[Event] = []  # decided first, applied after: a LateEventError changes nothing
        seen: set[str] = set()
        for e in events:
            if gate.admits(e) and e.event_id not in self.applied and e.event_id not in seen:
                fresh.append(e)
                seen.add(e.event_id)
                gate.applied(e)
        if before_commit is not None:
            before_commit()
        heap = self._by_ts.setdefault(source, [])
        for e in fresh:
            definition.apply_user(self.users.setdefault(e.user_id, UserState()), e)
            definition.apply_item(self.item_states.setdefault(e.item_id, ItemState()), e)
            self.applied[e.event_id] = e.ts
            heapq.heappush(heap, (e.ts, e.event_id))
        if gate.watermark is not None and fresh:
            self.watermarks[source] = gate.watermark
            self.tz = definition.tz
        if self.dedup_window_s is not None and source in self.watermarks:
            cutoff = self.watermarks[source] - self.dedup_window_s
            while heap and heap[0][0] < cutoff:
                del self.applied[heapq.heappop(heap)[1]]
        if source is not None and offset is not None:
            self.offsets[source] = offset
        return len(fresh)

    def user(self, user_id: int) -> UserState:
        return self.users.get(user_id, UserState())

    def item(self, item_id: int) -> ItemState:
        return self.item_states.get(item_id, ItemState())

    def items(self, item_ids: list[int]) -> list[ItemState]:
        return [self.item_states.get(i, ItemState()) for i in item_ids]

    def item_counts(self, item_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return counts_of(self.items(item_ids))

    def offset(self, source: str) -> int | None:
        return self.offsets.get(source)


def _refuse_a_foreign_file(path: Path) -> None:
    """SQLite turns a small file that is not a database (under one page) into a new database, silently
    overwriting it: anything non-empty must start with SQLite's header."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise ConfigError(f"--store sqlite:{path} is not an SQLite database (it starts with {cut(head, 40)}); "
                              "it was left untouched. Name a new file or one `edgerec stream` wrote")


class SQLiteStore:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS users (user_id INTEGER PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS items (item_id INTEGER PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY, ts INTEGER, source TEXT);
    CREATE TABLE IF NOT EXISTS offsets (source TEXT PRIMARY KEY, offset INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """
    # Stage 1 reads 200 items' counts per request; json_extract on `items.state` made that read 0.26 ms
    # (0.18 ms from plain columns; stage 1 p50 0.58 -> 0.39 ms under load, bench/serve_before_after.py).
    # `item_counts` mirrors the two counts in plain columns, kept by triggers inside the database, so
    # every writer keeps it current (an older edgerec's stream included); a store written before it
    # existed gets it, filled from `items`, when opened (`_add_item_counts`).
    ITEM_COUNTS_TRIGGERS = ("item_counts_insert", "item_counts_update", "item_counts_delete")
    _COPY_NEW = ("INSERT OR REPLACE INTO item_counts VALUES (NEW.item_id, json_extract(NEW.state, '$.exposures'), "
                 "json_extract(NEW.state, '$.clicks'));")
    ITEM_COUNTS = (
        "CREATE TABLE IF NOT EXISTS item_counts (item_id INTEGER PRIMARY KEY, exposures INTEGER NOT NULL, "
        "clicks INTEGER NOT NULL)",
        f"CREATE TRIGGER IF NOT EXISTS item_counts_insert AFTER INSERT ON items BEGIN {_COPY_NEW} END",
        "CREATE TRIGGER IF NOT EXISTS item_counts_update AFTER UPDATE ON items BEGIN "
        f"DELETE FROM item_counts WHERE item_id = OLD.item_id; {_COPY_NEW} END",
        "CREATE TRIGGER IF NOT EXISTS item_counts_delete AFTER DELETE ON items BEGIN "
        "DELETE FROM item_counts WHERE item_id = OLD.item_id; END",
        "INSERT OR REPLACE INTO item_counts "
        "SELECT item_id, json_extract(state, '$.exposures'), json_extract(state, '$.clicks') FROM items",
    )

    def __init__(self, path: str | Path, dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S):
        self.path = str(path)
        self.dedup_window_s = checked_window(dedup_window_s)
        if Path(self.path).is_dir():  # sqlite3 says only "unable to open database file"
            raise ConfigError(f"--store sqlite:{self.path} is a directory; name a database file in it, e.g. "
                              f"sqlite:{Path(self.path) / 'features.db'}")
        _refuse_a_foreign_file(Path(self.path))
        try:
            # explicit BEGIN/COMMIT below; one connection shared by the server's threads, so no thread check
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"users", "items", "applied", "offsets"} & tables:
                self.db.close()
                raise ConfigError(f"--store sqlite:{self.path} is the database of another program (tables "
                                  f"{', '.join(sorted(tables)[:5])}); name a new file or one `edgerec stream` wrote")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(self.SCHEMA)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(applied)")}
            for col, kind in (("ts", "INTEGER"), ("source", "TEXT")):
                if col not in columns:  # a store written before the dedup window: its ids get NULL, kept forever
                    self.db.execute(f"ALTER TABLE applied ADD COLUMN {col} {kind}")
            self.db.execute("CREATE INDEX IF NOT EXISTS applied_by_source_ts ON applied (source, ts)")
            self._add_item_counts()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise ConfigError(f"--store sqlite:{self.path}: cannot open it as an SQLite feature store ({e}); "
                                  "name a new file or one `edgerec stream` wrote") from None
            self.db.close()
            raise StoreUnavailable(f"--store sqlite:{self.path} is locked by another writer ({e}); the store "
                                   "is fine: start again when that process is done with it") from None
        except sqlite3.DatabaseError as e:  # not a database, a missing folder, no permission
            raise ConfigError(f"--store sqlite:{self.path}: cannot open it as an SQLite feature store ({e}); name a "
                              "new file or one `edgerec stream` wrote") from None

    def _add_item_counts(self) -> None:
        """Create `item_counts` and its triggers, filled from `items`, unless the store has them all
        (also repairs a store that lost one): in one write transaction, checked again inside it, so
        of two processes opening an older store at once only the first does the work."""
        if self._has_item_counts():
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if not self._has_item_counts():
                for statement in self.ITEM_COUNTS:
                    self.db.execute(statement)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                self.db.execute("ROLLBACK")
            raise

    def _has_item_counts(self) -> bool:
        names = {r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE name = 'item_counts' OR name LIKE 'item_counts_%'")}
        return {"item_counts", *self.ITEM_COUNTS_TRIGGERS} <= names

    def watermark(self, source: str | None = None) -> int | None:
        """The newest applied event's ts from `source` (an index lookup)."""
        row = self.db.execute("SELECT MAX(ts) FROM applied WHERE source = ?", (source_key(source),)).fetchone()
        return row[0]

    def zone(self) -> str | None:
        """The tz of the first fold (a store written before zones were recorded: None, taken as is)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'tz'").fetchone()
        return row[0] if row else None

    def claim_zone(self, tz: str) -> str:
        """Record `tz` unless the store has a zone (the service does this at start, so that a stream
        folding its feedback later inherits the service's clock). -> the store's zone."""
        try:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('tz', ?)", (tz,))
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"--store sqlite:{self.path}: {e} (another process writing it?)") from None
        return self.zone()

    def _get(self, table: str, key: str, k: int, cls):
        row = self.db.execute(f"SELECT state FROM {table} WHERE {key} = ?", (k,)).fetchone()
        return cls.from_dict(json.loads(row[0])) if row else cls()

    def apply(self, events, definition, source=None, offset=None, on_late=None, before_commit=None) -> int:
        try:
            return self._apply(events, definition, source, offset, on_late, before_commit)
        except sqlite3.OperationalError as e:  # locked by another writer past the timeout, disk I/O: retryable
            raise StoreUnavailable(f"--store sqlite:{self.path}: {e} (another process writing it? one stream "
                                   "processor per store file). The batch in flight was not applied and will be "
                                   "re-read.") from None

    def _apply(self, events, definition, source, offset, on_late, before_commit) -> int:
        users: dict[int, UserState] = {}
        items: dict[int, ItemState] = {}
        n = 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            src = source_key(source)  # NULL marks the pre-window rows
            check_zone(self.zone(), definition, f"--store sqlite:{self.path}")
            gate = LateGate(self.watermark(source), self.dedup_window_s, on_late)
            for e in events:
                if not gate.admits(e):
                    continue
                new = self.db.execute("INSERT OR IGNORE INTO applied VALUES (?, ?, ?)", (e.event_id, e.ts, src))
                if new.rowcount == 0:
                    continue  # seen before: at-least-once delivery made it arrive again
                gate.applied(e)
                u = users.get(e.user_id) or self._get("users", "user_id", e.user_id, UserState)
                users[e.user_id] = definition.apply_user(u, e)
                it = items.get(e.item_id) or self._get("items", "item_id", e.item_id, ItemState)
                items[e.item_id] = definition.apply_item(it, e)
                n += 1
            self.db.executemany("INSERT OR REPLACE INTO users VALUES (?, ?)",
                                [(k, json.dumps(v.to_dict())) for k, v in users.items()])
            self.db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)",
                                [(k, json.dumps(v.to_dict())) for k, v in items.items()])
            if source is not None and offset is not None:
                self.db.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?)", (source, offset))
            if n:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('tz', ?)", (definition.tz,))
            if self.dedup_window_s is not None and gate.watermark is not None:  # this source's ids past the window
                self.db.execute("DELETE FROM applied WHERE source = ? AND ts < ?",
                                (src, gate.watermark - self.dedup_window_s))
            if before_commit is not None:
                before_commit()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")  # nothing of a failed batch is kept; it will be re-read
            raise
        return n

    def user(self, user_id: int) -> UserState:
        return self._get("users", "user_id", user_id, UserState)

    def item(self, item_id: int) -> ItemState:
        return self._get("items", "item_id", item_id, ItemState)

    # the serving hot path (200 candidates per request): SQLite extracts the fields, which costs
    # about half of json.loads + from_dict per row in Python
    _ITEM_COLUMNS = ", ".join(f"json_extract(state, '$.{f.name}')" for f in fields(ItemState))

    def items(self, item_ids: list[int]) -> list[ItemState]:
        found: dict[int, ItemState] = {}
        for lo in range(0, len(item_ids), 500):  # SQLite's bound-parameter limit
            chunk = item_ids[lo: lo + 500]
            q = f"SELECT item_id, {self._ITEM_COLUMNS} FROM items WHERE item_id IN ({','.join('?' * len(chunk))})"
            found.update((row[0], ItemState(*row[1:])) for row in self.db.execute(q, chunk))
        return [found.get(i, ItemState()) for i in item_ids]

    def item_counts(self, item_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """`items`' counts as two arrays, from the plain columns of `item_counts` (see ITEM_COUNTS)."""
        found: dict[int, tuple[int, int]] = {}
        for lo in range(0, len(item_ids), 500):  # SQLite's bound-parameter limit
            chunk = item_ids[lo: lo + 500]
            q = f"SELECT item_id, exposures, clicks FROM item_counts WHERE item_id IN ({','.join('?' * len(chunk))})"
            found.update((row[0], row[1:]) for row in self.db.execute(q, chunk))
        counts = np.array([found.get(i, (0, 0)) for i in item_ids], dtype=np.int64).reshape(-1, 2)  # (n, 2)
        return counts[:, 0], counts[:, 1]

    def offset(self, source: str) -> int | None:
        row = self.db.execute("SELECT offset FROM offsets WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()


def counts_of(states: list[ItemState]) -> tuple[np.ndarray, np.ndarray]:
    """(exposures, clicks) arrays of item states (`FeatureStore.item_counts` for stores without a faster way)."""
    return (np.fromiter((s.exposures for s in states), np.int64, len(states)),
            np.fromiter((s.clicks for s in states), np.int64, len(states)))


def open_store(spec: str, dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S) -> FeatureStore:
    """`memory`, `sqlite:PATH` (the embedded defaults) or `redis://HOST:PORT/DB`."""
    if spec.startswith("redis://"):
        from edgerec.features.redis_store import RedisStore

        return RedisStore(spec, dedup_window_s=dedup_window_s)
    if spec == "memory":
        return MemoryStore(dedup_window_s)
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.split(":", 1)[1], dedup_window_s)
    raise ConfigError(f"unknown feature store {cut(spec)}; use 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'")
