"""Embedding stores: named tables of (id, vector, text_sha256[, text]) rows, in Parquet or
LanceDB (:mod:`madapt_cli.store.base`)."""

from madapt_cli.store.base import Store, open_store

__all__ = ["Store", "open_store"]
