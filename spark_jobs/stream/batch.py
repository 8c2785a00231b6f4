"""One micro-batch of the streaming sidecar: records of the events topic in, their three effects out.

For every record (partition, offset, value bytes):
1. decode it as a `BehaviorEvent` and check it again (`finegrain.events.validation.check_stored_event`:
   another producer than the API may write to the topic); an undecodable or invalid record becomes a
   `DeadLetter` with the reason, produced to the dead-letter topic, and the batch goes on;
2. the accepted events (the first of any repeated `event_id` in the batch) are appended to the event
   archive (`finegrain.events.archive`);
3. each user's real-time profile is read from Redis, folded with the user's events
   (`finegrain.features.realtime.fold`, with the item lookup of the current features version for the
   affinities) and written back with its TTL, all in two pipelined round trips.

Exactly once, even when Spark replays a batch after a crash: the archive file is named after the
batch id (a replay replaces it), and a profile remembers the last offset it folded per partition (a
replay folds nothing twice). Dead letters are at least once: a replayed batch may produce one again,
with the same `source` (topic, partition and offset) to tell them apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis
from google.protobuf.message import DecodeError

from finegrain.codecs import encode
from finegrain.events.archive import EventArchive
from finegrain.events.validation import check_stored_event
from finegrain.features.realtime import Action, RealtimeConfig, fold
from finegrain.features.user import ItemLookup
from finegrain.schemas import BehaviorEvent, DeadLetter, ItemFeatures, RealtimeProfile
from finegrain.settings import Settings
from finegrain.storage.clients import kafka_producer, mongo_client, redis_client
from finegrain.storage.contract import Dataset, KafkaTopics, MongoCollections, RedisKeys
from finegrain.storage.lists import current_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One record of the events topic."""

    partition: int
    offset: int
    value: bytes
    broker_ms: int = 0  # when the broker appended it (the producer's time): where freshness starts


@dataclass
class BatchOutcome:
    batch_id: int
    records: int = 0
    accepted: int = 0
    repeated: int = 0  # an event id already seen in the batch
    dead_letters: int = 0
    users: int = 0
    archived: dict[str, int] = field(default_factory=dict)  # event date -> rows
    end_offsets: dict[int, int] = field(default_factory=dict)  # partition -> last offset + 1
    newest_event_ms: int = 0
    newest_broker_ms: int = 0
    seconds: float = 0.0


class ItemLookups:
    """The item lookup of the current features version, reloaded when the pointer moves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version: str | None = None
        self.lookup: ItemLookup | None = None

    def current(self, client: redis.Redis) -> ItemLookup | None:
        version = current_version(client, Dataset.FEATURES)
        if version is not None and version != self.version:
            self.lookup = self._load(version)
            self.version = version
        return self.lookup

    def _load(self, version: str) -> ItemLookup | None:
        mongo = mongo_client(self.settings)
        try:
            collection = MongoCollections.versioned(Dataset.FEATURES, version)
            documents = mongo[self.settings.mongo_database][collection].find({"kind": "item"})
            items = [ItemFeatures.FromString(document["pb"]) for document in documents]
        finally:
            mongo.close()
        log.info("item lookup of features %s: %d items", version, len(items))
        return ItemLookup.from_items(items) if items else None


class BatchProcessor:
    """What the sidecar's `foreachBatch` calls; holds the clients for the life of the query."""

    def __init__(self, settings: Settings, archive: EventArchive, config: RealtimeConfig | None = None
                 ) -> None:
        self.settings = settings
        self.archive = archive
        self.config = config or RealtimeConfig()
        self.topics = KafkaTopics(settings.kafka_topic_prefix)
        self.redis = redis_client(settings)
        self.items = ItemLookups(settings)
        self.producer = kafka_producer(settings)

    def close(self) -> None:
        self.producer.flush(10)
        self.redis.close()

    def process(self, batch_id: int, records: Iterable[Record]) -> BatchOutcome:
        started = time.perf_counter()
        outcome = BatchOutcome(batch_id)
        now_ms = int(time.time() * 1000)
        accepted: list[tuple[Record, BehaviorEvent]] = []
        seen: set[str] = set()
        for record in records:
            outcome.records += 1
            outcome.end_offsets[record.partition] = max(outcome.end_offsets.get(record.partition, 0),
                                                        record.offset + 1)
            outcome.newest_broker_ms = max(outcome.newest_broker_ms, record.broker_ms)
            event, reason, field_name = self._check(record, now_ms)
            if event is None:
                self._dead_letter(record, reason, field_name, now_ms)
                outcome.dead_letters += 1
            elif event.event_id in seen:
                outcome.repeated += 1
            else:
                seen.add(event.event_id)
                accepted.append((record, event))
        outcome.accepted = len(accepted)
        if accepted:
            outcome.archived = self.archive.write_batch(batch_id, [event for _, event in accepted])
            outcome.users = self._update_profiles(accepted)
            outcome.newest_event_ms = max(event.timestamp_ms for _, event in accepted)
        if outcome.dead_letters:
            self.producer.flush(10)
        outcome.seconds = time.perf_counter() - started
        return outcome

    @staticmethod
    def _check(record: Record, now_ms: int) -> tuple[BehaviorEvent | None, str, str]:
        try:
            event = BehaviorEvent.FromString(record.value)
        except (DecodeError, ValueError) as exc:
            return None, f"undecodable: not a finegrain.v1.BehaviorEvent ({exc})", "value"
        problems = check_stored_event(event, now_ms)
        if problems:
            return None, "; ".join(f"{name} {message}" for name, message in problems), problems[0][0]
        return event, "", ""

    def _dead_letter(self, record: Record, reason: str, field_name: str, now_ms: int) -> None:
        source = f"{self.topics.events}[{record.partition}]@{record.offset}"
        letter = DeadLetter(payload=record.value, reason=reason, source=source, received_ms=now_ms,
                            field=field_name)
        self.producer.produce(self.topics.events_dead_letter, value=encode(letter), key=source.encode())
        self.producer.poll(0)

    def _update_profiles(self, accepted: Sequence[tuple[Record, BehaviorEvent]]) -> int:
        by_user: dict[str, list[Action]] = {}
        for record, event in accepted:
            by_user.setdefault(event.user_id, []).append(Action(
                event.item_id, int(event.type), event.timestamp_ms, event.context.session_id,
                record.partition, record.offset))
        users = sorted(by_user)
        keys = [RedisKeys.realtime_profile(user) for user in users]
        items = self.items.current(self.redis)
        stored: list[bytes | None] = self.redis.mget(keys)  # type: ignore[assignment]
        pipe = self.redis.pipeline(transaction=False)
        for user, key, value in zip(users, keys, stored, strict=True):
            previous = _decode_profile(value, key)
            profile = fold(previous, user, by_user[user], items, self.config)
            pipe.set(key, encode(profile), ex=self.config.ttl_s)
        pipe.execute()
        return len(users)


def _decode_profile(value: bytes | None, key: str) -> RealtimeProfile | None:
    if value is None:
        return None
    try:
        return RealtimeProfile.FromString(bytes(value))
    except DecodeError:
        # A profile nobody can read is rebuilt from the next events rather than stopping the stream.
        log.warning("%s held an undecodable RealtimeProfile: replaced", key)
        return None
