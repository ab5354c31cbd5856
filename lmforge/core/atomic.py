"""Atomic file writes (temp file beside the target, then os.replace): a reader sees the old file or the new
one, never half of either. Standard library only, so the torch-free runtime uses it too."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj: object) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False))
