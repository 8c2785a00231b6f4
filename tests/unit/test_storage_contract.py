"""Pins the storage contract: the exact bytes of every stored/streamed message and every key name.

A failure here means a change to what is on disk or on the wire: update docs/storage.md, plan the
migration, and only then update the golden values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from finegrain.codecs import decode, encode
from finegrain.errors import DataError
from finegrain.schemas import BehaviorEvent, UserProfile
from finegrain.storage.contract import Dataset, KafkaTopics, MongoCollections, RedisKeys, ZkPaths
from tests.unit.examples import examples

GOLDEN_HEX = {
    "BehaviorEvent": "0a083438393433342d31120531333038351a0538353034382004280c31cdcccccccccc1b4038e098ccc9d42442260a04686f6d651a0e556e69746564204b696e67646f6d32060a016112013132060a0162120132",
    "DeadLetter": "0a127b22757365725f6964223a2031333038357d12106974656d5f69643a206d697373696e671a1066696e65677261696e2e6576656e747320e098ccc9d4242a076974656d5f6964",
    "UserProfile": "0a05313330383510e098ccc9d4241a0e556e69746564204b696e67646f6d2003280130033d666675436a0b081e10011803256666754372066c696768747372066368657272798001038a01320a0538353034380a063739333233500a0637393332335712030101011a06f371f371f371220c00004041000040410000404192010f323030393132303254303030303030",
    "RealtimeProfile": "0a05313330383510e098ccc9d4241a100a053835303438100118e098ccc9d42422040804100122040801100328a0aadec8d42432130880c4c8c9d4241204080410011204080110033a100a096368726973746d6173150000c03f42110a0a6465636f726174696f6e150000403f4a03732d31520538353034385a0408001029",
    "ItemFeatures": "0a05383530343812233135434d204348524953544d415320474c4153532042414c4c203230204c49474854531d6666de40200432096368726973746d61733205676c617373320462616c6c32066c69676874734011500968e098ccc9d424",
    "ItemFeatureMatrix": "0a0276311a0570726963651a0e706f70756c61726974795f3330642205383530343822063739333233502a106666de40000088410000d84000008040",
    "ScoredItemList": "0a0a6974656d3a38353034381202763122057377696e672206636f73696e652a063739333233502a0637393332335732086666663f0000003f3a020301",
    "ModelManifest": "0a0e72616e6b65725f7867626f6f7374120f3230313031323039543030303030301a166772696466733a2f2f6172746966616374732f6162632240303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030303030302a0e0a03617563119a9999999999e93f2a120a076e646367403230119a9999999999d93f32057072696365320e706f70756c61726974795f3330643a100a0a323031302d31322d30392097e61840e098ccc9d4244a077867626f6f7374520e0a096d61785f6465707468120136",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN_HEX))
def test_golden_bytes(name: str) -> None:
    message = examples()[name]
    assert encode(message).hex() == GOLDEN_HEX[name]
    decoded = decode(type(message), bytes.fromhex(GOLDEN_HEX[name]))
    assert decoded == message


def test_every_message_has_a_golden_value() -> None:
    assert set(examples()) == set(GOLDEN_HEX)


def test_map_fields_encode_deterministically() -> None:
    event = examples()["BehaviorEvent"]
    assert isinstance(event, BehaviorEvent)
    reordered = BehaviorEvent()
    reordered.CopyFrom(event)
    reordered.context.extra.clear()
    reordered.context.extra["a"] = "1"
    reordered.context.extra["b"] = "2"
    assert encode(reordered) == encode(event)


def test_garbage_bytes_give_a_data_error_naming_the_type() -> None:
    with pytest.raises(DataError, match=r"finegrain\.v1\.UserProfile"):
        decode(UserProfile, b"\xff\xff\xff")


def test_key_names() -> None:
    assert RedisKeys.pointer(Dataset.FEATURES) == "fg:ptr:features"
    assert RedisKeys.user_profile("20101209T000000", "13085") == "fg:features:20101209T000000:user:13085"
    assert RedisKeys.item_feature_block("v1", 3) == "fg:features:v1:items:3"
    assert RedisKeys.item_feature_block_count("v1") == "fg:features:v1:item_blocks"
    assert RedisKeys.index_directory("v1", "term") == "fg:index:v1:directory:term"
    assert RedisKeys.index_postings("v1", "term", "lights") == "fg:index:v1:term:lights"
    assert RedisKeys.similar_items("v1", "swing", "85048") == "fg:similarity:v1:swing:85048"
    assert RedisKeys.popular_items("v1", "country", "France") == "fg:popularity:v1:country:France"
    assert RedisKeys.realtime_profile("13085") == "fg:rt:user:13085"
    assert RedisKeys.rule_atom("v1", "ab12") == "fg:rule:v1:ab12"
    assert MongoCollections.versioned(Dataset.CATALOG, "v1") == "catalog__v1"
    assert ZkPaths("/finegrain").model("ranker_xgboost") == "/finegrain/models/ranker_xgboost"
    assert ZkPaths("/finegrain/").dataset(Dataset.INDEX) == "/finegrain/datasets/index"
    assert ZkPaths().worker("host-1-42") == "/finegrain/workers/host-1-42"
    assert ZkPaths().rules() == "/finegrain/rules"
    assert ZkPaths().keys() == "/finegrain/keys"
    assert MongoCollections.API_KEYS == "api_keys"
    assert KafkaTopics("finegrain").events == "finegrain.events"
    assert KafkaTopics("finegrain").events_dead_letter == "finegrain.events.dlq"


@pytest.mark.parametrize("bad", ["", "a b", "../x", "v1:x", "x" * 65])
def test_bad_versions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bad version"):
        RedisKeys.versioned_prefix(Dataset.INDEX, bad)


def test_docs_name_every_key_collection_path_and_topic(project_root: Path) -> None:
    doc = (project_root / "docs" / "storage.md").read_text()
    names = [
        "fg:ptr:{dataset}",
        "fg:features:{version}:user:{user_id}",
        "fg:features:{version}:items:{block}",
        "fg:features:{version}:item_blocks",
        "fg:index:{version}:directory:{field}",
        "fg:versions:{dataset}",
        "fg:index:{version}:{field}:{value}",
        "fg:similarity:{version}:{algorithm}:{item_id}",
        "fg:popularity:{version}:{scope}:{value}",
        "fg:rt:user:{user_id}",
        "fg:rule:{index_version}:{atom_digest}",
        MongoCollections.POINTERS,
        MongoCollections.RULES,
        MongoCollections.MODELS,
        MongoCollections.ARTIFACTS,
        MongoCollections.API_KEYS,
        "{dataset}__{version}",
        "/finegrain/models/{name}",
        "/finegrain/datasets/{dataset}",
        "/finegrain/rules",
        "/finegrain/keys",
        "/finegrain/workers/{host}-{pid}",
        "finegrain.events",
        "finegrain.events.dlq",
    ]
    missing = [name for name in names if f"`{name}`" not in doc]
    assert not missing, f"docs/storage.md does not document {missing}"
    for message in examples():
        assert re.search(rf"\b{message}\b", doc), f"docs/storage.md does not name {message}"
