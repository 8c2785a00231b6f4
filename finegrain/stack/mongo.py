"""A MongoDB-protocol server: SecantusDB (PyPI `SecantusDB`), single node over WiredTiger."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pymongo

from finegrain.errors import StackError
from finegrain.stack.base import LocalService


class MongoService(LocalService):
    name = "mongo"
    setting_name = "FINEGRAIN_MONGO_URI"
    cmdline_marker = "secantusd"
    start_timeout_s = 60.0

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.mongo_address()

    def _binary(self) -> str | None:
        beside_python = Path(sys.executable).parent / "secantusd-py"
        return str(beside_python) if beside_python.exists() else shutil.which("secantusd-py")

    def check_installed(self) -> None:
        if self._binary() is None:
            raise StackError("mongo: `secantusd-py` not found; install the lock (`bin/setup`)")

    def launch(self) -> None:
        host, port = self.address
        binary = self._binary()
        assert binary is not None  # check_installed ran first
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                binary,
                "--host",
                host,
                "--port",
                str(port),
                "--storage-path",
                str(data),
                "--log-level",
                "WARNING",
            ]
        )

    def probe(self) -> str:
        host, port = self.address
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            host, port, directConnection=True, serverSelectionTimeoutMS=800, connectTimeoutMS=800
        )
        try:
            client.admin.command("ping")
            return str(client.server_info().get("version", "?"))
        finally:
            client.close()
