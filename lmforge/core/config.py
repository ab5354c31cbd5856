"""Presets: load configs/NAME.toml, apply `--set section.key=value` overrides, validate every key and type."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.core.limits import ArchiveLimits
from lmforge.core.errors import LmforgeError
from lmforge.core.policy import Policy, load as load_policy

REPO_ROOT = Path(__file__).resolve().parents[2]  # a source checkout; site-packages in a plain `pip install .`
DEFAULT_PRESET = "jokes-char"


def in_checkout() -> bool:
    """Whether lmforge runs from its source tree (an editable install or the repository itself)."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "configs").is_dir()


@dataclass
class DataConfig:
    source: str = "pyjokes"          # pyjokes | http(s) URL | s3:// gs:// az:// hf:// URL (fsspec) | file | directory
                                     # | glob | .tar.gz/.zip archive (docs/data.md)
    format: str = "auto"             # auto | text | lines | csv | tsv | jsonl | json | parquet | hf (save_to_disk) | imdb
    column: str = ""                 # the text column (csv/tsv/parquet/hf) or field (jsonl, nested a.b); "" = the
                                     # one column that holds text
    filter: str = ""                 # csv/tsv rows to keep, e.g. Country == "lebanon" (lmforge/core/rowfilter.py)
    val_filter: str = ""             # same language: only matching rows can be drawn into val; other rows all train
    separator: str = ""              # document separator for text, e.g. <|endoftext|>; "" = blank lines
    sha256: str = ""                 # expected digest of a downloaded file
    # Limits, each at most the operator's ceiling of the same name (lmforge/core/policy.py; docs/security.md):
    max_bytes: int = 4 << 30         # largest download accepted (docs/security.md says why 4 GiB)
    max_seconds: int = 3600          # one download, all attempts and retries together
    archive_max_bytes: int = ArchiveLimits.max_bytes      # total uncompressed bytes of an archive
    archive_max_members: int = ArchiveLimits.max_members  # members in an archive
    archive_max_ratio: float = ArchiveLimits.max_ratio    # uncompressed/compressed (whole, and per zip member)
    max_record_chars: int = 16 << 20  # one document, line, CSV/TSV field or row: longer is an error, not a hang
    encoding_errors: str = "strict"  # strict (error names file and offset) | replace
    val_fraction: float = 0.1
    split: str = "documents"         # documents (each document's side drawn from its content hash) | contiguous
                                     # (the last val_fraction of the text: continuous text, nanoGPT's split)
    seed: int = 1337
    max_documents: int = 0           # 0 = all
    parts: int = 1                   # > 1: clean and encode in parts, fanned out over the flow's task runner
    user_set: typing.ClassVar[frozenset] = frozenset()  # per instance, set by load_config: keys --set/overrides gave


@dataclass
class CleanConfig:
    strip_html: bool = False
    strip_urls: bool = False         # links and @mentions (tweets)
    unicode_nfc: bool = True
    normalize_whitespace: bool = True
    lowercase: bool = False
    min_chars: int = 1
    max_chars: int = 0               # 0 = no limit
    dedupe: bool = True


@dataclass
class TokenizerConfig:
    kind: str = "char"               # char | word | bpe | gpt2
    vocab_size: int = 8192           # bpe
    min_frequency: int = 1           # word, bpe
    path: str = ""                   # gpt2: local directory with tokenizer files


@dataclass
class ModelConfig:
    family: str = "gpt"              # gpt | lstm | gru | hf-gpt2
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    n_hidden: int = 256              # lstm / gru hidden size
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    pretrained: str = ""             # hf-gpt2: local checkpoint directory


