"""Recall channels: each turns a user (or an item) into tagged candidates, offline and in serving."""
