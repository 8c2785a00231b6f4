"""The Kafka source's offset logic, without a broker: the checkpointed form, resuming, the per-batch
limit and availableNow's cap (`spark_jobs.stream.kafka_source`)."""

from __future__ import annotations

import json

import pytest

from spark_jobs.stream.kafka_source import (
    KafkaSourceError,
    KafkaSourceOptions,
    cap_offsets,
    from_offset,
    limit_end_offsets,
    resume_positions,
    to_offset,
)


def test_the_checkpointed_offset_is_json_with_partition_keys() -> None:
    offset = to_offset({1: 7, 0: 12})
    assert offset == {"0": 12, "1": 7}
    assert from_offset(json.loads(json.dumps(offset))) == {0: 12, 1: 7}


def test_resume_from_the_checkpoint_and_start_a_new_partition_at_its_earliest() -> None:
    ranges = {0: (0, 50), 1: (0, 40), 2: (3, 9)}
    assert resume_positions({0: 20, 1: 40}, ranges, "t") == {0: 20, 1: 40, 2: 3}


@pytest.mark.parametrize(
    ("start", "ranges", "message"),
    [
        ({0: 60}, {0: (0, 50)}, r"t\[0\]: the checkpoint is at offset 60 but the topic ends at 50"),
        ({0: 2}, {0: (5, 50)}, r"t\[0\]: the checkpoint is at offset 2 but the topic starts at 5"),
        ({0: 1, 1: 1}, {0: (0, 50)}, r"partitions \[1\] of the checkpoint are gone"),
    ],
)
def test_lost_data_is_an_error_not_a_skip(
    start: dict[int, int], ranges: dict[int, tuple[int, int]], message: str
) -> None:
    with pytest.raises(KafkaSourceError, match=message):
        resume_positions(start, ranges, "t")


def test_the_limit_leaves_a_small_backlog_whole() -> None:
    assert limit_end_offsets({0: 10, 1: 0}, {0: 20, 1: 5}, 100) == {0: 20, 1: 5}


def test_the_limit_is_shared_in_proportion_to_the_backlog() -> None:
    assert limit_end_offsets({0: 0, 1: 100}, {0: 300, 1: 200}, 40) == {0: 30, 1: 110}


@pytest.mark.parametrize("max_rows", [1, 2, 3, 7, 299])
def test_the_limit_is_exact_never_past_the_end_and_always_progresses(max_rows: int) -> None:
    start = {0: 0, 1: 5, 2: 9, 3: 4}
    end = {0: 100, 1: 6, 2: 9, 3: 205}
    limited = limit_end_offsets(start, end, max_rows)
    assert sum(limited[p] - start[p] for p in start) == max_rows
    assert all(start[p] <= limited[p] <= end[p] for p in start)


def test_available_now_caps_at_its_target_and_holds_back_new_partitions() -> None:
    start = {0: 5, 1: 0, 2: 0}
    assert cap_offsets({0: 50, 1: 30, 2: 8}, start, {0: 20, 1: 40}) == {0: 20, 1: 30, 2: 0}


def test_options_use_the_names_of_sparks_kafka_format() -> None:
    options = KafkaSourceOptions.parse(
        {"kafka.bootstrap.servers": "h:1", "subscribe": "t", "startingOffsets": "Latest",
         "maxOffsetsPerTrigger": "500", "fetchTimeoutMs": "2500"}
    )
    assert options == KafkaSourceOptions("h:1", "t", "latest", 500, 2.5)
    defaults = KafkaSourceOptions.parse({"kafka.bootstrap.servers": "h:1", "subscribe": "t"})
    assert (defaults.starting_offsets, defaults.max_records_per_batch) == ("earliest", None)


@pytest.mark.parametrize(
    "options",
    [
        {"subscribe": "t"},
        {"kafka.bootstrap.servers": "h:1", "subscribe": "a,b"},
        {"kafka.bootstrap.servers": "h:1", "subscribe": "t", "startingOffsets": '{"t": {"0": 5}}'},
        {"kafka.bootstrap.servers": "h:1", "subscribe": "t", "maxOffsetsPerTrigger": "0"},
    ],
)
def test_bad_options_are_refused(options: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        KafkaSourceOptions.parse(options)
