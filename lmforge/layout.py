"""Where a run's files live: artifacts/runs/<preset>-<config hash>/{ckpt,model}, its prepared data in
artifacts/prepared/<preset>-<data config hash>/ (shared by runs that differ only in training), and the
download/extraction cache artifacts/cache. The same config maps to the same directory, so re-running a
killed command resumes from its checkpoint."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import Config
from lmforge.safepath import confined


def config_hash(cfg: Config, sections: tuple[str, ...] | None = None) -> str:
    """Short hash of what the config makes; data.parts only says how preparation is spread, not what it makes."""
    d = cfg.to_dict()
    d["data"].pop("parts")
    if sections:
        d = {k: d[k] for k in sections}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def artifacts_root() -> Path:
    """artifacts/ in the repository, or $LMFORGE_ARTIFACTS."""
    return Path(os.environ.get("LMFORGE_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))


DATA_SECTIONS = ("data", "clean", "tokenizer")


@dataclass(frozen=True)
class RunLayout:
    root: Path
    data: Path

    @classmethod
    def for_config(cls, cfg: Config, artifacts: Path | None = None) -> "RunLayout":
        base = artifacts or artifacts_root()
        layout = cls(base / "runs" / f"{cfg.name}-{config_hash(cfg)}",
                     base / "prepared" / f"{cfg.name}-{config_hash(cfg, DATA_SECTIONS)}")
        for parent, path in ((base / "runs", layout.root), (base / "prepared", layout.data)):
            confined(parent, path, "run directory")  # cfg.name is a slug (config_safety); this holds whatever built it
        return layout

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def cache(self) -> Path:
        return self.root.parent.parent / "cache"
