"""Redis feature store: the same `FeatureStore` interface as the embedded SQLite default (issue 5).

Layout (prefix `edgerec` by default, so one Redis can hold several deployments):

  {prefix}:u:{user_id}    JSON UserState       {prefix}:i:{item_id}    JSON ItemState
  {prefix}:applied_ids    HASH event id -> its source: the idempotency check (HMGET), every source
  {prefix}:applied_at:{src}  ZSET event id -> event ts, one per source: which ids leave the dedup
                          window (edgerec/features/store.py); its highest score is the source's
                          watermark. One writer per source (the offset WATCH), so no races on it
  {prefix}:applied        SET of event ids written before the dedup window existed: still checked,
                          never grown or pruned
  {prefix}:offset:{src}   the source offset the stored state is complete up to

One batch is one MULTI/EXEC transaction holding the new states, the new event ids and the offset,
so Redis holds either all of a batch or none of it. With `appendonly yes` and `appendfsync always`
(what `redis_server_args()` gives and the tests run) a committed batch survives a kill -9 of the
server; an EXEC cut off mid-write is dropped on restart (`aof-load-truncated`). The stream processor
then re-reads that batch from the committed offset and the applied-id set makes the re-read exact.

The offset key is WATCHed while the batch is folded: if another consumer advanced the same source
in between (two processors on one partition), the transaction aborts with a clear error instead of
double-applying. Reads use MGET, writes one pipeline: two round trips per batch, not per event.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable

import numpy as np

from edgerec.errors import EdgerecError, StoreUnavailable
from edgerec.features.definition import Event, FeatureDefinition, ItemState, UserState
from edgerec.features.store import (DEFAULT_DEDUP_WINDOW_S, LateGate, OnLate, check_zone, checked_window,
                                    counts_of, source_key)


def redis_server_args(port: int, data_dir: str) -> list[str]:
    """Command-line flags for a redis-server that keeps every committed batch (tests, the demo)."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--aof-load-truncated", "yes",
            "--protected-mode", "yes"]


