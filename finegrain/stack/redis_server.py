"""Redis from Debian's `redis-server`, daemonised by itself with its own PID file."""

from __future__ import annotations

import shutil
import subprocess

import redis

from finegrain.errors import StackError
from finegrain.stack.base import LocalService


class RedisService(LocalService):
    name = "redis"
    setting_name = "FINEGRAIN_REDIS_URL"
    cmdline_marker = "redis-server"

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.redis_address()

    def check_installed(self) -> None:
        if shutil.which("redis-server") is None:
            raise StackError(
                "redis: `redis-server` not found; install it with `apt-get install redis-server`"
            )

    def launch(self) -> None:
        host, port = self.address
        # Snapshots are kept (the default save rules) so a restarted local stack keeps its data.
        result = subprocess.run(
            [
                "redis-server",
                "--bind",
                host,
                "--port",
                str(port),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--logfile",
                str(self.logfile),
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:  # it failed before daemonising, so before writing its log file
            reason = (result.stdout + result.stderr).strip().splitlines()
            raise StackError(f"redis: redis-server refused to start: {reason[-1] if reason else 'no output'}")

    def probe(self) -> str:
        host, port = self.address
        client = redis.Redis(host=host, port=port, socket_timeout=1.0, socket_connect_timeout=0.5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
