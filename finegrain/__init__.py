"""Finegrain's shared core: settings, storage clients and contract, codecs, data loading, the CLI."""

__version__ = "0.1.0"
