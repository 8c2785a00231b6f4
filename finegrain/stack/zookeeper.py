"""ZooKeeper from Debian's `zookeeper` package, run standalone with plain `java` (no systemd)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from finegrain.errors import StackError
from finegrain.stack.base import LocalService

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
ZOOKEEPER_CONF_DIR = Path("/etc/zookeeper/conf")  # holds the log4j configuration the jar expects


class ZooKeeperService(LocalService):
    name = "zookeeper"
    setting_name = "FINEGRAIN_ZOOKEEPER_HOSTS"
    cmdline_marker = "QuorumPeerMain"

    @property
    def address(self) -> tuple[str, int]:
        return self.settings.zookeeper_address()

    def check_installed(self) -> None:
        if shutil.which("java") is None:
            raise StackError(
                "zookeeper: `java` not found; install a JRE (`apt-get install default-jre-headless`)"
            )
        if not ZOOKEEPER_JAR.exists():
            raise StackError(
                f"zookeeper: {ZOOKEEPER_JAR} not found; install it with `apt-get install zookeeper`"
            )

    def launch(self) -> None:
        host, port = self.address
        config = self.dir / "zoo.cfg"
        data_dir = self.dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "\n".join(
                [
                    "tickTime=2000",
                    f"dataDir={data_dir}",
                    f"clientPort={port}",
                    f"clientPortAddress={host}",
                    # The admin server would take port 8080, which Airflow's UI uses.
                    "admin.enableServer=false",
                    # ruok for the health check; envi for kazoo's server_version(); srvr for ours.
                    "4lw.commands.whitelist=ruok,envi,srvr,stat,mntr,conf",
                    "maxClientCnxns=200",
                    "",
                ]
            )
        )
        self._spawn(
            [
                "java",
                "-Xmx256m",
                f"-Dzookeeper.log.dir={self.dir}",
                "-Dzookeeper.root.logger=INFO,CONSOLE",
                "-cp",
                f"{ZOOKEEPER_CONF_DIR}:{ZOOKEEPER_JAR}",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(config),
            ]
        )

    def probe(self) -> str:
        if _four_letter_word(self.address, "ruok") != "imok":
            raise StackError("zookeeper did not answer imok")
        # "Zookeeper version: 3.8.0-..., built on ..."; before it serves, srvr says so instead.
        first_line = _four_letter_word(self.address, "srvr").splitlines()[0]
        if not first_line.startswith("Zookeeper version:"):
            raise StackError(f"zookeeper not serving yet: {first_line}")
        return first_line.split(":", 1)[-1].split(",")[0].strip().split("-")[0]


def _four_letter_word(address: tuple[str, int], word: str) -> str:
    with socket.create_connection(address, timeout=1.0) as conn:
        conn.sendall(word.encode())
        chunks = []
        while chunk := conn.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()
