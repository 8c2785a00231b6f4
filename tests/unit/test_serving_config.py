"""The serving configuration file: its defaults, and that every mistake in it is refused with one line
that names the bad entry (an unknown channel type, a bad field, a channel configured twice)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finegrain.errors import FinegrainError
from serving.channels.registry import CHANNEL_CLASSES, build_channels, channel_config
from serving.config import ServingConfig
from serving.swap import required_models


def _refusal(tmp_path: Path, document: dict[str, Any]) -> str:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(document))
    with pytest.raises(FinegrainError) as caught:
        ServingConfig.load(path)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(str(path), "FILE")


def test_defaults_are_the_tuned_channels_and_the_three_scenes() -> None:
    config = ServingConfig()
    assert [(c.type, c.quota, c.budget_ms) for c in config.channels] == [
        ("item_to_item", 400, 30), ("realtime", 50, 15), ("rule", 50, 30), ("embedding", 300, 30),
        ("content", 100, 20), ("popular", 100, 10)]
    assert sorted(config.scenes) == ["deep", "discovery", "home"]
    assert ServingConfig.load(None) == config


def test_a_file_gets_each_channel_type_with_its_own_fields_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"channels": [
        {"type": "item_to_item", "algorithm": "swing"}, {"type": "embedding", "quota": 10},
        {"type": "popular", "enabled": False}, {"type": "realtime", "max_recent": 5}]}))
    config = ServingConfig.load(path)
    assert config.model_dump()["channels"] == [
        {"quota": 200, "budget_ms": 20.0, "enabled": True, "type": "item_to_item", "algorithm": "swing"},
        {"quota": 10, "budget_ms": 20.0, "enabled": True, "type": "embedding", "model": "embeddings_als"},
        {"quota": 200, "budget_ms": 20.0, "enabled": False, "type": "popular", "list_name": "global:all@30d"},
        {"quota": 200, "budget_ms": 20.0, "enabled": True, "type": "realtime", "max_recent": 5}]


def test_an_unknown_channel_type_lists_the_known_ones(tmp_path: Path) -> None:
    message = _refusal(tmp_path, {"channels": [{"type": "nope"}]})
    assert message.startswith("serving config FILE is invalid: 1 validation error for ServingConfig "
                              "channels.0 ")
    assert ("Input tag 'nope' found using 'type' does not match any of the expected tags: 'item_to_item', "
            "'content', 'embedding', 'rule', 'realtime', 'popular'") in message
    untyped = _refusal(tmp_path, {"channels": [{"quota": 3}]})
    assert "Unable to extract tag using discriminator 'type'" in untyped


@pytest.mark.parametrize(("channel", "where", "what"), [
    ({"type": "item_to_item", "quota": 5000}, "channels.0.item_to_item.quota",
     "Input should be less than or equal to 2000"),
    ({"type": "popular", "list": "x"}, "channels.0.popular.list", "Extra inputs are not permitted"),
    ({"type": "item_to_item", "algorithm": "x"}, "channels.0.item_to_item.algorithm",
     "Input should be 'cosine' or 'swing'"),
])
def test_a_bad_channel_field_is_named(tmp_path: Path, channel: dict[str, Any], where: str, what: str) -> None:
    message = _refusal(tmp_path, {"channels": [channel]})
    assert f"for ServingConfig {where}   {what}" in message


def test_a_channel_type_configured_twice_is_refused(tmp_path: Path) -> None:
    message = _refusal(tmp_path, {"channels": [{"type": "content"}, {"type": "content"}]})
    assert "channel type(s) configured twice: content" in message


def test_the_json_schema_documents_every_channel_type() -> None:
    schema = ServingConfig.model_json_schema()
    channels = schema["properties"]["channels"]["items"]
    assert sorted(channels["discriminator"]["mapping"]) == [
        "content", "embedding", "item_to_item", "popular", "realtime", "rule"]
    assert schema["$defs"]["EmbeddingChannelConfig"]["properties"]["model"]["description"]


def test_every_registered_channel_is_built_from_its_own_config() -> None:
    for channel_type, implementation in CHANNEL_CLASSES.items():
        config = channel_config(channel_type)
        assert type(config) is implementation.config_class and implementation.name == channel_type
    config = ServingConfig.model_validate({"channels": [
        {"type": "embedding", "model": "embeddings_other"}, {"type": "popular", "enabled": False}]})
    assert [type(c) for c in build_channels(config.channels)] == [CHANNEL_CLASSES["embedding"]]
    # The worker loads the enabled channels' models besides the scenes' rankers.
    assert required_models(config) == ["embeddings_other", "ranker_tf", "ranker_xgboost"]
    off = ServingConfig.model_validate({"channels": [{"type": "embedding", "enabled": False}]})
    assert required_models(off) == ["ranker_tf", "ranker_xgboost"]