@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    optimizer: str = "adamw"         # adamw | muon (gpt: Muon on the blocks' matrices, AdamW on the rest;
                                     # lmforge/training/muon.py, docs/quality.md "Time to quality")
    muon_lr: float = 0.02            # train.optimizer = muon: the matrices' peak lr (the schedule scales it as lr)
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10           # steps between progress reports: the loss is read (a GPU sync) only then
    early_stop_patience: int = 0     # evals without improvement before stopping; 0 = off
    device: str = "auto"             # auto | cpu | cuda | mps
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16 (autocast on cuda)
    compile: bool = False
    threads: int = 0                 # torch intra-op threads; 0 = torch default
    seed: int = 1337
    deterministic: bool = False      # torch.use_deterministic_algorithms: a resumed run repeats the same numbers
    nproc: int = 1                   # > 1: torchrun --standalone with this many DDP processes on this host
    # Where the weights start (docs/scheduling.md "Warm starts and training longer"); default: a fresh init.
    init_from: str = ""              # models:/NAME@ALIAS | models:/NAME/VERSION | a run directory | champion (this
                                     # preset's champion, a fresh start while there is none): a warm start
    init_optimizer: bool = False     # a warm start also takes the parent's AdamW moments (its run directory here)
    continue_run: bool = False       # `lmforge run --continue`: go on from this config's finished run on this data
                                     # with the most steps below max_steps


@dataclass
class EvalConfig:
    prompts: list[str] = field(default_factory=lambda: [""])
    prompts_file: str = ""           # UTF-8 text, one prompt a line (relative to the preset file): replaces prompts;
                                     # samples, and the side-by-side table of a promotion, use these prompts
    temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5])
    top_k: int = 0
    max_new_tokens: int = 100
    num_samples: int = 1


@dataclass
class ExportConfig:
    opset: int = 17
    int8: bool = True
    fp16: bool = False               # model.fp16.onnx, for the CUDA execution provider
    optimize: bool = True            # model.opt.onnx: onnxruntime's extended graph optimisations, saved offline
    parity_tolerance: float = 1e-3
    int4: bool = False               # model.fast.int4.onnx: block-wise 4-bit weights (MatMulNBits), gpt only; opt-in:
                                     # on a barely trained model 4-bit rounding flips near-tied choices past min_int4_agreement
    int8_kernel: str = "blocks"      # model.fast.int8.onnx: "blocks" (MatMulNBits, 8-bit blocks of 128: greedy rows
                                     # speculate exactly at batch 1) or "dynamic" (DynamicQuantizeMatMul: ~1.3x the
                                     # tokens/s at batch 8, never speculates; docs/decode.md)
    rows_graph: bool = False         # model.fast.rows.onnx: the fp32 fast graph with one attention node per row of 8,
                                     # so that a batch of 8 greedy rows checks its drafts in one call, for
                                     # Generator(batch_lookahead=True); opt-in, as that is (docs/decode.md)
    # Checked at export through lmforge.runtime's own decoding state (docs/decode.md "Verification"); an export
    # past a bound fails. fp32 graphs against torch:
    max_abs_logit_diff: float = 1e-3
    # quantised graphs against the fp32 graph of the same kind, on `check_positions` real val positions:
    max_int8_loss_delta: float = 0.05    # nats/token
    min_int8_agreement: float = 0.9      # share of positions with the same top-1 token
    max_int4_loss_delta: float = 0.15
    min_int4_agreement: float = 0.8
    max_fp16_loss_delta: float = 0.01
    min_fp16_agreement: float = 0.97
    check_positions: int = 256
    temperature: float = 0.8         # generation defaults written to lmforge.json
    top_k: int = 40
    top_p: float = 1.0
    max_new_tokens: int = 100
    hf: bool = True                  # hf/: the Hugging Face folder transformers loads (gpt, hf-gpt2; lmforge/export/hf.py)
    gguf: str = "f16"                # model.<type>.gguf for llama.cpp: f32, f16, q8_0, or "none" (lmforge/export/gguf.py)


