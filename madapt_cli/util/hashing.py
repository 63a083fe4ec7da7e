"""Content hashes of training data and files (sha256)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def training_fingerprint(*parts: Any) -> str:
    """sha256 over ids (strings), vectors (float32 bytes) and qrels, in order."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
        elif isinstance(part, Mapping):
            for query_id in sorted(part):
                for doc_id, grade in sorted(part[query_id].items()):
                    digest.update(f"{query_id}\t{doc_id}\t{grade}\n".encode())
        else:
            for item in part:
                digest.update(str(item).encode("utf-8") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def file_fingerprint(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
