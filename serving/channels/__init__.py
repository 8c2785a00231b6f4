"""Recall channels, one module each behind `RecallChannel`; `build_channels` maps the configured
channel types to their implementations."""

from __future__ import annotations

from collections.abc import Sequence

from serving.channels.base import RecallChannel, Recalled, RecallRequest
from serving.channels.content import ContentChannel
from serving.channels.embedding import EmbeddingChannel
from serving.channels.item_to_item import ItemToItemChannel
from serving.channels.popular import PopularChannel
from serving.channels.realtime import RealtimeChannel
from serving.channels.rule import RuleChannel
from serving.config import ChannelConfig

CHANNEL_TYPES: dict[str, type[RecallChannel]] = {
    cls.name: cls for cls in (ItemToItemChannel, ContentChannel, EmbeddingChannel, RuleChannel,
                              RealtimeChannel, PopularChannel)
}


def build_channels(configs: Sequence[ChannelConfig]) -> list[RecallChannel]:
    return [CHANNEL_TYPES[config.type](config) for config in configs if config.enabled]


__all__ = ["CHANNEL_TYPES", "RecallChannel", "RecallRequest", "Recalled", "build_channels"]
