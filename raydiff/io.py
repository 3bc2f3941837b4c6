"""Atomic outputs: write under a temporary name, rename when complete, then a success marker.

A folder with its marker is complete; a folder without one is left-over work that is rewritten.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in 16 MiB chunks (about 1-2 s per GB); remembered
    per process for an unchanged file (same resolved path, size, modification and change times,
    inode: a file replaced by a rename is read again)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=128)
def _file_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a folder's content (a diffusers model folder: config.json + weights):
    of the lines ``<relative path>\\0<file sha256>\\n`` of every file below it (symbolic links
    followed, as in a Hugging Face cache snapshot), sorted by path; names starting with ``.`` are
    skipped at every level. Moving or renaming the folder keeps it; editing, adding or removing a
    file changes it. Each file's digest is remembered as :func:`file_sha256`'s."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [Path(dirpath) / n for n in filenames if not n.startswith(".")]
    h = hashlib.sha256()
    for rel, file in sorted((f.relative_to(root).as_posix(), f) for f in files):
        h.update(f"{rel}\0{file_sha256(file)}\n".encode())
    return h.hexdigest()