class RedisStore:
    """Online features in Redis. `url` like redis://127.0.0.1:6379/0."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "edgerec",
                 dedup_window_s: int | None = DEFAULT_DEDUP_WINDOW_S):
        import redis  # optional dependency: pip install 'edgerec[serve]'

        self._redis = redis
        self.url, self.prefix = url, prefix
        self.dedup_window_s = checked_window(dedup_window_s)
        self.r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._applied_ids, self._legacy_key = f"{prefix}:applied_ids", f"{prefix}:applied"
        self._legacy: bool | None = None  # does a pre-window applied SET exist? (asked once, lazily)

    # keys -------------------------------------------------------------------------------------
    def _u(self, uid: int) -> str:
        return f"{self.prefix}:u:{uid}"

    def _i(self, iid: int) -> str:
        return f"{self.prefix}:i:{iid}"

    def _off(self, source: str) -> str:
        return f"{self.prefix}:offset:{source}"

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as e:
            raise StoreUnavailable(f"Redis at {self.url} is unreachable ({e}); start it or fix --store. "
                                   "The batch in flight was not applied and will be re-read.") from None

    # interface --------------------------------------------------------------------------------
    def _applied_at(self, source: str | None) -> str:
        return f"{self.prefix}:applied_at:{source_key(source)}"

    def watermark(self, source: str | None = None) -> int | None:
        """The newest applied event's ts from `source`."""
        top = self._call(lambda: self.r.zrange(self._applied_at(source), -1, -1, withscores=True))
        return int(top[0][1]) if top else None

    def zone(self) -> str | None:
        """The tz of the first fold (None: nothing applied yet)."""
        v = self._call(self.r.get, f"{self.prefix}:tz")
        return None if v is None else v.decode()

    def claim_zone(self, tz: str) -> str:
        """Record `tz` unless a zone is recorded (SETNX, so two starting services cannot both win)."""
        self._call(self.r.setnx, f"{self.prefix}:tz", tz)
        return self.zone()

    def apply(self, events: Iterable[Event], definition: FeatureDefinition, source: str | None = None,
              offset: int | None = None, on_late: OnLate | None = None,
              before_commit: Callable[[], None] | None = None) -> int:
        return self._call(self._apply, list(events), definition, source, offset, on_late, before_commit)

    def _apply(self, events: list[Event], definition, source, offset, on_late, before_commit) -> int:
        if self._legacy is None:
            self._legacy = bool(self.r.exists(self._legacy_key))
        with self.r.pipeline(transaction=True) as pipe:
            zkey = self._applied_at(source)
            # fencing: nobody else may advance this source (its offset, its applied ids) meanwhile
            pipe.watch(self._off(source) if source is not None else zkey, f"{self.prefix}:tz")  # tz: set once
            zone = pipe.get(f"{self.prefix}:tz")
            check_zone(None if zone is None else zone.decode(), definition, f"Redis at {self.url}")
            top = pipe.zrange(zkey, -1, -1, withscores=True)
            gate = LateGate(int(top[0][1]) if top else None, self.dedup_window_s, on_late)
            ids = [e.event_id for e in events]
            seen = [s is not None for s in pipe.hmget(self._applied_ids, ids)] if ids else []
            if self._legacy and ids:
                seen = [a or bool(b) for a, b in zip(seen, pipe.smismember(self._legacy_key, ids))]
            fresh, batch_ids = [], set()
            for e, s in zip(events, seen):  # in stream order: the late rule is decided per event
                if gate.admits(e) and not s and e.event_id not in batch_ids:  # duplicates inside one batch count once too
                    fresh.append(e)
                    batch_ids.add(e.event_id)
                    gate.applied(e)
            uids = sorted({e.user_id for e in fresh})
            iids = sorted({e.item_id for e in fresh})
            users = {u: UserState.from_dict(json.loads(v)) if v else UserState()
                     for u, v in zip(uids, pipe.mget([self._u(u) for u in uids]) if uids else [])}
            items = {i: ItemState.from_dict(json.loads(v)) if v else ItemState()
                     for i, v in zip(iids, pipe.mget([self._i(i) for i in iids]) if iids else [])}
            for e in fresh:
                definition.apply_user(users[e.user_id], e)
                definition.apply_item(items[e.item_id], e)
            watermark = gate.watermark
            expired: set = set()  # this source's ids past the window: the kept ones and any of this batch
            if self.dedup_window_s is not None and watermark is not None:
                cutoff = watermark - self.dedup_window_s
                expired = set(pipe.zrangebyscore(zkey, "-inf", f"({cutoff}"))  # bounded by the window
                expired |= {e.event_id.encode() for e in fresh if e.ts < cutoff}
            if before_commit is not None:
                before_commit()
            pipe.multi()  # every write below lands in one MULTI/EXEC: all of the batch or none
            if users or items:
                pipe.mset({**{self._u(u): json.dumps(s.to_dict()) for u, s in users.items()},
                           **{self._i(i): json.dumps(s.to_dict()) for i, s in items.items()}})
            if fresh:
                pipe.hset(self._applied_ids, mapping={e.event_id: source_key(source) for e in fresh})
                pipe.zadd(zkey, {e.event_id: e.ts for e in fresh})
            if expired:
                pipe.zremrangebyscore(zkey, "-inf", f"({cutoff}")
                pipe.hdel(self._applied_ids, *expired)
            if source is not None and offset is not None:
                pipe.set(self._off(source), offset)
            if fresh and zone is None:
                pipe.set(f"{self.prefix}:tz", definition.tz)
            try:
                pipe.execute()
            except self._redis.WatchError:
                raise EdgerecError(f"source {source!r} was advanced by another consumer while this batch was "
                                   "folded; run one stream processor per partition (a Kafka consumer group "
                                   "does this). Nothing of this batch was applied.") from None
        return len(fresh)

    def user(self, user_id: int) -> UserState:
        v = self._call(self.r.get, self._u(user_id))
        return UserState.from_dict(json.loads(v)) if v else UserState()

    def item(self, item_id: int) -> ItemState:
        v = self._call(self.r.get, self._i(item_id))
        return ItemState.from_dict(json.loads(v)) if v else ItemState()

    def items(self, item_ids: list[int]) -> list[ItemState]:
        vals = self._call(self.r.mget, [self._i(i) for i in item_ids]) if item_ids else []
        return [ItemState.from_dict(json.loads(v)) if v else ItemState() for v in vals]

    def item_counts(self, item_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return counts_of(self.items(item_ids))

    def offset(self, source: str) -> int | None:
        v = self._call(self.r.get, self._off(source))
        return None if v is None else int(v)

    def close(self) -> None:
        self.r.close()
