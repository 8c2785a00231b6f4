"""Python code generated from `proto/finegrain/schemas/*.proto` by `bin/gen-proto`; do not edit the
`*_pb2.py` files by hand. Message names are re-exported here for short imports."""

from finegrain.schemas.events_pb2 import BehaviorEvent, DeadLetter, EventBatch, EventContext, EventType
from finegrain.schemas.items_pb2 import ItemFeatureMatrix, ItemFeatures
from finegrain.schemas.models_pb2 import DataSnapshot, ModelManifest
from finegrain.schemas.profiles_pb2 import (
    ActionCounts,
    PurchaseHistory,
    RealtimeProfile,
    RecentAction,
    UserProfile,
    WindowStats,
)
from finegrain.schemas.recall_pb2 import ScoredItemList

__all__ = [
    "ActionCounts",
    "BehaviorEvent",
    "DataSnapshot",
    "DeadLetter",
    "EventBatch",
    "EventContext",
    "EventType",
    "ItemFeatureMatrix",
    "ItemFeatures",
    "ModelManifest",
    "PurchaseHistory",
    "RealtimeProfile",
    "RecentAction",
    "ScoredItemList",
    "UserProfile",
    "WindowStats",
]
