"""One fixed example of every stored or streamed message, built from real rows of the data set."""

from __future__ import annotations

from google.protobuf.message import Message

from finegrain.schemas import (
    ActionCounts,
    BehaviorEvent,
    DataSnapshot,
    DeadLetter,
    EventContext,
    EventType,
    ItemFeatureMatrix,
    ItemFeatures,
    ModelManifest,
    PurchaseHistory,
    RealtimeProfile,
    RecentAction,
    ScoredItemList,
    UserProfile,
    WindowStats,
)

# 2009-12-01 07:45:00, the first line of the file (invoice 489434, customer 13085).
FIRST_EVENT_MS = 1259653500000


def examples() -> dict[str, Message]:
    event = BehaviorEvent(
        event_id="489434-1",
        user_id="13085",
        item_id="85048",
        type=EventType.PURCHASE,
        quantity=12,
        price=6.95,
        timestamp_ms=FIRST_EVENT_MS,
        context=EventContext(scene="home", country="United Kingdom", extra={"b": "2", "a": "1"}),
    )
    return {
        "BehaviorEvent": event,
        "DeadLetter": DeadLetter(
            payload=b'{"user_id": 13085}',
            reason="item_id: missing",
            source="finegrain.events",
            received_ms=FIRST_EVENT_MS,
            field="item_id",
        ),
        "UserProfile": UserProfile(
            user_id="13085",
            as_of_ms=FIRST_EVENT_MS,
            country="United Kingdom",
            purchase_lines=3,
            baskets=1,
            distinct_items=3,
            total_spend=245.4,
            windows=[WindowStats(days=30, baskets=1, lines=3, spend=245.4)],
            preferred_terms=["lights", "cherry"],
            preferred_price_band=3,
            history=PurchaseHistory(
                item_ids=["85048", "79323P", "79323W"],
                times_bought=[1, 1, 1],
                last_bought_day=[14579, 14579, 14579],
                quantity=[12, 12, 12],
            ),
            version="20091202T000000",
        ),
        "RealtimeProfile": RealtimeProfile(
            user_id="13085",
            updated_ms=FIRST_EVENT_MS,
            recent=[RecentAction(item_id="85048", type=EventType.VIEW, timestamp_ms=FIRST_EVENT_MS)],
            counts_by_type={4: 1, 1: 3},
            window_start_ms=FIRST_EVENT_MS - 1_800_000,
            buckets=[ActionCounts(start_ms=FIRST_EVENT_MS - 60_000, counts={1: 3, 4: 1})],
            term_affinity={"christmas": 1.5},
            category_affinity={"decoration": 0.75},
            session_id="s-1",
            session_items=["85048"],
            applied_offsets={0: 41},
        ),
        "ItemFeatures": ItemFeatures(
            item_id="85048",
            description="15CM CHRISTMAS GLASS BALL 20 LIGHTS",
            price=6.95,
            price_band=4,
            terms=["christmas", "glass", "ball", "lights"],
            popularity_30d=17,
            distinct_buyers=9,
            first_seen_ms=FIRST_EVENT_MS,
        ),
        "ItemFeatureMatrix": ItemFeatureMatrix(
            version="v1",
            feature_names=["price", "popularity_30d"],
            item_ids=["85048", "79323P"],
            values=[6.95, 17.0, 6.75, 4.0],
        ),
        "ScoredItemList": ScoredItemList(
            key="item:85048",
            version="v1",
            channels=["swing", "cosine"],
            item_ids=["79323P", "79323W"],
            scores=[0.9, 0.5],
            channel_mask=[3, 1],
        ),
        "ModelManifest": ModelManifest(
            name="ranker_xgboost",
            version="20101209T000000",
            artifact_uri="gridfs://artifacts/abc",
            sha256="0" * 64,
            metrics={"ndcg@20": 0.4, "auc": 0.8},
            features=["price", "popularity_30d"],
            data_snapshot=DataSnapshot(as_of_date="2010-12-09", rows=406295),
            created_at_ms=FIRST_EVENT_MS,
            framework="xgboost",
            params={"max_depth": "6"},
        ),
    }
