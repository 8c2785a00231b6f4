"""What each live serving worker serves: the JSON of its ephemeral znode (`ZkPaths.worker`), read by
`finegrain api status`, `finegrain models status` (rollout) and the load benchmark."""

from __future__ import annotations

import json
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from finegrain.settings import Settings
from finegrain.storage.contract import ZkPaths


def worker_states(settings: Settings, zk: KazooClient) -> list[dict[str, Any]]:
    root = ZkPaths(settings.zookeeper_root).worker("").rstrip("/")
    try:
        children = zk.get_children(root)
    except NoNodeError:
        return []
    states = []
    for child in sorted(children):
        try:
            data, _ = zk.get(f"{root}/{child}")
        except NoNodeError:
            continue  # the worker went away between the listing and the read
        states.append(json.loads(data or b"{}"))
    return states


def rollout(states: list[dict[str, Any]], name: str, published: str | None) -> dict[str, Any]:
    """How far the published version of model `name` has reached: workers on it, on another version,
    and the reasons workers gave for refusing a version."""
    serving: dict[str, int] = {}
    for state in states:
        version = state.get("models", {}).get(name, "none")
        serving[version] = serving.get(version, 0) + 1
    errors = sorted({state["errors"][name] for state in states if name in state.get("errors", {})})
    return {"workers": len(states), "on_published": serving.get(published or "", 0), "versions": serving,
            "errors": errors}
