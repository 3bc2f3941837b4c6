"""Atomic outputs: write under a temporary name, rename when complete, then a success marker.

A folder with its marker is complete; a folder without one is left-over work that is rewritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = "_SUCCESS"


def is_complete(path: Path) -> bool:
    """True when ``path`` is a folder whose success marker was written."""
    return (Path(path) / MARKER).is_file()


def write_marker(path: Path, info: dict[str, Any] | None = None) -> None:
    """Write the success marker last (its content is informative JSON)."""
    tmp = Path(path) / f".{MARKER}.{uuid.uuid4().hex}"
    try:
        tmp.write_text(json.dumps(info or {}, indent=2, default=str))
        os.replace(tmp, Path(path) / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path, info: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` and gets the marker.

    On an exception the temporary folder is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_marker(final, info)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file under a temporary name and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # e.g. disk full: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise
