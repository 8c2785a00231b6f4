"""An S3-protocol server on 127.0.0.1 for the event archive's object-storage path: moto's standalone
server (`python -m moto.server`), a separate process spoken to over HTTP through pyarrow's S3 client
(the AWS C++ SDK), as production speaks to S3, MinIO or any S3-compatible store."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.serving_harness import free_port, wait_for

# The server takes any credentials; the client must send some (pyarrow signs every request).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "finegrain-test", "AWS_SECRET_ACCESS_KEY": "finegrain-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """Start the server, yield its `host:port`, stop it."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port) or process.poll() is not None, 60, "the S3 server to answer")
        assert process.poll() is None, f"the S3 server exited: {log.read_text()[-2000:]}"
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def archive_uri(address: str, bucket: str, prefix: str) -> str:
    return (f"s3://{bucket}/{prefix}?endpoint_override={address}&scheme=http&region=us-east-1"
            "&allow_bucket_creation=true")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, with an S3 error document
    except OSError:
        return False
