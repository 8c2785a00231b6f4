"""Versioned batch outputs in MongoDB: write a whole new collection, then switch the pointer.

SecantusDB (and MongoDB) insert a fresh collection far faster than they upsert into a live one, and a
reader following the pointer never sees a half-written version.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database

from finegrain.storage.contract import Dataset, MongoCollections, check_version

MongoDocument = dict[str, Any]


def new_version(now: datetime | None = None) -> str:
    """A version name from the build time: `YYYYMMDDTHHMMSS` (UTC)."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")


class MongoVersions:
    """The pointer document of each dataset in the `pointers` collection, and its versions."""

    def __init__(self, db: Database[MongoDocument]) -> None:
        self.db = db
        self.pointers = db[MongoCollections.POINTERS]

    def current(self, dataset: Dataset) -> str | None:
        doc = self.pointers.find_one({"_id": str(dataset)})
        return None if doc is None else str(doc["version"])

    def write(self, dataset: Dataset, version: str, documents: Iterable[MongoDocument]) -> int:
        """Write a complete version into its own collection (replacing a partial one of the same name)."""
        collection = self.db[MongoCollections.versioned(dataset, version)]
        if version == self.current(dataset):
            raise ValueError(f"{dataset} version {version} is current; write a new version instead")
        collection.drop()
        batch: list[MongoDocument] = []
        written = 0
        for document in documents:
            batch.append(document)
            if len(batch) == 5000:
                written += len(collection.insert_many(batch, ordered=False).inserted_ids)
                batch = []
        if batch:
            written += len(collection.insert_many(batch, ordered=False).inserted_ids)
        return written

    def switch(self, dataset: Dataset, version: str) -> str | None:
        """Point `dataset` at `version` in one document update; returns the version it replaced."""
        check_version(version)
        if MongoCollections.versioned(dataset, version) not in self.db.list_collection_names():
            raise ValueError(f"{dataset} version {version} was never written")
        before = self.pointers.find_one_and_update(
            {"_id": str(dataset)},
            [{"$set": {"previous": "$version", "version": version, "switched_at": datetime.now(UTC)}}],
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        return None if before is None else str(before["version"])

    def versions(self, dataset: Dataset) -> list[str]:
        prefix = MongoCollections.versioned(dataset, "x")[:-1]
        return sorted(
            name[len(prefix) :] for name in self.db.list_collection_names() if name.startswith(prefix)
        )

    def prune(self, dataset: Dataset) -> list[str]:
        """Drop every version but the current and the previous one (kept for rollback)."""
        doc = self.pointers.find_one({"_id": str(dataset)}) or {}
        keep = {doc.get("version"), doc.get("previous")}
        dropped = [v for v in self.versions(dataset) if v not in keep]
        for version in dropped:
            self.db.drop_collection(MongoCollections.versioned(dataset, version))
        return dropped
