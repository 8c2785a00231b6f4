"""Reading back what the API produced to a topic, for the integration tests."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Message, TopicPartition

from finegrain.settings import Settings
from finegrain.storage.clients import kafka_consumer


class TopicReader:
    """Reads a topic of this test session's namespace from where it last stopped, by assigning its
    partitions (no consumer-group join to wait for). Each test reads everything it produced.

    Watermarks only serve to prove that nothing was written: tansu reports the high watermark as the
    last record batch's base offset + 1, not the last offset + 1, so they cannot be used as positions;
    but any write moves them."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer: Consumer = kafka_consumer(settings, group_id=f"{settings.kafka_topic_prefix}.reader")
        metadata = self.consumer.list_topics(topic, timeout=10)
        self.position = dict.fromkeys(sorted(metadata.topics[topic].partitions), 0)

    def watermarks(self) -> dict[int, int]:
        return {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in self.position}

    def read_new(self, count: int, timeout_s: float = 10.0) -> list[Message]:
        """Exactly `count` records after the last read, checked by a short wait for any more."""
        self.consumer.assign([TopicPartition(self.topic, p, o) for p, o in self.position.items()])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.consumer.poll(0.2)
            if message is None:
                if len(messages) >= count:
                    break
            elif message.error() is None:
                messages.append(message)
                self.position[message.partition()] = message.offset() + 1
        self.consumer.unassign()
        assert len(messages) == count, f"{len(messages)} new records in {self.topic}, expected {count}"
        return messages

    def close(self) -> None:
        self.consumer.close()
