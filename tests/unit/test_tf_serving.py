"""TensorFlow Serving's side of the deep ranker: the version a registered artifact is, its deployment into
TF Serving's model folder (atomic, keeping the previous version only), and the load-time checks that turn
a dead TF Serving or a server that is not one into a refused load instead of a ready worker."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from finegrain.schemas import ModelManifest
from models.registry import RegistryError, tar_directory
from models.tf_serving import deploy, saved_model_version
from serving.ranking.loading import ModelLoadError, ModelServerUnavailable, load_model
from serving.ranking.tensorflow import TFServingRefused, TFServingUnavailable, check_tf_serving, version_state

NAME = "ranker_tf"


def artifact(tmp_path: Path, version: int, payload: bytes = b"graph") -> bytes:
    """A directory artifact laid out as the TF ranker's export (`<version>/saved_model.pb`, ...)."""
    folder = tmp_path / f"export-{version}"
    (folder / str(version) / "variables").mkdir(parents=True, exist_ok=True)
    (folder / str(version) / "saved_model.pb").write_bytes(payload)
    (folder / str(version) / "variables" / "variables.index").write_bytes(b"index")
    return tar_directory(folder)


def manifest(version: str = "v1") -> ModelManifest:
    return ModelManifest(name=NAME, version=version, framework="tensorflow", features=["a", "b"])


def test_the_version_is_the_artifacts_numeric_folder(tmp_path: Path) -> None:
    assert saved_model_version(artifact(tmp_path, 1733000000)) == 1733000000
    with pytest.raises(RegistryError, match="not a SavedModel tar"):
        saved_model_version(b"not a tar at all")
    empty = tmp_path / "empty"
    (empty / "assets").mkdir(parents=True)
    with pytest.raises(RegistryError, match="0 SavedModel versions"):
        saved_model_version(tar_directory(empty))


def test_deploy_writes_the_version_and_keeps_only_the_previous_one(tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = deploy(models, manifest("v1"), artifact(tmp_path, 100))
    assert first == models / NAME / "100" and (first / "saved_model.pb").read_bytes() == b"graph"
    deploy(models, manifest("v2"), artifact(tmp_path, 200), keep=100)
    assert sorted(p.name for p in (models / NAME).iterdir()) == ["100", "200"]
    deploy(models, manifest("v3"), artifact(tmp_path, 300), keep=200)
    assert sorted(p.name for p in (models / NAME).iterdir()) == ["200", "300"]
    # Rolling back to 200 keeps the withdrawn 300 for workers still on it; nothing is left staged.
    deploy(models, manifest("v2"), artifact(tmp_path, 200), keep=300)
    assert sorted(p.name for p in (models / NAME).iterdir()) == ["200", "300"]
    assert sorted(p.name for p in models.iterdir()) == [NAME]


def test_deploy_into_an_unwritable_folder_names_the_setting(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(RegistryError, match="FINEGRAIN_TF_SERVING_MODEL_DIR"):
        deploy(blocked, manifest(), artifact(tmp_path, 1))


def test_the_model_status_answer_is_read_as_tf_serving_documents_it() -> None:
    body = {"model_version_status": [{"version": "200", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}},
                                     {"version": 100, "state": "UNLOADING", "status": {}}]}
    assert version_state(body, 200) == "AVAILABLE"
    assert version_state(body, 100) == "UNLOADING"
    assert version_state(body, 300) == "ABSENT"
    with pytest.raises(TFServingRefused, match="not TF Serving's model status"):
        version_state({"status": "ok"}, 200)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def other_http_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server that is not TF Serving (it serves a folder): what a wrong URL points at."""
    (tmp_path / "index.html").write_text("<html>a web site</html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_dead_tf_serving_is_unavailable_after_the_wait(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(TFServingUnavailable, match="unreachable"):
        check_tf_serving(url, NAME, 1, wait_s=1.0)
    assert 0.9 < time.monotonic() - started < 5
    with pytest.raises(ModelServerUnavailable, match="unreachable"):
        load_model(manifest(), artifact(tmp_path, 1), tf_serving_url=url, tf_serving_wait_s=0)


def test_a_server_that_is_not_tf_serving_is_a_refused_load(tmp_path: Path, other_http_server: str) -> None:
    with pytest.raises(TFServingRefused, match="404"):
        check_tf_serving(other_http_server, NAME, 1, wait_s=0)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(manifest(), artifact(tmp_path, 1), tf_serving_url=other_http_server, tf_serving_wait_s=0)
