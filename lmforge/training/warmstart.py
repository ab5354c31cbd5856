"""Where a run's weights start when not from a fresh init (docs/scheduling.md "Warm starts and training longer"):

- a warm start (train.init_from): the parent's weights (its best/ checkpoint) on this run's data, with this run's
  own warmup and schedule from step 0. The tokenizers must be of the same kind (same model type, pre-tokenizer,
  normalizer and decoder); the vocabularies may differ: the embedding (and output) rows of the tokens both have
  are carried over by token string, the others keep this model's fresh init (token_map). A tokenizer of another
  kind, or one that shares fewer than half of this run's tokens, is refused in one line before training.
  train.init_optimizer also loads the parent's AdamW moments (rows remapped the same way; new rows zero).
- a continued run (--continue): the finished run of the same config (all but max_steps) on the same data with
  the most steps below max_steps (find_continuation); its ckpt/last and best are copied into this run's ckpt
  (Checkpoints.adopt) and training resumes from that step to the new max_steps."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmforge.core.errors import LmforgeError
from lmforge.core.layout import RunLayout
from lmforge.core.records import Lineage, StartFrom
from lmforge.training.checkpoint import Checkpoints, _retie, weights_sha256
from lmforge.training.schedule import describe

# The state-dict entries indexed by token id along dim 0, per model family (GPT's lm_head is tied to wte).
VOCAB_PARAMS = {"gpt": ("wte.weight", "lm_head.weight"), "hf-gpt2": ("wte.weight", "lm_head.weight"),
                "lstm": ("embed.weight", "head.weight", "head.bias"), "gru": ("embed.weight", "head.weight", "head.bias")}
MIN_SHARED = 0.5  # a warm start needs at least this share of this run's tokens in the parent's vocabulary
SCHEME_KEYS = ("normalizer", "pre_tokenizer", "decoder")


def _scheme(tokenizer: dict) -> str:
    """What a tokenizer is, apart from its vocabulary: the model type and the pre/post-processing around it."""
    return json.dumps([tokenizer["model"]["type"], *(tokenizer.get(k) for k in SCHEME_KEYS)], sort_keys=True)


def _kind(tokenizer: dict) -> str:
    """A tokenizer's kind in lmforge's words (char, word, byte-level BPE), from its tokenizer.json."""
    from lmforge.data.tokenize import CHAR_PATTERN, WORD_PATTERN

    pattern = ((tokenizer.get("pre_tokenizer") or {}).get("pattern") or {}).get("Regex")
    return {CHAR_PATTERN: "char", WORD_PATTERN: "word"}.get(pattern, tokenizer["model"]["type"]) \
        if tokenizer["model"]["type"] == "WordLevel" else "byte-level BPE"


def _vocab(tokenizer_file: Path) -> dict[str, int]:
    from lmforge.data.tokenize import load_tokenizer

    return load_tokenizer(tokenizer_file).get_vocab(with_added_tokens=True)


def token_map(parent_tokenizer: Path, tokenizer: Path, source: str) -> tuple[tuple | None, int]:
    """(for each of this run's token ids the parent's id of the same token or -1, or None when the vocabularies
    are the same; the number of shared tokens). Refuses another kind of tokenizer, or too few shared tokens."""
    theirs, ours = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (parent_tokenizer, tokenizer))
    if _scheme(theirs) != _scheme(ours):
        raise LmforgeError(f"warm start from {source} refused: its tokenizer is {_kind(theirs)}, this run's is "
                           f"{_kind(ours)}", hint="train from scratch (--set train.init_from=) or use the parent's "
                           "tokenizer.kind")
    parent, mine = _vocab(parent_tokenizer), _vocab(tokenizer)
    if parent == mine:
        return None, len(mine)
    rows = [-1] * len(mine)
    for token, i in mine.items():
        rows[i] = parent.get(token, -1)
    shared = sum(r >= 0 for r in rows)
    if shared < MIN_SHARED * len(mine):
        raise LmforgeError(f"warm start from {source} refused: its tokenizer shares {shared} of this run's "
                           f"{len(mine)} tokens (a warm start needs at least {MIN_SHARED:.0%})",
                           hint="train from scratch: --set train.init_from=")
    return tuple(rows), shared


def _remap(fresh: torch.Tensor, parent: torch.Tensor, rows: tuple | None) -> torch.Tensor:
    """fresh with the parent's rows copied in where this run's token exists in the parent's vocabulary."""
    if rows is None:
        return parent
    index = torch.tensor(rows)
    out, keep = fresh.detach().clone(), index >= 0
    out[keep] = parent[index[keep]].to(out.dtype)
    return out


