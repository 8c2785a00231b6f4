"""Change notices through ZooKeeper: a znode holding a JSON change counter that a writer bumps after
each write to MongoDB, and that every serving worker watches to drop or reload its in-memory copy.

Used for the recall rules (`ZkPaths.rules`) and the API keys (`ZkPaths.keys`). The counter is bumped
compare-and-set, so two writers at once both count and every watcher wakes; a watcher may see only
the last of several quick notices (ZooKeeper watches fire once per change they observe), so a notice
says "something changed, re-read", never "only this changed".
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

log = logging.getLogger(__name__)

ATTEMPTS = 20


def change_count(data: bytes | None) -> int:
    """The counter of a notice znode's JSON (0 if it holds none, e.g. hand-edited)."""
    try:
        return int(json.loads(data or b"{}").get("changes", 0))
    except (ValueError, AttributeError, TypeError):
        return 0  # not ours: restart the count, the bump itself still wakes every watcher


def announce(zk: KazooClient, path: str, **fields: Any) -> bool:
    """Bump the counter of `path` (created if missing) with `fields` beside it; False if 20
    compare-and-set attempts all lost to other writers."""
    zk.ensure_path(path)
    for _ in range(ATTEMPTS):
        try:
            data, stat = zk.get(path)
            payload = {"changes": change_count(data) + 1, **fields, "at": datetime.now(UTC).isoformat()}
            zk.set(path, json.dumps(payload).encode(), version=stat.version)
            return True
        except (BadVersionError, NoNodeError):
            continue
    log.warning("could not announce %s on %s after %d attempts", fields, path, ATTEMPTS)
    return False
