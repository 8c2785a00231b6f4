"""Rule-based recall: operator-defined rules split into atomic sub-queries whose results are cached in
Redis and shared by every user and rule that needs them (`definition`: the rule language; `atoms`: one
atom's result from the datasets; `engine`: evaluation with the cache; `store`: rules in MongoDB with a
per-worker copy kept fresh through ZooKeeper)."""