@dataclass
class PromoteConfig:
    # The one place these defaults live: `lmforge promote`, the promotion flow and the pipeline's promote.auto step
    # all read them from the candidate's config (lmforge/registry/promote.py "settings").
    margin: float = 0.01             # bits per byte of val text the candidate must beat the champion by
    gate: float = 0.75               # a first champion must beat, in bits per byte, the unigram model of its own
                                     # tokens on the same text by this
    windows: int = 128               # evenly spaced val-shard windows of the val loss shown beside (nats/token)
    text_bytes: int = 65536          # bytes of val text scored in bits per byte (whole documents, evenly spaced)
    seed: int = 0                    # the seed of the side-by-side table's sampled continuations
    auto: bool = False               # the pipeline ends with the promotion step (scheduled runs)


@dataclass
class Config:
    name: str = DEFAULT_PRESET       # the registered model (and the runs' directories): the preset's name, or the
                                     # data's when data.source is not the preset's own (model_name_for_data)
    description: str = ""            # the model card's first paragraph ("" for another source: the card says what)
    data: DataConfig = field(default_factory=DataConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    preset: str = DEFAULT_PRESET     # the preset file it came from (its stem), whatever the name
    own_data: bool = True            # data.source is the preset's own (False: the model is named after the data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The Config that to_dict gave (e.g. as JSON for another process), every key checked as a preset's."""
        return _build(cls(), d, (), "a config dict", load_policy())

    def flat(self) -> dict[str, object]:
        """Dotted keys -> values, as logged to MLflow params."""
        out: dict[str, object] = {"name": self.name, "preset": self.preset}
        for section in SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                out[f"{section}.{key}"] = value
        return out


SECTIONS = ("data", "clean", "tokenizer", "model", "train", "eval", "export", "promote")
CHOICES = {
    "data.format": ("auto", "text", "lines", "csv", "tsv", "jsonl", "json", "parquet", "hf", "imdb"),
    "data.encoding_errors": ("strict", "replace"),
    "data.split": ("documents", "contiguous"),
    "tokenizer.kind": ("char", "word", "bpe", "gpt2"),
    "model.family": ("gpt", "lstm", "gru", "hf-gpt2"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.dtype": ("auto", "float32", "bfloat16", "float16"),
    "train.optimizer": ("adamw", "muon"),
    "export.gguf": ("f16", "f32", "q8_0", "none"),
    "export.int8_kernel": ("blocks", "dynamic"),
}


def presets_dir() -> Path:
    """$LMFORGE_PRESETS, else the checkout's configs/, else the presets installed with the package (configs/ is
    shipped as the package lmforge.presets)."""
    if os.environ.get("LMFORGE_PRESETS"):
        return Path(os.environ["LMFORGE_PRESETS"])
    if in_checkout():
        return REPO_ROOT / "configs"
    from importlib.resources import files

    return Path(str(files("lmforge.presets")))


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(presets_dir().glob("*.toml")):
        out[path.stem] = tomllib.loads(path.read_text()).get("description", "")
    return out


TOP_KEYS = ("name", "description")  # `--set name=...` (or --name), `--set description=...`


def needs_checkpoint() -> list[str]:
    """The presets that fine-tune a checkpoint they do not name (model.family hf-gpt2, no model.pretrained)."""
    out = []
    for path in sorted(presets_dir().glob("*.toml")):
        model = tomllib.loads(path.read_text()).get("model", {})
        if model.get("family") == "hf-gpt2" and not model.get("pretrained"):
            out.append(path.stem)
    return out


def valid_keys() -> list[str]:
    return [*TOP_KEYS, *(f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s)))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def _coerce(key: str, value: object, annotation: object) -> object:
    """Convert a TOML value or a --set string to the field's declared type, or explain why not."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):  # nan / inf: never a useful setting
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is list:
            (item_type,) = typing.get_args(annotation)
            if isinstance(value, str):
                value = json.loads(value) if value.strip().startswith("[") else [v for v in value.split(",")]
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(key, v, item_type) for v in value]
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        raise AssertionError(f"unsupported annotation {annotation}")
    type_name = getattr(annotation, "__name__", str(annotation))
    raise LmforgeError(f"config key {key} expects {type_name}, got {value!r}",
                       hint=f"e.g. --set {key}={_example(annotation)}")


def _example(annotation: object) -> str:
    """A --set value of the annotation's type that the config accepts (a list: JSON of one such item)."""
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return json.dumps([{bool: True, int: 100, float: 0.5, str: "text"}[item]])
    return {bool: "true", int: "100", float: "0.5", str: "text"}[annotation]  # type: ignore[index]


def _apply(cfg: Config, key: str, value: object) -> None:
    if key in TOP_KEYS:
        setattr(cfg, key, str(value))
        return
    section, _, attr = key.partition(".")
    if section not in SECTIONS or attr not in {f.name for f in dataclasses.fields(_section_type(section))}:
        close = difflib.get_close_matches(key, valid_keys(), n=1)
        raise LmforgeError(f"unknown config key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
                           hint="valid keys: " + ", ".join(valid_keys()))
    annotation = typing.get_type_hints(_section_type(section))[attr]
    value = _coerce(key, value, annotation)
    if key in CHOICES and value not in CHOICES[key]:
        raise LmforgeError(f"config key {key} must be one of {', '.join(CHOICES[key])}, got {value!r}",
                           hint=f"--set {key}={CHOICES[key][0]}")
    setattr(getattr(cfg, section), attr, value)


def _check(cfg: Config, policy: Policy) -> None:
    from lmforge.core.config_safety import check_untrusted_keys

    check_untrusted_keys(cfg, policy)  # the keys whoever triggers a run sets, checked before Prefect starts
    positive = ["data.parts", "model.n_layer", "model.n_head", "model.n_embd", "model.n_hidden", "model.block_size",
                "train.max_steps", "train.batch_size", "train.nproc", "train.grad_accum", "train.eval_interval",
                "train.eval_iters", "train.log_interval", "train.muon_lr", "eval.max_new_tokens", "promote.windows",
                "export.check_positions"]
    flat = cfg.flat()
    for key in positive:
        if flat[key] <= 0:  # type: ignore[operator]
            raise LmforgeError(f"config key {key} must be > 0, got {flat[key]}", hint=f"--set {key}=1")
    for key in ("promote.margin", "promote.gate"):  # below 0, a worse model wins: that is --force, by a person
        if flat[key] < 0:  # type: ignore[operator]
            raise LmforgeError(f"config key {key} must be >= 0, got {flat[key]}", hint=f"--set {key}=0.01")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise LmforgeError(f"data.val_fraction must be between 0 and 1, got {cfg.data.val_fraction}",
                           hint="--set data.val_fraction=0.1")
    if cfg.data.val_filter and cfg.data.split == "contiguous":
        raise LmforgeError("data.val_filter picks val documents, but data.split=contiguous splits by position",
                           hint="--set data.split=documents, or --set data.val_filter=")
    if cfg.model.family == "gpt" and cfg.model.n_embd % cfg.model.n_head:
        raise LmforgeError(f"model.n_embd ({cfg.model.n_embd}) must be divisible by model.n_head ({cfg.model.n_head})",
                           hint="pick n_embd as a multiple of n_head")
    _check_start(cfg.train)
    if cfg.train.optimizer == "muon" and cfg.model.family != "gpt":
        raise LmforgeError(f"train.optimizer=muon orthogonalises the gpt blocks' matrices; model.family is "
                           f"{cfg.model.family}", hint="--set train.optimizer=adamw")
    if cfg.model.family == "hf-gpt2" and not cfg.model.pretrained:
        raise LmforgeError("preset needs a local GPT-2 checkpoint directory",
                           hint=f"{CHECKPOINT_HOWTO}, then --set model.pretrained=$PWD/gpt2-local")
    if cfg.model.family == "hf-gpt2" and not Path(cfg.model.pretrained).expanduser().is_dir():
        raise LmforgeError(f"model.pretrained {cfg.model.pretrained!r} is not a local directory: lmforge downloads no "
                           "weights", hint=f"{CHECKPOINT_HOWTO}, copy gpt2-local here, then "
                           "--set model.pretrained=/path/to/gpt2-local")


# How to get a GPT-2 checkpoint onto a machine without network access (README "jokes-gpt2", `lmforge presets`, and
# the hint above): one command on a machine that has it, which writes what lmforge/models/hf_gpt2.py reads
# (config.json, model.safetensors, tokenizer.json).
CHECKPOINT_COMMAND = ('python -c "from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; '
                      "[c.from_pretrained('openai-community/gpt2').save_pretrained('gpt2-local') for c in (M, T)]\"")
CHECKPOINT_HOWTO = f"on a machine with network access and lmforge[pipeline]: {CHECKPOINT_COMMAND}"


def _check_start(t: TrainConfig) -> None:
    if t.init_from and t.continue_run:
        raise LmforgeError("train.init_from and --continue (train.continue_run) are both set: a continued run "
                           "starts from its own finished run", hint="drop one: --set train.init_from= or no --continue")
    if t.init_optimizer and not t.init_from:
        raise LmforgeError("train.init_optimizer is set without train.init_from", hint="--set train.init_from=champion")


def load_config(preset: str | None = None, overrides: list[str] | dict | None = None,
                policy: Policy | None = None) -> Config:
    """Build a Config from a preset name (or a path to a .toml) plus overrides ("key=value" strings or a dict),
    within the operator's policy (default: the one in this process's environment, for a local run): the one
    parse of a run's settings. Flows and tasks receive the Config it returns; a process that gets the config as
    JSON (torchrun's ranks) rebuilds it with Config.from_dict, through the same checks."""
    policy = policy or load_policy()
    name = preset or DEFAULT_PRESET
    path = Path(name) if name.endswith(".toml") else presets_dir() / f"{name}.toml"
    if policy.deployment and path.parent.resolve() != presets_dir().resolve():
        raise LmforgeError(f"preset {name!r} is a file outside the presets directory, which a deployment run "
                           "does not read", hint=f"name a preset of {presets_dir()} (`lmforge presets`)")
    if not path.is_file():
        known = ", ".join(list_presets()) or "none found"
        raise LmforgeError(f"unknown preset {name!r}", hint=f"`lmforge presets` lists them: {known}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise LmforgeError(f"preset file {path} is not valid TOML: {exc}", hint="fix the file's syntax") from exc
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides or [])
    return _build(Config(name=path.stem, preset=path.stem), raw, items, f"{path}", policy, preset_dir=path.parent)


def _build(cfg: Config, raw: dict, overrides, where: str, policy: Policy,
           preset_dir: Path | None = None) -> Config:
    """cfg with `raw` (sections of keys, as TOML or Config.to_dict give them) and then the overrides applied,
    each value coerced and checked against its field, within the operator's policy; then the checks across
    keys. A preset file (preset_dir: its directory) also names the model after foreign data and reads
    eval.prompts_file; a dict from Config.to_dict already holds what that gave."""
    from lmforge.core.config_safety import clamp_limits

    for key, value in raw.items():
        if key in ("preset", "own_data") and preset_dir is None:  # Config.to_dict's, not a preset's keys
            setattr(cfg, key, value)
            continue
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise LmforgeError(f"unknown section [{key}] in {where}", hint="sections: " + ", ".join(SECTIONS))
            for attr, v in value.items():
                _apply(cfg, f"{key}.{attr}", v)
        else:
            _apply(cfg, key, value)
    clamp_limits(cfg, policy)  # the preset asks for "at most": the operator's ceiling wins
    items = list(overrides)
    for key, value in items:
        _apply(cfg, key, value)
    # the data keys the user set, not the preset: a preset's format/column give way to what the file is
    # (lmforge.data.detect); an attribute, not a field: it is no part of the config's hash or params
    cfg.data.user_set = frozenset(k.partition(".")[2] for k, _ in items if k.startswith("data."))
    if preset_dir is not None:
        _own_data(cfg, raw, items)
        if cfg.eval.prompts_file:
            cfg.eval.prompts = read_prompts(preset_dir, cfg.eval.prompts_file)
    if cfg.tokenizer.kind == "gpt2" and not cfg.tokenizer.path:  # a checkpoint ships its own tokenizer
        cfg.tokenizer.path = cfg.model.pretrained
    _check(cfg, policy)
    return cfg


def _own_data(cfg: Config, raw: dict, items: list) -> None:
    """Their data, their model: a data.source that is not the preset's own names the model after the data (unless
    a name is given) and drops the preset's description, which describes the preset's data."""
    own_source = raw.get("data", {}).get("source", DataConfig.source) if isinstance(raw.get("data"), dict) \
        else DataConfig.source
    cfg.own_data = cfg.data.source == own_source
    named = "name" in raw or any(k == "name" for k, _ in items)
    if not cfg.own_data and not named:  # never the preset's registered model
        cfg.name = model_name_for_data(cfg.data.source, cfg.preset)
    if not cfg.own_data and "description" not in {k for k, _ in items}:
        cfg.description = ""  # the model card describes this data


PROMPTS_MAX_BYTES, PROMPTS_MAX = 64 << 10, 64  # a prompts file: its size, and prompts kept


def read_prompts(preset_dir: Path, name: str) -> list[str]:
    """eval.prompts_file's prompts: one a line, blank lines skipped; relative to the preset file's directory."""
    path = Path(name).expanduser()
    path = path if path.is_absolute() else preset_dir / path
    try:
        with open(path, "rb") as f:
            raw = f.read(PROMPTS_MAX_BYTES + 1)
    except OSError as exc:
        raise LmforgeError(f"eval.prompts_file {name}: {exc.strerror or exc} ({path})",
                           hint="one prompt a line, UTF-8; relative paths are read from the preset's directory") from None
    if len(raw) > PROMPTS_MAX_BYTES:
        raise LmforgeError(f"eval.prompts_file {path} is over {PROMPTS_MAX_BYTES >> 10} KiB",
                           hint=f"keep at most {PROMPTS_MAX} short prompts, one a line")
    try:
        prompts = [line for line in raw.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"eval.prompts_file {path} is not UTF-8 (byte {exc.start})",
                           hint="save it as UTF-8") from None
    if not prompts or len(prompts) > PROMPTS_MAX:
        raise LmforgeError(f"eval.prompts_file {path} holds {len(prompts)} prompts",
                           hint=f"between 1 and {PROMPTS_MAX}, one a line")
    return prompts


DATA_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".tgz", ".tar", ".csv", ".tsv", ".jsonl", ".json", ".parquet",
                 ".txt", ".text")


def model_name_for_data(source: str, preset: str) -> str:
    """The registered model's name for a run on data that is not the preset's own: the source's file (or
    directory, or URL path) name without its data suffixes, as a lowercase slug. A name that is a preset's
    (its registered model) is refused: foreign data never lands in a preset's model."""
    import re
    import urllib.parse

    raw = source.strip()
    if "://" in raw:
        parsed = urllib.parse.urlparse(raw)
        raw = urllib.parse.unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]) or parsed.hostname or ""
    else:
        raw = Path(raw.rstrip("/\\")).name
    stem = raw
    while stem.lower().endswith(DATA_SUFFIXES):
        stem = stem[: stem.rfind(".")]
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:60].strip("-") or "data"
    if slug in list_presets():
        raise LmforgeError(f"data.source {source!r} is not preset {preset}'s own data, and the model named after it "
                           f"would be {slug!r}, preset {slug}'s model", hint="name it: --name my-data (or --set "
                           "name=my-data)")
    return slug


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise LmforgeError(f"--set expects key=value, got {override!r}", hint="e.g. --set train.max_steps=50")
    return key.strip(), value.strip()
