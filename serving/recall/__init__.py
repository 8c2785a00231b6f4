"""Recall channels, one module each behind `RecallChannel`; `build_channels` maps the configured
channel types to their implementations."""

from __future__ import annotations

from collections.abc import Sequence

from serving.config import ChannelConfig
from serving.recall.base import RecallChannel, Recalled, RecallRequest
from serving.recall.content import ContentChannel
from serving.recall.embedding import EmbeddingChannel
from serving.recall.item_to_item import ItemToItemChannel
from serving.recall.popular import PopularChannel
from serving.recall.realtime import RealtimeChannel
from serving.recall.rule import RuleChannel

CHANNEL_TYPES: dict[str, type[RecallChannel]] = {
    cls.name: cls for cls in (ItemToItemChannel, ContentChannel, EmbeddingChannel, RuleChannel,
                              RealtimeChannel, PopularChannel)
}


def build_channels(configs: Sequence[ChannelConfig]) -> list[RecallChannel]:
    return [CHANNEL_TYPES[config.type](config) for config in configs if config.enabled]


__all__ = ["CHANNEL_TYPES", "RecallChannel", "RecallRequest", "Recalled", "build_channels"]
