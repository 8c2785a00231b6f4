"""Protobuf versus JSON for the values Finegrain stores and streams, on records built from the real data.

Record kinds: item catalogue entries with their features (`ItemFeatures`), per-user purchase
summaries with the user x item history (`UserProfile`), and purchase events (`BehaviorEvent`).
JSON is measured in two layouts: `natural` (what a JSON API would send: a list of objects for the
history) and `mirror` (exactly the protobuf structure, parallel arrays), so the figures do not flatter
protobuf by comparing different shapes.

Timing: the machine's CPU speed drifts, so each round times protobuf and JSON back to back and the
reported speed ratio is the median of the per-round ratios. "decode" parses the bytes; "decode+read"
also reads every field, since upb parses eagerly but builds Python objects lazily.

Usage: .venv/bin/python bench/protobuf_vs_json.py [--rounds 7] [--json]
   (or `finegrain bench run protobuf_vs_json`)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from finegrain.codecs import encode
from finegrain.console import console, print_json_line, summary_table
from finegrain.data.retail import load_online_retail, read_catalog, read_events
from finegrain.features.catalog import item_attributes_frame
from finegrain.features.item import item_features
from finegrain.features.user import ItemLookup, user_profiles
from finegrain.schemas import BehaviorEvent, EventType, ItemFeatures, UserProfile
from finegrain.settings import get_settings


def feature_records(
    events: pd.DataFrame, catalog: pd.DataFrame
) -> tuple[list[ItemFeatures], list[UserProfile]]:
    """The real feature records of the features job, as of the day after the last event."""
    as_of = events["timestamp"].max().normalize() + pd.Timedelta(days=1)
    attributes = item_attributes_frame(catalog)
    items = item_features(events, as_of, attributes, version="bench")
    users = list(user_profiles(events, as_of, ItemLookup.from_attributes(attributes), version="bench"))
    return items, users


def event_records(events: pd.DataFrame, limit: int = 50_000) -> list[BehaviorEvent]:
    sample = events.head(limit)
    return [
        BehaviorEvent(
            event_id=row.event_id,
            user_id=row.user_id,
            item_id=row.item_id,
            type=EventType.PURCHASE,
            quantity=int(row.quantity),
            price=float(row.price),
            timestamp_ms=_ms(row.timestamp),
        )
        for row in sample.itertuples(index=False)
    ]


def natural_json(message: Message) -> dict[str, Any]:
    """The JSON a hand-written API would use: the history as a list of objects."""
    mirror = mirror_json(message)
    history = mirror.pop("history", None)
    if history is not None:
        columns = [k for k in ("item_ids", "times_bought", "last_bought_day", "quantity") if k in history]
        mirror["history"] = [
            {
                "item_id": values[0],
                **dict(zip(["times_bought", "last_bought_day", "quantity"], values[1:], strict=True)),
            }
            for values in zip(*(history[c] for c in columns), strict=True)
        ]
    return mirror


def mirror_json(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=False
    )


def read_all_fields(message: Message) -> int:
    """Touch every field, as a consumer of the record would."""
    touched = 0
    for _, value in message.ListFields():
        if isinstance(value, Message):
            touched += read_all_fields(value)
        elif hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
            touched += len(list(value))
        else:
            touched += 1
    return touched


def read_all_json(value: Any) -> int:
    if isinstance(value, dict):
        return sum(read_all_json(v) for v in value.values())
    if isinstance(value, list):
        return sum(read_all_json(v) for v in value)
    return 1


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(kind: str, messages: Sequence[Message], rounds: int) -> dict[str, float | int | str]:
    message_type = type(messages[0])
    proto_blobs = [encode(m) for m in messages]
    natural = [json.dumps(natural_json(m), separators=(",", ":")).encode() for m in messages]
    mirror_dicts = [mirror_json(m) for m in messages]
    mirror = [json.dumps(d, separators=(",", ":")).encode() for d in mirror_dicts]

    def proto_decode() -> None:
        for blob in proto_blobs:
            message_type.FromString(blob)

    def proto_decode_read() -> None:
        for blob in proto_blobs:
            read_all_fields(message_type.FromString(blob))

    def json_decode(blobs: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for blob in blobs:
                json.loads(blob)

        return run

    def json_decode_read(blobs: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            for blob in blobs:
                read_all_json(json.loads(blob))

        return run

    def proto_encode() -> None:
        for message in messages:
            encode(message)

    def json_encode() -> None:
        for d in mirror_dicts:
            json.dumps(d, separators=(",", ":")).encode()

    ratios: dict[str, list[float]] = {"decode": [], "decode+read": [], "decode vs natural": [], "encode": []}
    for _ in range(rounds):
        ratios["decode"].append(_time(json_decode(mirror)) / _time(proto_decode))
        ratios["decode+read"].append(_time(json_decode_read(mirror)) / _time(proto_decode_read))
        ratios["decode vs natural"].append(_time(json_decode_read(natural)) / _time(proto_decode_read))
        ratios["encode"].append(_time(json_encode) / _time(proto_encode))
    proto_bytes = sum(map(len, proto_blobs))
    return {
        "kind": kind,
        "records": len(messages),
        "proto_bytes": proto_bytes,
        "json_mirror_bytes": sum(map(len, mirror)),
        "json_natural_bytes": sum(map(len, natural)),
        "bytes_ratio_vs_mirror": proto_bytes / sum(map(len, mirror)),
        "bytes_ratio_vs_natural": proto_bytes / sum(map(len, natural)),
        **{f"{name}_speedup": statistics.median(values) for name, values in ratios.items()},
    }


def main(
    rounds: Annotated[
        int, typer.Option(help="Timing rounds per record kind (the median ratio is reported).")
    ] = 7,
    events_path: Annotated[
        Path | None, typer.Option("--events", help="Canonical events Parquet; default: load the real data.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the figures as one JSON line at the end.")
    ] = False,
) -> None:
    """Bytes and speed of protobuf versus JSON for catalogue entries, user summaries and events."""
    settings = get_settings()
    path = events_path or settings.events_path
    with console.status("reading the real data ..."):
        if not path.exists():
            load_online_retail(settings.source_csv, path.parent)
        events = read_events(path)
        catalog = read_catalog(path.parent)
    with console.status("building records with the features job's definitions ..."):
        items, users = feature_records(events, catalog)
        kinds = {"item catalogue": items, "user summaries": users, "purchase events": event_records(events)}
    results = []
    for kind, messages in kinds.items():
        with console.status(f"timing {kind} ({len(messages):,} records, {rounds} rounds) ..."):
            results.append(measure(kind, messages, rounds))
    proto_total = sum(int(r["proto_bytes"]) for r in results)
    mirror_total = sum(int(r["json_mirror_bytes"]) for r in results)
    rows = [
        (
            r["kind"],
            r["records"],
            r["proto_bytes"],
            r["json_mirror_bytes"],
            r["json_natural_bytes"],
            f"{r['bytes_ratio_vs_mirror']:.0%}",
            f"{r['decode_speedup']:.2f}x",
            f"{r['decode+read_speedup']:.2f}x",
            f"{r['encode_speedup']:.2f}x",
        )
        for r in results
    ]
    console.print(
        summary_table(
            "Protobuf vs JSON (targets: bytes <= 50% of JSON, decode >= 2x faster)",
            rows,
            [
                "records",
                "n",
                "proto B",
                "JSON B",
                "JSON (natural) B",
                "proto/JSON bytes",
                "decode",
                "decode+read",
                "encode",
            ],
        )
    )
    summary = {
        "bytes_ratio": proto_total / mirror_total,
        "min_decode_speedup": min(float(r["decode_speedup"]) for r in results),
        "min_decode_read_speedup": min(float(r["decode+read_speedup"]) for r in results),
        "kinds": results,
    }
    console.print(
        f"all records: protobuf is {summary['bytes_ratio']:.0%} of the JSON bytes; slowest kind decodes "
        f"{summary['min_decode_speedup']:.2f}x faster ({summary['min_decode_read_speedup']:.2f}x with reads)"
    )
    if as_json:
        print_json_line(summary)


def _ms(value: pd.Timestamp) -> int:
    return int(pd.Timestamp(value).value // 1_000_000)


if __name__ == "__main__":
    typer.run(main)
