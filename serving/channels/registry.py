"""The one table of recall channels: each configuration `type` and the class that implements it.

Adding a channel is one module in this package (a `ChannelConfig` subclass with `type:
Literal["name"]` and a documented field per setting, and the `RecallChannel` whose `name` is that type
and whose `config_class` is that config) plus one line in `CHANNELS` below. The serving configuration
then accepts the type, validates and documents its fields (JSON schema), and every worker runs it.
This is the shape of Feast's online-store registry: an abstract base, one implementation per backend
with its pydantic config beside it, and one table from type to implementation.

The table names import paths so that it is the only place a channel is registered. The modules are
imported with this one, not on first use: the configuration's discriminated union (`AnyChannelConfig`)
needs every config class when `serving.config.ServingConfig` is defined.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from serving.channels.base import ChannelConfig, RecallChannel

# Configuration type -> implementation, in the order a bad `type` is answered with the known ones.
CHANNELS: dict[str, str] = {
    "item_to_item": "serving.channels.item_to_item.ItemToItemChannel",
    "content": "serving.channels.content.ContentChannel",
    "embedding": "serving.channels.embedding.EmbeddingChannel",
    "rule": "serving.channels.rule.RuleChannel",
    "realtime": "serving.channels.realtime.RealtimeChannel",
    "popular": "serving.channels.popular.PopularChannel",
}


def _load(channel_type: str, path: str) -> type[RecallChannel]:
    module, _, name = path.rpartition(".")
    implementation = getattr(importlib.import_module(module), name)
    # A mismatch is a developer's slip: it fails the import of serving (every test) at once, not a request.
    if not (isinstance(implementation, type) and issubclass(implementation, RecallChannel)):
        raise TypeError(f"channel {channel_type!r}: {path} is not a RecallChannel")
    declared = implementation.config_class.model_fields["type"].default
    if not implementation.name == channel_type == declared:
        raise TypeError(f"channel {channel_type!r}: {path} is named {implementation.name!r} and its "
                        f"config's type is {declared!r}; all three must be the same")
    return implementation


CHANNEL_CLASSES: dict[str, type[RecallChannel]] = {t: _load(t, path) for t, path in CHANNELS.items()}

if TYPE_CHECKING:
    AnyChannelConfig = ChannelConfig
else:
    # One entry of the configuration's `channels`: validated as the config class its `type` names.
    AnyChannelConfig = Annotated[reduce(or_, [c.config_class for c in CHANNEL_CLASSES.values()]),
                                 Field(discriminator="type")]


def channel_config(channel_type: str, **fields: Any) -> ChannelConfig:
    """The config of a channel of that type, e.g. `channel_config("popular", quota=100)`."""
    return CHANNEL_CLASSES[channel_type].config_class.model_validate({"type": channel_type, **fields})


def build_channels(configs: Sequence[ChannelConfig]) -> list[RecallChannel]:
    """The enabled channels of a configuration, in its order."""
    return [CHANNEL_CLASSES[config.type](config) for config in configs if config.enabled]
