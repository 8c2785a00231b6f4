"""`finegrain keys create | list | revoke` against the real MongoDB and ZooKeeper: the key is printed once
and never stored, listing shows no secret, revoking marks the key and bumps the workers' notice znode,
and bad input is one line naming the bad value."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import app as cli
from cli import keys as keys_cli
from finegrain.apikeys import KeyStore, parse_token
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_database, zookeeper_client
from finegrain.storage.contract import MongoCollections, ZkPaths
from finegrain.storage.notices import change_count

pytestmark = pytest.mark.integration


def _last_json(output: str) -> dict[str, object]:
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_create_list_revoke(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_cli, "get_settings", lambda: settings)
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--name", "cli-test", "--scope", "recommend",
                                  "--scope", "events", "--rate", "50", "--json"])
    assert created.exit_code == 0, created.output
    shown = _last_json(created.output)
    token = str(shown["key"])
    key_id, secret = parse_token(token)
    assert shown["key_id"] == key_id and shown["scopes"] == ["events", "recommend"]
    assert shown["rate_per_s"] == 50
    document = mongo_database(settings)[MongoCollections.API_KEYS].find_one({"_id": key_id})
    assert document is not None and secret not in json.dumps(document, default=str)
    with KeyStore(settings) as store:
        stored = store.get(key_id)
    assert stored is not None and stored.matches(secret) and not stored.revoked

    listed = runner.invoke(cli, ["keys", "list", "--json"])
    assert listed.exit_code == 0 and secret not in listed.output
    assert key_id in [k["key_id"] for k in _last_json(listed.output)["keys"]]  # type: ignore[attr-defined]

    zk = zookeeper_client(settings)
    path = ZkPaths(settings.zookeeper_root).keys()
    try:
        before = change_count(zk.get(path)[0]) if zk.exists(path) else 0
        revoked = runner.invoke(cli, ["keys", "revoke", key_id, "--json"])
        assert revoked.exit_code == 0, revoked.output
        assert _last_json(revoked.output) == {"revoked": [key_id], "announced": True}
        data, _ = zk.get(path)
    finally:
        zk.stop()
        zk.close()
    assert change_count(data) == before + 1 and json.loads(data)["key_id"] == key_id
    active = _last_json(runner.invoke(cli, ["keys", "list", "--json"]).output)["keys"]
    assert key_id not in [k["key_id"] for k in active]  # type: ignore[attr-defined]
    every = _last_json(runner.invoke(cli, ["keys", "list", "--all", "--json"]).output)["keys"]
    [entry] = [k for k in every if k["key_id"] == key_id]  # type: ignore[attr-defined]
    assert entry["revoked_at"]

    first = _last_json(runner.invoke(cli, ["keys", "create", "--name", "cli-again", "--scope", "admin",
                                           "--json"]).output)
    second = runner.invoke(cli, ["keys", "create", "--name", "cli-again", "--scope", "admin", "--replace",
                                 "--json"])
    assert second.exit_code == 0 and f"revoked {first['key_id']}" in second.output
    with KeyStore(settings) as store:
        old, new = store.get(str(first["key_id"])), store.get(str(_last_json(second.output)["key_id"]))
    assert old is not None and old.revoked and new is not None and not new.revoked


@pytest.mark.parametrize(("args", "named"), [
    (["create", "--name", "cli-test", "--scope", "read"], "unknown scope 'read'"),
    (["create", "--name", "two words", "--scope", "admin"], "bad key name 'two words'"),
    (["create", "--name", "cli-test", "--scope", "admin", "--rate", "0"], "bad rate 0"),
    (["revoke", "nosuchkey123"], "no API key with id 'nosuchkey123'"),
])
def test_bad_input_is_one_line_naming_the_value(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                                args: list[str], named: str) -> None:
    monkeypatch.setattr(keys_cli, "get_settings", lambda: settings)
    result = CliRunner().invoke(cli, ["keys", *args])
    assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output
