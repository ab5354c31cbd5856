"""Where a run's files live, and what makes two runs the same run.

    artifacts/cache/                                downloads, extracted archives, the pyjokes corpus
    artifacts/prepared/<preset>-<data config hash>/ the prepared data of one data config (re-made in place
                                                    when its source changes)
    artifacts/runs/<preset>-<weights hash>-<data fingerprint>/
        data/   the prepared files this run trains on (hard links: a later re-preparation leaves them alone)
        ckpt/   last/ and best/ checkpoints          model/  the exported model directory

A run is identified by what its weights depend on: the model and training config (the weights hash) and the
data it is trained on (the data fingerprint: corpus, tokenizer, split and shard hashes: lmforge.data.prepare). So a
re-run of the same command on the same data resumes from its checkpoint; the same config on changed data
trains from step 0 in a directory of its own; and changes that do not touch the weights (export.*, eval.*,
promote.*, train.threads/device/compile/log_interval, data.parts) re-use the trained checkpoint and redo only what they change."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.core.config import REPO_ROOT, Config, in_checkout
from lmforge.core.records import StartFrom
from lmforge.core.safepath import confined

DATA_SECTIONS = ("data", "clean", "tokenizer")
# config keys that change how a run is computed or what is done with its weights, never the weights themselves
NOT_WEIGHTS = {"export": None, "eval": None, "promote": None,
               "train": ("threads", "device", "compile", "log_interval",
                         # where the weights start: the starting weights' own hash stands for these (weights_for)
                         "init_from", "init_optimizer", "continue_run")}


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# data keys that say how preparation runs or what it refuses, not what it makes
NOT_CONTENT = ("parts", "sha256", "max_bytes", "max_seconds", "archive_max_bytes", "archive_max_members",
               "archive_max_ratio", "max_record_chars")


def config_hash(cfg: Config, sections: tuple[str, ...] | None = None) -> str:
    """Short hash of what the config makes (NOT_CONTENT left out: how preparation is spread, what it checks)."""
    d = cfg.to_dict()
    for key in NOT_CONTENT:
        d["data"].pop(key, None)
    if sections:
        d = {k: d[k] for k in sections}
    return _hash(d)


def weights_hash(cfg: Config, without: tuple[str, ...] = ()) -> str:
    """Hash of the config keys the trained weights depend on, beside the data and the starting weights (model.*,
    train.* but NOT_WEIGHTS and `without`). The data sections are left out: the data fingerprint stands for what
    they make."""
    d = cfg.to_dict()
    skip = NOT_WEIGHTS["train"] + without
    if d["train"]["optimizer"] == "adamw":  # muon_lr is unused then; and runs from before these keys keep their hash
        skip += ("optimizer", "muon_lr")
    return _hash({"model": d["model"], "train": {k: v for k, v in d["train"].items() if k not in skip}})


def artifacts_root() -> Path:
    """$LMFORGE_ARTIFACTS, else artifacts/ in the source checkout, else artifacts/ in the working directory (an
    installed package must never write into site-packages)."""
    if os.environ.get("LMFORGE_ARTIFACTS"):
        return Path(os.environ["LMFORGE_ARTIFACTS"])
    return (REPO_ROOT if in_checkout() else Path.cwd()) / "artifacts"


@dataclass(frozen=True)
class RunDir:
    """One run's directory: the data it trains on, its checkpoints and its exported model."""
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def lock(self) -> Path:
        return self.root.with_name(self.root.name + ".lock")


@dataclass(frozen=True)
class RunLayout:
    """The paths of one config: its cache and prepared-data directory now, its run directory once the data's
    fingerprint is known (run_dir)."""
    artifacts: Path
    name: str
    weights: str
    data_config: str
    family: str = ""                 # the weights hash but max_steps: runs one --continue can extend

    @classmethod
    def for_config(cls, cfg: Config, artifacts: Path | None = None) -> "RunLayout":
        layout = cls(Path(artifacts or artifacts_root()), cfg.name, weights_hash(cfg), config_hash(cfg, DATA_SECTIONS),
                     weights_hash(cfg, without=("max_steps",)))
        confined(layout.artifacts / "prepared", layout.prepared, "prepared-data directory")  # cfg.name is a slug
        confined(layout.artifacts / "runs", layout.artifacts / "runs" / layout.run_prefix, "run directory")  # anyway
        return layout

    @property
    def prepared(self) -> Path:
        return self.artifacts / "prepared" / f"{self.name}-{self.data_config}"

    @property
    def prepared_lock(self) -> Path:
        return self.prepared.with_name(self.prepared.name + ".lock")

    @property
    def cache(self) -> Path:
        return self.artifacts / "cache"

    @property
    def run_prefix(self) -> str:
        return f"{self.name}-{self.weights}-"

    def weights_for(self, start: StartFrom | None) -> str:
        """The weights part of a run's identity: the config's weights hash, and the weights it starts from (a
        warm start's parent, or the finished run a --continue extends), when not a fresh init."""
        if start is None:
            return self.weights
        return _hash({"config": self.weights, "start": start.kind, "from": start.weights_sha256,
                      "optimizer": start.optimizer})

    def run_dir(self, data_fingerprint: str, start: StartFrom | None = None) -> RunDir:
        root = self.artifacts / "runs" / f"{self.name}-{self.weights_for(start)}-{data_fingerprint[:10]}"
        return RunDir(confined(self.artifacts / "runs", root, "run directory"))

    def runs_on(self, data_fingerprint: str) -> list[RunDir]:
        """Every run directory of this preset name on this data (any config, any start), newest first."""
        runs = self.artifacts / "runs"
        found = [p for p in runs.glob(f"{self.name}-*-{data_fingerprint[:10]}") if p.is_dir()] if runs.is_dir() else []
        return [RunDir(p) for p in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)]

    def run_dirs(self) -> list[RunDir]:
        """The run directories of this config (on any data), newest first."""
        runs = self.artifacts / "runs"
        found = [p for p in runs.glob(f"{self.run_prefix}*") if p.is_dir()] if runs.is_dir() else []
        return [RunDir(p) for p in sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)]

    def earlier_runs(self, data_fingerprint: str) -> list[Path]:
        """Run directories of this config on other data, newest first."""
        mine = self.run_dir(data_fingerprint).root
        return [r.root for r in self.run_dirs() if r.root != mine]
