"""Atomic replacement of output directories (stores' tables, adaptors, applied stores, reports)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def replace_directory(staging: Path, target: Path) -> None:
    """Put the finished directory ``staging`` at ``target``, replacing any old one.

    The old directory is first renamed aside, so ``target`` always holds either the old or
    the new contents in full, never a mix; the old one is deleted afterwards.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
