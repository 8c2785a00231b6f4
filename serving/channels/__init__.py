"""Recall channels: one module per channel (its config and its `RecallChannel`), the interface in
`base`, and the table of types in `registry` (the one place a new channel is registered)."""
