"""Config keys that whoever triggers a run controls (`--set`, a deployment's `overrides`), checked when the config
is loaded against the operator's policy (lmforge.core.policy), so a hostile or mistaken value fails in one line
before Prefect starts (docs/security.md): limits within the operator's ceilings (0 no longer lifts one), model
sizes and fan-outs bounded, generation settings that sample, sources and local paths the policy allows."""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from lmforge.core.errors import LmforgeError
from lmforge.core.policy import Policy
from lmforge.core.rowfilter import parse as parse_filter
from lmforge.core.safepath import check_slug

if TYPE_CHECKING:
    from lmforge.core.config import Config

# Limits on what one input may cost: a preset's value over the operator's ceiling is lowered to it (the preset
# asks for "at most"); an override over it is refused.
LIMIT_KEYS = ("data.max_bytes", "data.max_seconds", "data.archive_max_bytes", "data.archive_max_members",
              "data.archive_max_ratio", "data.max_record_chars")
# Sizes a run needs: over the operator's ceiling is refused, from a preset too (lowering them would train
# another model than the one asked for).
SIZE_KEYS = ("data.parts", "tokenizer.vocab_size", "model.n_layer", "model.n_head", "model.n_embd",
             "model.n_hidden", "model.block_size", "train.batch_size", "train.grad_accum", "train.max_steps",
             "train.eval_iters", "train.nproc", "eval.num_samples", "export.check_positions", "promote.windows")
PATH_KEYS = ("model.pretrained", "tokenizer.path")


def clamp_limits(cfg: "Config", policy: Policy) -> None:
    """Lower the preset's (or the default's) limits to the operator's ceilings; called before the overrides."""
    for key in LIMIT_KEYS:
        section, attr = key.split(".")
        value = getattr(getattr(cfg, section), attr)
        top = policy.ceiling(key)
        if value > top:
            setattr(getattr(cfg, section), attr, type(value)(top))


def check_untrusted_keys(cfg: "Config", policy: Policy) -> None:
    flat = cfg.flat()
    check_slug(cfg.name, "name")  # a directory under artifacts/, an MLflow experiment, a registered model
    for key in ("data.filter", "data.val_filter"):
        if flat[key]:
            parse_filter(flat[key], key)  # syntax and allow-list now; column names when the table is read
    for key in LIMIT_KEYS + SIZE_KEYS:
        policy.bounded(key, flat[key])  # type: ignore[arg-type]
    if cfg.train.threads:  # 0 = torch's default
        policy.bounded("train.threads", cfg.train.threads)
    params, top = estimated_params(cfg), policy.ceiling("model.params")
    if params > top:
        raise LmforgeError(f"the configured {cfg.model.family} model has about {params:,} weights (from model.* and "
                           f"tokenizer.vocab_size), over the operator's ceiling model.params={int(top)}",
                           hint="lower model.n_layer / n_embd / n_hidden, or the operator raises it: "
                                "LMFORGE_CEILINGS=model.params=N (docs/security.md)")
    check_generation(cfg, policy)
    if cfg.data.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", cfg.data.sha256):
        raise LmforgeError(f"data.sha256 must be 64 hex digits, got {cfg.data.sha256!r}",
                           hint="`sha256sum FILE` prints it")
    if cfg.data.source != "pyjokes":
        policy.check_source(cfg.data.source)
        policy.check_references(cfg.data.source)
    for key in PATH_KEYS:
        if flat[key] and policy.deployment:  # local runs read the user's own checkpoints, as before
            policy.check_source(str(flat[key]), key)
    check_init_from(cfg.train.init_from, policy)


def check_init_from(init_from: str, policy: Policy) -> None:
    """train.init_from in a deployment run: a registered version (models:/..., `champion`) is the registry's and
    fine; a run directory is a local path, allowed only inside the operator's local roots (as model.pretrained):
    otherwise a triggerer could start from, and so publish, weights trained on another team's data."""
    if init_from and policy.deployment and init_from != "champion" and not init_from.startswith("models:/"):
        policy.check_source(init_from, "train.init_from")


def check_generation(cfg: "Config", policy: Policy) -> None:
    """Sampling settings that every `generate` would reject later (runtime.sampling), refused now."""
    exp, ev = cfg.export, cfg.eval
    for key, value in [("export.temperature", exp.temperature)] + [("eval.temperatures", t) for t in ev.temperatures]:
        if not (math.isfinite(value) and value >= 0):
            raise LmforgeError(f"config key {key} must be >= 0 (0 = greedy), got {value:g}", hint=f"--set {key}=0.8")
    for key, value in (("export.top_k", exp.top_k), ("eval.top_k", ev.top_k)):
        if value < 0:
            raise LmforgeError(f"config key {key} must be >= 0 (0 = off), got {value}", hint=f"--set {key}=40")
    if not 0 < exp.top_p <= 1:
        raise LmforgeError(f"config key export.top_p must be in (0, 1] (1 = off), got {exp.top_p:g}",
                           hint="--set export.top_p=0.95")
    for key in ("eval.max_new_tokens", "export.max_new_tokens"):
        section, attr = key.split(".")
        policy.bounded("serve.max_new_tokens", getattr(getattr(cfg, section), attr), key=key)
    top = policy.ceiling("serve.max_prompt_bytes")
    for prompt in ev.prompts:
        if len(prompt.encode("utf-8", "surrogatepass")) > top:
            raise LmforgeError(f"an eval.prompts entry is over the operator's ceiling of {top:g} bytes",
                               hint="shorten it")


def estimated_params(cfg: "Config") -> int:
    """The configured model's weights, from its dimensions (the vocabulary counted when the config fixes it: bpe,
    gpt2). hf-gpt2's size is its checkpoint's: only the dimension ceilings apply to it."""
    m = cfg.model
    vocab = {"bpe": cfg.tokenizer.vocab_size, "gpt2": 50257}.get(cfg.tokenizer.kind, 0)
    if m.family == "gpt":
        return 12 * m.n_layer * m.n_embd ** 2 + (vocab + m.block_size) * m.n_embd
    if m.family in ("lstm", "gru"):
        gates = 4 if m.family == "lstm" else 3
        first = gates * m.n_hidden * (m.n_embd + m.n_hidden)
        return first + gates * (m.n_layer - 1) * 2 * m.n_hidden ** 2 + vocab * (m.n_embd + m.n_hidden)
    return 1

