"""Publish the item catalogue into MongoDB as a new version (`catalog__{version}`) and switch to it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

from finegrain.codecs import encode
from finegrain.schemas import ItemFeatures
from finegrain.settings import Settings
from finegrain.storage.clients import MongoDocument, mongo_client, mongo_database
from finegrain.storage.contract import Dataset
from finegrain.storage.versions import MongoVersions, new_version


@dataclass(frozen=True)
class CatalogPublishReport:
    version: str
    items: int
    previous: str | None
    dropped: list[str]


def catalog_documents(catalog: pd.DataFrame) -> Iterator[MongoDocument]:
    for row in catalog.itertuples(index=False):
        message = ItemFeatures(
            item_id=row.item_id,
            description=row.description,
            price=float(row.price),
            first_seen_ms=_epoch_ms(row.first_seen),
            last_seen_ms=_epoch_ms(row.last_seen),
        )
        yield {
            "_id": row.item_id,
            "description": row.description,
            "price": float(row.price),
            "pb": encode(message),
        }


def publish_catalog(
    settings: Settings, catalog: pd.DataFrame, version: str | None = None
) -> CatalogPublishReport:
    version = version or new_version()
    client = mongo_client(settings)
    try:
        versions = MongoVersions(mongo_database(settings, client))
        items = versions.write(Dataset.CATALOG, version, catalog_documents(catalog))
        previous = versions.switch(Dataset.CATALOG, version)
        dropped = versions.prune(Dataset.CATALOG)
    finally:
        client.close()
    return CatalogPublishReport(version, items, previous, dropped)


def _epoch_ms(value: pd.Timestamp) -> int:
    return int(pd.Timestamp(value).value // 1_000_000)
