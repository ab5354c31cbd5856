"""What one pipeline step hands the next, as typed records (Prefect passes them between tasks as they are, and
pickles them for Dask workers): the prepared data a run trains on, the training's outcome, the exported model
directory and the registry's answer. Each is built by the library function that makes it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path



@dataclass(frozen=True)
class PreparedData:
    """A prepared-data directory (tokenizer.json, train.bin, val.bin, meta.json): a run's own copy of it once
    snapshotted (dir = runs/<run>/data, prepared_dir = where it came from)."""
    dir: Path
    vocab_size: int
    fingerprint: str                 # lmforge.data.prepare.data_fingerprint: what a model trained here saw
    special_ids: dict
    split: dict                      # lmforge.data.prepare.Split.describe()
    source: str                      # redacted
    corpus_sha256: str
    tokenizer_sha256: str
    documents: int
    chars: int
    train_tokens: int
    val_tokens: int
    val_chars: int
    val_sha256: str
    clean_report: list = field(default_factory=list)
    cached: bool = False
    prepared_dir: Path | None = None
    ran_on: list = field(default_factory=list)  # host:pid of the processes that prepared parts (data.parts > 1)
    source_objects: list = field(default_factory=list)  # object-store sources: key, etag/version, sha256 of each

    @classmethod
    def from_meta(cls, meta: dict) -> "PreparedData":
        """From meta.json's content plus the keys the preparation adds (dir, cached, prepared_dir, ran_on)."""
        return cls(dir=Path(meta["dir"]), vocab_size=meta["vocab_size"], fingerprint=meta["data_fingerprint"],
                   special_ids=meta["special_ids"], split=meta["split"], source=meta["source"],
                   corpus_sha256=meta["corpus_sha256"], tokenizer_sha256=meta["tokenizer_sha256"],
                   documents=meta["documents"], chars=meta["chars"], train_tokens=meta["train"]["tokens"],
                   val_tokens=meta["val"]["tokens"], val_chars=meta.get("val_chars", 0),
                   val_sha256=meta["val"]["sha256"], clean_report=meta.get("clean_report", []),
                   cached=meta.get("cached", False),
                   prepared_dir=Path(meta["prepared_dir"]) if meta.get("prepared_dir") else None,
                   ran_on=meta.get("ran_on", []), source_objects=meta.get("source_objects", []))

    @property
    def tokenizer_file(self) -> Path:
        return self.dir / "tokenizer.json"


@dataclass(frozen=True)
class Trained:
    """Where the run's checkpoints are and what training did (lmforge.training.train.TrainResult, plus the run)."""
    run_dir: Path
    ckpt_dir: Path
    steps: int
    best_val_loss: float
    final_train_loss: float
    tokens_per_s: float
    wall_s: float
    device: str
    resumed_from: int
    stopped_early: bool
    n_params: int
    weights_sha256: str              # of the weights exported (best/): equal for identical models
    history: list = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "history"}


@dataclass(frozen=True)
class Exported:
    """The exported model directory and what its export measured (parity, sizes, variant deltas)."""
    model_dir: Path
    metrics: dict


@dataclass(frozen=True)
class Registered:
    """The registry's version for a run's model; reused: an identical version existed and was pointed at."""
    name: str
    version: str
    reused: bool