def load_warm_start(model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: StartFrom) -> str:
    """The parent's best weights (and with start.optimizer its AdamW moments) into `model` (and `optimizer`),
    vocabulary rows remapped; returns the line that says what happened."""
    ckpts = Checkpoints(start.ckpt_dir)
    path = ckpts.path("best") or ckpts.path("last")
    if path is None:
        raise LmforgeError(f"warm start from {start.source}: no checkpoint in {start.ckpt_dir}",
                           hint="train the parent first, or --set train.init_from=")
    vocab = VOCAB_PARAMS.get(getattr(model, "family", "gpt"), ())
    mine = model.state_dict()
    theirs = _retie(load_file(str(path / "model.safetensors")), model)
    state = {}
    for name, fresh in mine.items():
        parent = theirs.get(name)
        fits = parent is not None and (parent.shape[1:] == fresh.shape[1:] if name in vocab else
                                       parent.shape == fresh.shape)
        if not fits:
            where = "missing" if parent is None else f"{list(parent.shape)} there"
            raise LmforgeError(f"warm start from {start.source} refused: its weights do not fit this model "
                               f"({name}: {where}, {list(fresh.shape)} here)",
                               hint="use the parent's model.* settings, or train from scratch: --set train.init_from=")
        state[name] = _remap(fresh, parent, start.rows) if name in vocab else parent
    model.load_state_dict(state, strict=True)
    if start.optimizer:
        _load_moments(model, optimizer, start, vocab)
    new = 0 if start.rows is None else sum(r < 0 for r in start.rows)
    return (f"warm start from {start.source}" + (f" (version {start.version})" if start.version else "")
            + f": {start.shared_tokens} token rows carried over, {new} new" + (", optimizer moments too"
                                                                              if start.optimizer else ""))


def _load_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: StartFrom, vocab) -> None:
    """The parent's AdamW state (ckpt/last) into `optimizer`, vocabulary rows remapped (new rows zero); this run's
    own hyperparameters (lr, weight decay, betas) kept."""
    ckpts = Checkpoints(start.ckpt_dir)
    last = ckpts.path("last")
    if last is None or not (last / "optimizer.pt").is_file():
        raise LmforgeError(f"train.init_optimizer: {start.source} has no optimizer state on this machine",
                           hint="--set train.init_optimizer=false (weights only)")
    blob = torch.load(last / "optimizer.pt", weights_only=True, map_location="cpu")["optimizer"]
    theirs, mine = ([len(g["params"]) for g in groups] for groups in (blob["param_groups"], optimizer.param_groups))
    if theirs != mine:
        raise LmforgeError(f"train.init_optimizer: {start.source} was trained with another optimizer (its groups: "
                           f"{theirs} parameters, this run's: {mine})",
                           hint="--set train.init_optimizer=false (weights only), or the parent's train.optimizer")
    ours = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]  # the optimizer's own numbering
    for i, moments in blob["state"].items():
        if order[int(i)] in vocab:
            for key in ("exp_avg", "exp_avg_sq"):
                moments[key] = _remap(torch.zeros_like(params[order[int(i)]]), moments[key], start.rows)
    optimizer.load_state_dict(blob)
    for group, hyper in zip(optimizer.param_groups, ours):
        group.update(hyper)


def find_continuation(layout: RunLayout, data_fingerprint: str, max_steps: int) -> StartFrom:
    """The finished run of layout's config family (every weights key but max_steps) on this data with the most
    steps below max_steps: what --continue extends. None of them: one line."""
    best = None
    for run in layout.runs_on(data_fingerprint):
        state = Checkpoints(run.ckpt).state("last") or {}
        finished = state.get("step", 0) >= state.get("max_steps", float("inf")) or state.get("stopped_early")
        if state.get("family") == layout.family and finished and state["step"] < max_steps and \
                state.get("identity", {}).get("data") == data_fingerprint:
            if best is None or state["step"] > best[1]:
                best = (run, state["step"])
    if best is None:
        raise LmforgeError(f"--continue: no finished run of {layout.name} with this config and data stops below "
                           f"max_steps {max_steps}", hint="run it first without --continue, or raise "
                           "train.max_steps above the finished run's")
    run, step = best
    return StartFrom("continue", str(run.root), run.ckpt, weights_sha256(run.ckpt, "last"), data_fingerprint,
                     optimizer=True, run_dir=run.root, step=step)


def continue_note(start: StartFrom, max_steps: int) -> str:
    return f"continuing {Path(start.source).name} from its finished step {start.step} to {max_steps} (--continue)"


def lineage_of(cfg, start: StartFrom | None) -> Lineage:
    """What the trained version records about where it started (cfg: the TrainConfig)."""
    if start is None:
        return Lineage(schedule=describe(cfg, None))
    new = 0 if start.rows is None else sum(r < 0 for r in start.rows)
    return Lineage(kind=start.kind, source=start.source, parent_name=start.name, parent_version=start.version,
                   parent_data_fingerprint=start.data_fingerprint, parent_weights_sha256=start.weights_sha256,
                   from_step=start.step if start.kind == "continue" else 0,
                   shared_tokens=start.shared_tokens if start.kind == "warm-start" else 0,
                   new_tokens=new, optimizer=start.optimizer, schedule=describe(cfg, start))


def with_vocabulary(start: StartFrom, tokenizer_file: Path, optimizer: bool) -> StartFrom:
    """A warm start's parent with its vocabulary compared against this run's (token_map: refused in one line
    when it does not fit) and train.init_optimizer."""
    import dataclasses

    rows, shared = token_map(start.tokenizer_file, tokenizer_file, start.source)
    return dataclasses.replace(start, rows=rows, shared_tokens=shared, optimizer=optimizer)
