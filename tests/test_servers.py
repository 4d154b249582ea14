"""The online path against REAL servers: Redis as the feature store, a Kafka broker as the stream.

Fault tests: Redis killed (SIGKILL) and restarted mid-stream; a Kafka consumer killed midway and a new
group member taking over. Both must end with exactly the state of folding every event once.
"""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from edgerec.errors import StoreUnavailable
from edgerec.features.definition import FeatureDefinition
from edgerec.features.store import MemoryStore, open_store
from edgerec.serve.stream import FileEventSource, events_from_log, run_stream, write_event_file

DEF = FeatureDefinition(max_len=10, n_positions=6)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def log_events(tiny_sim):
    return list(events_from_log(tiny_sim.dataset.events))


@pytest.fixture(scope="module")
def reference(log_events):
    ref = MemoryStore()
    ref.apply(log_events, DEF)
    return ref


def _snapshot(store, events):
    users = sorted({e.user_id for e in events})
    items = sorted({e.item_id for e in events})
    return ({u: store.user(u).to_dict() for u in users}, {i: store.item(i).to_dict() for i in items})


def _redis_store(server):
    from edgerec.features.redis_store import RedisStore

    return RedisStore(server.url, prefix=f"t{uuid.uuid4().hex[:8]}")  # one namespace per test


# ---- Redis -------------------------------------------------------------------------------------
def test_redis_store_equals_the_fold_and_replays_are_no_ops(redis_server, log_events, reference, tmp_path):
    store = _redis_store(redis_server)
    path = write_event_file(log_events, tmp_path / "ev.jsonl")
    stats = run_stream(FileEventSource(path), store, DEF, batch_size=700)
    assert stats.applied == len(log_events) and stats.duplicates == 0
    assert _snapshot(store, log_events) == _snapshot(reference, log_events)
    src, last = FileEventSource(path).name, len(log_events) - 1
    assert store.apply(log_events[-500:], DEF, src, last) == 0  # the newest events once more
    late = []  # the oldest ones are past the 7-day dedup window: not applied, handed back with the reason
    assert store.apply(log_events[:500], DEF, src, last, on_late=lambda e, why: late.append(e)) == 0
    assert late == log_events[:500]
    assert _snapshot(store, log_events) == _snapshot(reference, log_events)
    # ids are kept for the window only (the log spans 14 days), and the watermark is the newest event
    cutoff = max(e.ts for e in log_events) - store.dedup_window_s
    inside = sum(e.ts >= cutoff for e in log_events)
    assert store.r.zcard(store._applied_at(src)) == store.r.hlen(store._applied_ids) == inside < len(log_events)
    assert store.watermark(src) == max(e.ts for e in log_events)
    assert store.offset(FileEventSource(path).name) == len(log_events) - 1
    assert type(open_store(redis_server.url)).__name__ == "RedisStore"  # what --store redis://... opens
    assert store.zone() == "UTC"  # the zone of its first fold: another one is refused, nothing applied
    from edgerec.errors import ConfigError

    with pytest.raises(ConfigError, match="folded in time zone UTC, and this fold uses Asia/Shanghai"):
        store.apply(log_events[-1:], FeatureDefinition(max_len=DEF.max_len, tz="Asia/Shanghai"), "other", 0)
    assert store.offset("other") is None and _snapshot(store, log_events) == _snapshot(reference, log_events)
    assert store.claim_zone("Asia/Shanghai") == "UTC"  # a recorded zone stays; a new prefix takes the claim
    assert _redis_store(redis_server).claim_zone("UTC+8") == "UTC+8"


def test_redis_store_still_honours_ids_written_before_the_dedup_window(redis_server):
    from edgerec.features.definition import Event

    store = _redis_store(redis_server)
    store.r.sadd(f"{store.prefix}:applied", "old")  # the pre-window layout: a plain SET of ids
    assert store.apply([Event("old", 1, 2, 10 ** 9, "click", 1), Event("new", 1, 2, 10 ** 9, "click", 1)], DEF) == 1
    assert store.user(1).clicks == 1


