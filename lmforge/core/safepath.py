"""Names that become path components, and paths that must stay inside their root.

`name` comes from whoever triggers a run (`--set name=...`, a deployment parameter) and becomes a directory
under artifacts/ (runs/, prepared/), an MLflow experiment and a registered model. A slug of letters, digits,
`.`, `_` and `-` that does not start with `.` cannot name a parent directory, an absolute path or a hidden file;
`confined` checks the joined path anyway, so a later change to how paths are built cannot escape silently.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lmforge.core.errors import LmforgeError

_SLUG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def check_slug(value: str, key: str) -> str:
    """`value` if it is a safe single path component, else an error naming `key`."""
    if not _SLUG.fullmatch(value):
        raise LmforgeError(f"{key} {value!r} is not a safe name: use letters, digits, '.', '_' and '-' "
                           "(at most 100, not starting with '.')",
                           hint=f"e.g. --set {key}=my-run-1")
    return value


def safe_component(text: str, fallback: str) -> str:
    """`text` made into a safe path component: other characters become '_', leading dots are dropped,
    at most 100 characters; `fallback` when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:100]
    return cleaned or fallback


def confined(root: Path, path: Path, what: str, hint: str = "use a plain name (letters, digits, '.', '_', '-')"
             ) -> Path:
    """`path` if it lies strictly inside `root`, judged on the normalised absolute paths (so `..` and absolute
    parts cannot climb out); symlinks an operator placed under root (artifacts/runs on a bigger disk) are
    deliberately not followed, or such a setup would be refused."""
    root_abs = os.path.normpath(os.path.abspath(root))
    path_abs = os.path.normpath(os.path.abspath(path))
    if path_abs == root_abs or os.path.commonpath([root_abs, path_abs]) != root_abs:
        raise LmforgeError(f"{what} {path} lies outside {root}", hint=hint)
    return Path(path)
