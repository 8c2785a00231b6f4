"""API keys inside a serving worker: verified keys cached in memory (`keys`) and per-key rate limits
(`limits`). The HTTP side (the Authorization header, 401/403/429) is `serving.api.auth`."""