def test_redis_killed_and_restarted_mid_stream_loses_and_doubles_nothing(tmp_path, log_events, reference):
    from tests.servers import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        store = _redis_store(server)
        path = write_event_file(log_events, tmp_path / "ev.jsonl")
        real_apply, calls = store.apply, {"n": 0}

        def apply_then_crash_on_4th(events, definition, source=None, offset=None, **kw):
            calls["n"] += 1
            if calls["n"] == 4:  # the server dies (SIGKILL) with batch 4 in flight ...
                server.kill()
                threading.Timer(0.5, server.start).start()  # ... and an operator restarts it
            return real_apply(events, definition, source, offset, **kw)

        store.apply = apply_then_crash_on_4th
        stats = run_stream(FileEventSource(path), store, DEF, batch_size=500, retries=30, retry_wait=0.3)
        assert stats.retries >= 1  # it really was down
        assert stats.duplicates == 0  # batch 4 was never half-applied, so its re-read is all new
        assert sum(store.item(i).exposures + store.item(i).clicks for i in {e.item_id for e in log_events}) \
            == len(log_events)
        assert _snapshot(store, log_events) == _snapshot(reference, log_events)
        server.kill()  # and once more, after everything was committed: AOF keeps it all
        server.start()
        assert _snapshot(_redis_store_same(store, server), log_events) == _snapshot(reference, log_events)
    finally:
        server.stop()


def _redis_store_same(store, server):
    from edgerec.features.redis_store import RedisStore

    return RedisStore(server.url, prefix=store.prefix)


def test_redis_down_is_a_clear_error_not_a_traceback(tmp_path):
    from edgerec.features.redis_store import RedisStore
    from tests.servers import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable, match="unreachable.*re-read"):
        store.offset("x")


# ---- Kafka -------------------------------------------------------------------------------------
def _topic(broker, partitions=2) -> str:
    from edgerec.serve.kafka import ensure_topic

    name = f"events-{uuid.uuid4().hex[:8]}"
    ensure_topic(broker.bootstrap, name, partitions)
    return name


def test_kafka_consumer_killed_midway_then_a_new_member_resumes(kafka_broker, log_events, reference, tmp_path):
    from edgerec.features.store import SQLiteStore
    from edgerec.serve.kafka import KafkaEventSink, KafkaEventSource

    topic = _topic(kafka_broker)
    assert KafkaEventSink(kafka_broker.bootstrap, topic).send(log_events) == len(log_events)
    store = SQLiteStore(tmp_path / "features.db")
    real_apply, calls = store.apply, {"n": 0}

    def die_in_5th_batch(events, definition, source=None, offset=None, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Crash()  # the process dies before this batch's transaction commits
        return real_apply(events, definition, source, offset, **kw)

    store.apply = die_in_5th_batch
    first = KafkaEventSource(kafka_broker.bootstrap, topic, group_id="g-kill", idle_timeout=5)
    with pytest.raises(Crash):
        run_stream(first, store, DEF, batch_size=400)
    first.close()
    store.apply = real_apply
    partial = sum(store.item(i).exposures + store.item(i).clicks for i in {e.item_id for e in log_events})
    assert 0 < partial < len(log_events)

    second = KafkaEventSource(kafka_broker.bootstrap, topic, group_id="g-kill", idle_timeout=5)
    stats = run_stream(second, store, DEF, batch_size=400)
    second.close()
    assert stats.duplicates == 0 and stats.applied == len(log_events) - partial
    assert _snapshot(store, log_events) == _snapshot(reference, log_events)

    # a new group reads the topic from the beginning: every event is a duplicate, nothing changes
    replay = KafkaEventSource(kafka_broker.bootstrap, topic, group_id="g-replay", idle_timeout=5)
    again = run_stream(replay, store, DEF, batch_size=400)
    replay.close()
    assert again.applied == 0 and again.duplicates == 0 and again.read == 0  # offsets come from the store
    assert _snapshot(store, log_events) == _snapshot(reference, log_events)


def test_kafka_malformed_messages_go_to_the_rejected_topic(kafka_broker, tmp_path):
    import confluent_kafka as ck

    from edgerec.serve.kafka import KafkaEventSource

    topic = _topic(kafka_broker, partitions=1)
    p = ck.Producer({"bootstrap.servers": kafka_broker.bootstrap})
    good = {"event_id": "a", "user_id": 1, "item_id": 2, "ts": 1_700_000_000, "kind": "click", "position": 2}
    for v in (json.dumps(good), "{not json", json.dumps({**good, "event_id": "b", "kind": "purchase"})):
        p.produce(topic, key="1", value=v)
    p.flush(10)
    store = MemoryStore()
    src = KafkaEventSource(kafka_broker.bootstrap, topic, group_id="g-dlq", idle_timeout=4)
    stats = run_stream(src, store, DEF)
    src.close()
    assert stats.applied == 1 and stats.rejected == 2
    c = ck.Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "dlq-reader",
                     "auto.offset.reset": "earliest"})
    c.assign([ck.TopicPartition(f"{topic}.rejected", 0, 0)])
    got = []
    for _ in range(40):
        m = c.poll(0.25)
        if m is not None and not m.error():
            got.append(json.loads(m.value()))
        if len(got) == 2:
            break
    c.close()
    assert [g["offset"] for g in got] == [1, 2]
    assert "not JSON" in got[0]["error"] and "purchase" in got[1]["error"]
