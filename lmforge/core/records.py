"""What one pipeline step hands the next, as typed records (Prefect passes them between tasks as they are, and
pickles them for Dask workers): the prepared data a run trains on, the training's outcome, the exported model
directory and the registry's answer. Each is built by the library function that makes it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Cleaned:
    """A corpus read and cleaned into a spill file (lmforge.data.prepare.SpillWriter, one JSON list of documents per
    line): what the split, the tokenizer and the encoders read. Made by prepare.clean_to_spill (a part of the
    source: partition.clean_part), completed by prepare.finish_cleaning, merged from parts by
    partition.merge_cleaned."""
    spill: Path
    documents: int
    chars: int
    corpus_sha256: str
    lines: tuple = ()                # (byte offset, documents) per spill line: where runs of lines start
    clean_report: list = field(default_factory=list)
    source: Path | None = None       # the corpus it was read from
    val_ok: Path | None = None       # <spill>.val-ok.npy: a val-eligible flag per document (data.val_filter)
    fingerprint: str = ""            # lmforge.data.prepare.source_fingerprint of the source
    ran_on: tuple = ()               # host:pid of the processes that cleaned it (data.parts > 1)


@dataclass(frozen=True)
class PartsPlan:
    """How a source is cleaned in parts (data.parts > 1): groups of its files (None: the whole source)."""
    parts: list
    fingerprint: str                 # lmforge.data.prepare.source_fingerprint of the source


@dataclass(frozen=True)
class EncodeRun:
    """A run of spill lines one part encodes: byte offsets start..stop (None: to the end), its first document."""
    start: int
    stop: int | None
    first_doc: int


@dataclass(frozen=True)
class EncodedPart:
    """One part's shards (lmforge.data.shards.write_split_files) before they are joined, in order."""
    train: Path
    val: Path
    counts: dict                     # {"train"|"val": {"tokens", "documents", "sha256"}}
    val_chars: int
    ran_on: str = ""


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
    train_documents: int = 0         # documents (or pieces of a contiguous stream) on each side
    val_documents: int = 0

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
                   ran_on=meta.get("ran_on", []), source_objects=meta.get("source_objects", []),
                   train_documents=meta["train"].get("documents", 0), val_documents=meta["val"].get("documents", 0))

    @property
    def tokenizer_file(self) -> Path:
        return self.dir / "tokenizer.json"


@dataclass(frozen=True)
class StartFrom:
    """The weights a run starts from when not a fresh init (docs/scheduling.md "Warm starts and training longer"):
    a warm start (train.init_from: a registered version or a run directory; lmforge.registry.warmstart) or a
    finished run of the same config and data continued to more steps (--continue; lmforge.training.warmstart)."""
    kind: str                        # warm-start | continue
    source: str                      # train.init_from as given, or the continued run's directory
    ckpt_dir: Path                   # the parent's checkpoints: best/ (a warm start's weights), last/ (the rest)
    weights_sha256: str              # of the parent's weights: part of this run's identity (RunLayout.weights_for)
    data_fingerprint: str            # what the parent was trained on
    optimizer: bool = False          # the parent's AdamW moments too (always, for a continued run)
    name: str = ""                   # registered model and version of the parent, when it came from the registry
    version: str = ""
    run_dir: Path | None = None      # the parent's run directory, when on this machine
    tokenizer_file: Path | None = None  # the parent's tokenizer (a warm start compares the vocabularies)
    step: int = 0                    # the parent's last step
    rows: tuple | None = None        # warm start: the parent's token id for each of this run's ids (-1: new token,
                                     # fresh row); None: the same vocabulary
    shared_tokens: int = 0


@dataclass(frozen=True)
class Lineage:
    """What a trained version started from, as recorded on its MLflow run (tags()) and handed to the registry."""
    kind: str = "fresh"              # fresh | warm-start | continue
    source: str = ""                 # train.init_from as given, or the continued run's directory
    parent_name: str = ""
    parent_version: str = ""
    parent_data_fingerprint: str = ""
    parent_weights_sha256: str = ""
    from_step: int = 0               # continue: the parent's finished step
    shared_tokens: int = 0           # warm start: rows carried over from the parent's embedding
    new_tokens: int = 0              # warm start: rows initialised fresh (tokens the parent did not have)
    optimizer: bool = False          # the parent's AdamW moments were loaded too
    schedule: str = ""               # the learning-rate schedule this run's steps used

    def tags(self) -> dict:
        """lineage.* run tags (empty values left out)."""
        return {f"lineage.{k}": str(v) for k, v in asdict(self).items() if v not in ("", 0, False)
                or k == "kind"}


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
    lineage: Lineage = field(default_factory=Lineage)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("history", "lineage")}


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
