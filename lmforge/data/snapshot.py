"""A run's own copy of its prepared data: run/data/ holds hard links to the prepared directory's tokenizer.json,
train.bin, val.bin and meta.json. The prepared directory is re-made in place when its source changes (each
file replaced by rename, so a new inode); the links keep pointing at the bytes this run trained on, so
evaluation, export and promotion never pair old weights with a new tokenizer or val set."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from lmforge.data.shards import META
from lmforge.core.records import PreparedData

FILES = ("tokenizer.json", "train.bin", "val.bin", META)  # meta.json last: its presence marks the copy complete
OPTIONAL = ("val.jsonl",)  # the val text (lmforge.data.prepare.write_val_text), in data prepared since it exists


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: a copy holds the same bytes
        shutil.copy2(src, dst)


def snapshot(prepared: PreparedData, dest: Path) -> PreparedData:
    """Give `dest` the files of the prepared directory (once: a complete copy of the same data fingerprint is
    kept as it is); returns the same data, its dir now `dest`, prepared_dir where it came from."""
    src, dest = Path(prepared.dir), Path(dest)
    current = dest / META
    if current.is_file():
        try:
            have = json.loads(current.read_text(encoding="utf-8"))
        except ValueError:
            have = {}
        if have.get("data_fingerprint") == prepared.fingerprint:
            for name in OPTIONAL:  # a copy made before the file existed gets it (the same data: same fingerprint)
                if not (dest / name).exists() and (src / name).is_file():
                    _link_or_copy(src / name, dest / name)
            return dataclasses.replace(prepared, dir=dest, prepared_dir=src)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in OPTIONAL + FILES:
            if name in FILES or (src / name).is_file():
                _link_or_copy(src / name, tmp / name)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataclasses.replace(prepared, dir=dest, prepared_dir=src)
