"""The model registry: every training run's artifact and manifest, stored in MongoDB.

Artifacts go into the GridFS bucket `artifacts` of the Finegrain database rather than a directory or
object-store URI: the registry then needs no shared file system or bucket credentials beyond the Mongo
connection every job and worker already has; the bytes and the manifest that describes them live in
one store with one backup, and a model directory cannot be edited in place behind the manifest's
back. The artifacts are small (an XGBoost booster, a SavedModel, an ANN index: megabytes, well inside
what GridFS chunks comfortably), and they are read once per load, never on the request path.

A directory artifact (a TensorFlow SavedModel, an index with side files) is stored as a deterministic
tar (sorted entries, zeroed times and owners), so the same directory always gives the same bytes and
the same sha256. The manifest (`finegrain.schemas.ModelManifest`, deterministic protobuf bytes) goes
into the `models` collection as `{_id: "<name>:<version>", name, version, created_at, manifest,
file_id, published, published_at, withdrawn, pinned, gate}`; only the fields queried sit beside the bytes.
SecantusDB answers indexed queries with a sort slowly, so listing is a plain find, sorted here.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from gridfs import GridFSBucket
from gridfs.errors import NoFile
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from finegrain.codecs import decode, encode
from finegrain.errors import FinegrainError
from finegrain.schemas import DataSnapshot, ModelManifest
from finegrain.settings import Settings
from finegrain.storage.clients import mongo_database
from finegrain.storage.contract import MongoCollections, check_version

MongoDocument = dict[str, Any]
_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TAR_SUFFIX = ".tar"


class RegistryError(FinegrainError):
    """A registry request that cannot be served: an unknown model or version, a bad name."""


class CorruptArtifactError(RegistryError):
    """The stored artifact bytes no longer match the manifest's sha256 (or are gone)."""


def check_name(name: str) -> str:
    """Model names become znode names and GridFS file names: keep them to a safe alphabet."""
    if not _NAME_PATTERN.match(name):
        raise RegistryError(
            f"bad model name {name!r}: use lower-case letters, digits, '_' or '-' (at most 64)"
        )
    return name


def model_version(now: datetime | None = None) -> str:
    """`YYYYMMDDTHHMMSS.mmm` (UTC): sorts by time like the dataset versions, with milliseconds
    because two runs of one model may register within the same second."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (event files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tar_directory(folder: Path) -> bytes:
    """The directory as an uncompressed tar that depends only on the files' names, modes and bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
            info = archive.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isdir():
                info.mode = 0o755
                archive.addfile(info)
            elif info.isfile():
                info.mode = 0o644
                with path.open("rb") as handle:
                    archive.addfile(info, handle)
            else:  # a symlink or device would make the bytes depend on the machine
                raise RegistryError(f"artifact {folder} holds {path}, which is not a regular file")
    return buffer.getvalue()


