"""The vocabulary every section file of the config uses: field metadata read by the loader and
the id walker, the error a section's cross-field rule raises, and the checks several sections
share (plain names, sha256 digests). The underscored helpers are for ``raydiff.config``'s own
section files only."""

from __future__ import annotations

import re
from typing import Any


def _range(lo: float | None = None, hi: float | None = None, **more: Any) -> dict[str, Any]:
    return {"range": (lo, hi), **more}


# Field metadata read by the loader and the id walker (``raydiff.config.identity``):
#: ``{"id": "omit"}``: never part of a model or run id (it changes no weight and no score).
ID_OMIT = {"id": "omit"}
#: ``{"id": "unless-default"}``: hashed only when not the default (a field added after configs
#: were hashed: those configs keep their ids). With ``"id_default": V`` the value left unhashed is
#: V instead of the default: a default that changed later (configs that relied on the old
#: default V keep their ids only where they spell V; every other run gets a new folder).
ID_UNLESS_DEFAULT = {"id": "unless-default"}
#: ``{"id_name": OLD}``: hashed under its earlier name (a renamed field keeps the ids it had).


class Invalid(ValueError):
    """A cross-field rule of a section broken (raised by its ``check``): ``keys`` are the dotted
    keys involved (the loader blames the first one a ``--set`` or a variable gave, else the file)."""

    def __init__(self, keys: tuple[str, ...], message: str, fix: str) -> None:
        super().__init__(message)
        self.keys, self.message, self.fix = keys, message, fix


#: What a dataset or category name may look like: it names folders under the output root.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+ -]*$")


def is_plain_name(value: str) -> bool:
    """A plain folder name: no ``/``, ``..``, leading dot or surrounding blanks."""
    return bool(_PLAIN_NAME.fullmatch(value)) and value.strip() == value and ".." not in value


#: What is wrong with a name that is not plain, and how to fix it (``dataset.check``, the loader).
PLAIN_NAME_PROBLEM = ("'{key}' = {value!r} is not a plain name: dataset and category names become folder names "
                      "under the output root, so they may not contain '/', '\\', '..' or start with '.'.")
PLAIN_NAME_FIX = ("name the category folder itself (e.g. 'bottle'), not a path; set dataset.root to the folder "
                  "that holds it.")


#: A sha256 digest as the ids record it (``weights_sha256``, ``vae_sha256``, ``init.sha256``).
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_digests(obj: Any, prefix: str, path_key: str, keys: tuple[str, ...]) -> None:
    """Each of ``keys`` a sha256 digest; given only with the file ``path_key`` that it describes."""
    for key in keys:
        value = getattr(obj, key)
        if value is None:
            continue
        if not _SHA256.fullmatch(value):
            raise Invalid((f"{prefix}.{key}",), f"'{prefix}.{key}' = {value!r} is not a sha256 digest "
                          "(64 lower-case hex digits).", "give `sha256sum FILE`'s digest (a folder's: what "
                          "`raydiff config` shows once it is set), or leave it out.")
        if getattr(obj, path_key) is None and key != keys[-1]:
            raise Invalid((f"{prefix}.{key}", f"{prefix}.{path_key}"), f"'{prefix}.{key}' is set but "
                          f"'{prefix}.{path_key}' is not: it is the digest of that file.",
                          f"set {prefix}.{path_key}, or remove {prefix}.{key}.")
