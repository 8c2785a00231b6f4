"""TensorFlow Serving and the deep ranker's registered SavedModel: which TF Serving version an artifact
is, and its deployment into TF Serving's model folder by the publish step.

The registry stores the TF ranker as a tar of `<version>/saved_model.pb, variables/, assets.extra/`
(`models.train_ranker`: the version is the export's epoch seconds). TF Serving reads a model from
`<model folder>/<model name>/<version>/`; publishing (`models.publishing`, when
`FINEGRAIN_TF_SERVING_MODEL_DIR` names that folder) writes the published version there before it
announces it in ZooKeeper, and keeps only it and the version published before it: the workers score
through TF Serving with the version of the manifest they loaded (`serving.ranking.tensorflow`), so the
previous version must stay servable until every worker has swapped. TF Serving's configuration
(`docker/tfserving/models.config`) serves every version the folder holds (`model_version_policy`
`all`), which is these two.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from finegrain.schemas import ModelManifest
from models.registry import RegistryError, untar_artifact


def saved_model_version(data: bytes) -> int:
    """The TF Serving version of a TF ranker artifact: its one numeric top folder with a saved_model.pb."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            names = archive.getnames()
    except tarfile.TarError as exc:
        raise RegistryError(f"the artifact is not a SavedModel tar: {exc}") from None
    versions = sorted({int(Path(name).parts[0]) for name in names
                       if Path(name).name == "saved_model.pb" and len(Path(name).parts) == 2
                       and Path(name).parts[0].isdigit()})
    if len(versions) != 1:
        raise RegistryError(f"the artifact holds {len(versions)} SavedModel versions {versions}, not one "
                            "(<version>/saved_model.pb)")
    return versions[0]


def deploy(model_dir: Path, manifest: ModelManifest, data: bytes, keep: int | None = None) -> Path:
    """Write `data` (a checksum-verified TF ranker artifact) as `<model_dir>/<name>/<version>/` and
    remove the other versions but `keep` (the one published before); returns the version folder.

    The version is unpacked beside the model's folder and renamed into place, so TF Serving (which polls
    the folder) never sees a half-written SavedModel; a version already there is left as it is (the
    same version is the same bytes: the registry checked their sha256)."""
    version = saved_model_version(data)
    base = Path(model_dir) / manifest.name
    target = base / str(version)
    try:
        base.mkdir(parents=True, exist_ok=True)
        if not (target / "saved_model.pb").is_file():
            with tempfile.TemporaryDirectory(prefix=f".{manifest.name}-", dir=model_dir) as staging:
                untar_artifact(data, Path(staging))
                shutil.rmtree(target, ignore_errors=True)
                (Path(staging) / str(version)).rename(target)
        for other in base.iterdir():
            if other.name.isdigit() and int(other.name) not in (version, keep):
                shutil.rmtree(other, ignore_errors=True)
    except OSError as exc:
        raise RegistryError(f"cannot deploy {manifest.name} {manifest.version} into TF Serving's model "
                            f"folder {base} (FINEGRAIN_TF_SERVING_MODEL_DIR): {exc}") from None
    return target