def untar_artifact(data: bytes, destination: Path) -> Path:
    """Unpack a directory artifact (as `tar_directory` made it) into `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        archive.extractall(destination, filter="data")
    return destination


def artifact_bytes(artifact: bytes | Path) -> tuple[bytes, str]:
    """The bytes to store and the suffix of their GridFS file name (".tar" for a directory)."""
    if isinstance(artifact, bytes | bytearray):
        return bytes(artifact), ""
    path = Path(artifact)
    if path.is_dir():
        return tar_directory(path), TAR_SUFFIX
    if path.is_file():
        return path.read_bytes(), path.suffix
    raise RegistryError(f"no artifact at {path}")


@dataclass(frozen=True)
class ModelEntry:
    """One registered version with its registry flags."""

    manifest: ModelManifest
    file_id: ObjectId
    created_at: datetime
    published: bool
    published_at: datetime | None
    withdrawn: bool
    pinned: bool
    gate: str | None = None  # why the last publish request was refused, or how it passed

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def is_directory(self) -> bool:
        return self.manifest.artifact_uri.endswith(TAR_SUFFIX)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "framework": self.manifest.framework,
            "sha256": self.manifest.sha256,
            "artifact_uri": self.manifest.artifact_uri,
            "metrics": dict(sorted(self.manifest.metrics.items())),
            "features": list(self.manifest.features),
            "params": dict(sorted(self.manifest.params.items())),
            "data_snapshot": snapshot_dict(self.manifest.data_snapshot),
            "created_at": self.created_at.isoformat(),
            "published": self.published,
            "published_at": None if self.published_at is None else self.published_at.isoformat(),
            "withdrawn": self.withdrawn,
            "pinned": self.pinned,
            "gate": self.gate,
        }


def snapshot_dict(snapshot: DataSnapshot) -> dict[str, Any]:
    return {
        "as_of_date": snapshot.as_of_date,
        "events_uri": snapshot.events_uri,
        "features_version": snapshot.features_version,
        "rows": snapshot.rows,
        "events_sha256": snapshot.events_sha256,
    }


def entry_id(name: str, version: str) -> str:
    return f"{name}:{version}"


class ModelRegistry:
    """Register, list and fetch model versions (the `models` collection and the `artifacts` bucket)."""

    def __init__(self, settings: Settings, database: Database[MongoDocument] | None = None) -> None:
        self.settings = settings
        self.db = database if database is not None else mongo_database(settings)
        self.models: Collection[MongoDocument] = self.db[MongoCollections.MODELS]
        self.bucket = GridFSBucket(self.db, bucket_name=MongoCollections.ARTIFACTS)

    def register(
        self,
        name: str,
        artifact: bytes | Path,
        *,
        features: Sequence[str] = (),
        metrics: Mapping[str, float] | None = None,
        params: Mapping[str, object] | None = None,
        data_snapshot: DataSnapshot | None = None,
        framework: str = "",
        version: str | None = None,
        now: datetime | None = None,
    ) -> ModelManifest:
        """Store the artifact and its manifest as a new version (never published by registering)."""
        check_name(name)
        data, suffix = artifact_bytes(artifact)
        if not data:
            raise RegistryError(f"the artifact of {name} is empty")
        created = (now or datetime.now(UTC)).astimezone(UTC)
        explicit = version is not None
        for _ in range(1000):
            candidate = check_version(version) if version is not None else model_version(created)
            manifest = ModelManifest(
                name=name,
                version=candidate,
                artifact_uri=f"gridfs://{MongoCollections.ARTIFACTS}/{name}/{candidate}{suffix}",
                sha256=sha256_hex(data),
                metrics={key: float(value) for key, value in (metrics or {}).items()},
                features=list(features),
                data_snapshot=data_snapshot or DataSnapshot(),
                created_at_ms=int(created.timestamp() * 1000),
                framework=framework,
                params={key: str(value) for key, value in (params or {}).items()},
            )
            if self.models.find_one({"_id": entry_id(name, candidate)}, {"_id": 1}) is None:
                try:
                    return self._store(manifest, data, created)
                except DuplicateKeyError:
                    pass  # another run took this version between the check and the insert
            if explicit:
                raise RegistryError(f"{name} version {candidate} is registered already")
            created += timedelta(milliseconds=1)
        raise RegistryError(f"no free version for {name} near {created:%Y-%m-%d %H:%M:%S}")

    def _store(self, manifest: ModelManifest, data: bytes, created: datetime) -> ModelManifest:
        file_name = manifest.artifact_uri.removeprefix(f"gridfs://{MongoCollections.ARTIFACTS}/")
        file_id = self.bucket.upload_from_stream(
            file_name, data, metadata={"name": manifest.name, "version": manifest.version,
                                       "sha256": manifest.sha256}
        )
        try:
            self.models.insert_one({
                "_id": entry_id(manifest.name, manifest.version),
                "name": manifest.name,
                "version": manifest.version,
                "created_at": created,
                "manifest": encode(manifest),
                "file_id": file_id,
                "published": False,
                "published_at": None,
                "withdrawn": False,
                "pinned": False,
            })
        except BaseException:
            # A manifest-less artifact would be an orphan nothing ever lists or deletes.
            self.bucket.delete(file_id)
            raise
        return manifest

    def list(self, name: str | None = None) -> list[ModelEntry]:
        """Registered versions (of one model, or of all), oldest first within each name."""
        query = {} if name is None else {"name": name}
        entries = [_entry(doc) for doc in self.models.find(query)]
        return sorted(entries, key=lambda e: (e.name, e.version))

    def names(self) -> builtins.list[str]:  # `list` here is the method above
        return sorted({entry.name for entry in self.list()})

    def get(self, name: str, version: str) -> ModelEntry:
        doc = self.models.find_one({"_id": entry_id(name, version)})
        if doc is None:
            known = [entry.version for entry in self.list(name)]
            hint = f"registered versions: {', '.join(known[-5:])}" if known else "no version is registered"
            raise RegistryError(f"no model {name} version {version} ({hint})")
        return _entry(doc)

    def latest(self, name: str) -> ModelEntry:
        entries = self.list(name)
        if not entries:
            raise RegistryError(f"no model named {name} is registered")
        return entries[-1]

    def fetch_artifact(self, manifest: ModelManifest) -> bytes:
        """The artifact's bytes, after checking them against the manifest's sha256."""
        entry = self.get(manifest.name, manifest.version)
        try:
            data = self.bucket.open_download_stream(entry.file_id).read()
        except NoFile:
            raise CorruptArtifactError(
                f"the artifact of {manifest.name} {manifest.version} ({manifest.artifact_uri}) is missing "
                "from GridFS"
            ) from None
        actual = sha256_hex(data)
        if actual != manifest.sha256:
            raise CorruptArtifactError(
                f"the artifact of {manifest.name} {manifest.version} is corrupt: sha256 {actual[:12]}... "
                f"does not match the manifest's {manifest.sha256[:12]}...; register the model again"
            )
        return data

    def set_flags(self, name: str, version: str, **flags: Any) -> None:
        result = self.models.update_one({"_id": entry_id(name, version)}, {"$set": flags})
        if result.matched_count != 1:
            raise RegistryError(f"no model {name} version {version}")

    def clear_flag(self, name: str, flag: str, *, keep: str | None = None) -> None:
        """Set `flag` false on every version of `name` but `keep`."""
        query: MongoDocument = {"name": name, flag: True}
        if keep is not None:
            query["version"] = {"$ne": keep}
        self.models.update_many(query, {"$set": {flag: False}})


def _entry(doc: MongoDocument) -> ModelEntry:
    return ModelEntry(
        manifest=decode(ModelManifest, doc["manifest"]),
        file_id=doc["file_id"],
        created_at=_utc(doc["created_at"]),
        published=bool(doc.get("published")),
        published_at=None if doc.get("published_at") is None else _utc(doc["published_at"]),
        withdrawn=bool(doc.get("withdrawn")),
        pinned=bool(doc.get("pinned")),
        gate=doc.get("gate"),
    )


def _utc(value: datetime) -> datetime:
    # pymongo returns naive UTC datetimes unless the client is tz-aware.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
