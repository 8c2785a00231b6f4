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

import numpy as np
import pandas as pd
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from finegrain.cli.output import console, print_json_line, summary_table
from finegrain.codecs import encode
from finegrain.data.retail import EVENTS_FILE, load_online_retail, read_events
from finegrain.features.text import description_terms
from finegrain.schemas import (
    BehaviorEvent,
    EventType,
    ItemFeatures,
    PurchaseHistory,
    UserProfile,
    WindowStats,
)
from finegrain.settings import get_settings

EPOCH = pd.Timestamp(0, tz="UTC")


def item_records(events: pd.DataFrame) -> list[ItemFeatures]:
    as_of = events["timestamp"].max() + pd.Timedelta(days=1)
    ts = events["timestamp"]
    grouped = events.groupby("item_id")
    stats = pd.DataFrame(
        {
            "description": grouped["description"].agg(lambda s: s.mode().iat[0]),
            "price": grouped["price"].median(),
            "buyers": grouped["user_id"].nunique(),
            "units": grouped["quantity"].sum(),
            "revenue": (events["price"] * events["quantity"]).groupby(events["item_id"]).sum(),
            "first_seen": grouped["timestamp"].min(),
            "last_seen": grouped["timestamp"].max(),
            **{
                f"pop{days}": (ts >= as_of - pd.Timedelta(days=days)).groupby(events["item_id"]).sum()
                for days in (7, 30, 90)
            },
        }
    )
    repeat_days = events.assign(day=ts.dt.floor("D")).groupby(["item_id", "user_id"])["day"].nunique()
    stats["repurchase"] = (repeat_days > 1).groupby(level=0).mean()
    as_of_ms = int(as_of.value // 1_000_000)
    return [
        ItemFeatures(
            item_id=item_id,
            description=row.description,
            price=float(row.price),
            price_band=int(np.clip(np.log2(max(row.price, 0.01)) + 4, 0, 9)),
            terms=description_terms(row.description),
            popularity_7d=int(row.pop7),
            popularity_30d=int(row.pop30),
            popularity_90d=int(row.pop90),
            distinct_buyers=int(row.buyers),
            repurchase_rate=float(row.repurchase),
            trend=float(row.pop7 * 30 / 7 / max(row.pop30, 1)),
            first_seen_ms=_ms(row.first_seen),
            last_seen_ms=_ms(row.last_seen),
            as_of_ms=as_of_ms,
            units_sold=int(row.units),
            revenue=float(row.revenue),
            version="bench",
        )
        for item_id, row in stats.iterrows()
    ]


def user_records(events: pd.DataFrame) -> list[UserProfile]:
    as_of = events["timestamp"].max() + pd.Timedelta(days=1)
    as_of_ms = _ms(as_of)
    events = events.assign(spend=events["price"] * events["quantity"], day=events["timestamp"].dt.floor("D"))
    records = []
    for user_id, lines in events.groupby("user_id", sort=True):
        per_item = lines.groupby("item_id").agg(
            times=("invoice", "nunique"), last=("timestamp", "max"), quantity=("quantity", "sum")
        )
        baskets = lines["invoice"].nunique()
        windows = []
        for days in (7, 30, 90, 365):
            recent = lines[lines["timestamp"] >= as_of - pd.Timedelta(days=days)]
            windows.append(
                WindowStats(
                    days=days,
                    baskets=recent["invoice"].nunique(),
                    lines=len(recent),
                    spend=float(recent["spend"].sum()),
                )
            )
        spend = float(lines["spend"].sum())
        records.append(
            UserProfile(
                user_id=str(user_id),
                as_of_ms=as_of_ms,
                country=lines["country"].iat[0],
                purchase_lines=len(lines),
                baskets=baskets,
                distinct_items=len(per_item),
                total_spend=spend,
                avg_basket_value=spend / baskets,
                avg_basket_size=len(lines) / baskets,
                avg_item_price=float(lines["price"].mean()),
                days_since_last_purchase=int((as_of - lines["timestamp"].max()).days),
                days_since_first_purchase=int((as_of - lines["timestamp"].min()).days),
                windows=windows,
                history=PurchaseHistory(
                    item_ids=per_item.index.tolist(),
                    times_bought=per_item["times"].tolist(),
                    last_bought_day=((per_item["last"] - EPOCH) // pd.Timedelta(days=1)).tolist(),
                    quantity=per_item["quantity"].astype(float).tolist(),
                ),
                version="bench",
            )
        )
    return records


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
    path = events_path or settings.data_dir / "retail" / EVENTS_FILE
    with console.status("reading the real data ..."):
        if not path.exists():
            load_online_retail(settings.source_csv, path.parent)
        events = read_events(path)
    with console.status("building records ..."):
        kinds = {
            "item catalogue": item_records(events),
            "user summaries": user_records(events),
            "purchase events": event_records(events),
        }
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
