"""`GET /v1/recommendations` and `GET /v1/items/{item_id}/similar`."""

from __future__ import annotations

from typing import ClassVar

import falcon
import numpy as np

from finegrain.apikeys import Scope
from serving.api import params
from serving.api.auth import Access
from serving.api.errors import invalid, not_found
from serving.recommend import Recommender
from serving.state import SIMILARITY_ALGORITHMS
from serving.swap import Runtime

MAX_N = 200


class RecommendationsResource:
    auth: ClassVar[Access] = {"GET": Scope.RECOMMEND}

    def __init__(self, runtime: Runtime, recommender: Recommender) -> None:
        self.runtime = runtime
        self.recommender = recommender

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params.check_known(req, ("user_id", "scene", "n", "explain"))
        user_id = params.identifier(req, "user_id")
        assert user_id is not None
        scene = params.choice(req, "scene", self.recommender.config.scenes, default=None)
        n = params.integer(req, "n", default=20, low=1, high=MAX_N)
        explain = params.boolean(req, "explain")
        resp.media = self.recommender.recommend(self.runtime.data, self.runtime.models, self.runtime.fallback,
                                                user_id=user_id, scene=scene, n=n, explain=explain)


class SimilarItemsResource:
    auth: ClassVar[Access] = {"GET": Scope.RECOMMEND}

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: str) -> None:
        if not params.ID_PATTERN.match(item_id):
            raise invalid("item_id", f"item_id must be {params.ID_RULE}")
        params.check_known(req, ("n", "algorithm"))
        n = params.integer(req, "n", default=20, low=1, high=MAX_N)
        algorithm = params.choice(req, "algorithm", SIMILARITY_ALGORITHMS, default="cosine")
        assert algorithm is not None
        data = self.runtime.data
        if data is None:
            resp.media = {"item_id": item_id, "algorithm": algorithm, "items": [], "degraded": True,
                          "degraded_reasons": ["snapshot: no dataset loaded"]}
            return
        neighbours = data.neighbours[algorithm]
        row = int(neighbours.index([item_id])[0])
        if row < 0 or not data.known(np.asarray([item_id], dtype=object))[0]:
            raise not_found(f"item {item_id!r} is not in the catalogue of features version "
                            f"{data.versions.get('features')}", "item_id")
        start, end = neighbours.matrix.indptr[row], neighbours.matrix.indptr[row + 1]
        columns, scores = neighbours.matrix.indices[start:end], neighbours.matrix.data[start:end]
        order = np.lexsort((columns, -scores))[:n]
        items = [{"item_id": str(neighbours.item_ids[columns[i]]), "score": round(float(scores[i]), 6)}
                 for i in order]
        resp.media = {"item_id": item_id, "algorithm": algorithm, "degraded": False,
                      "version": data.versions.get("similarity"), "items": items}
