"""Promotion: score the registry's `candidate` and `champion` versions on the SAME held-out tokens (the
candidate's val shard) through onnxruntime, and move `champion` only when the candidate is better by a margin.
Also the onnxruntime val loss of each exported variant beside fp32's, which the export task records."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from lmforge import tracking
from lmforge.errors import LmforgeError
from lmforge.runtime import Generator


def prefill_feeds(gen: Generator, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs that run whole windows `ids` [batch, seq] from an empty state (an empty KV cache or a zero
    recurrent state), named as the exported graph names them."""
    B, T = ids.shape
    feeds = {"input_ids": ids.astype(np.int64), "position_ids": np.tile(np.arange(T, dtype=np.int64), (B, 1)),
             "attention_mask": np.ones((B, T), np.int64), **gen._empty_state(B)}
    wanted = {i.name for i in gen.session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}


def onnx_val_loss(model_dir: str | Path, data: np.ndarray, block_size: int | None = None, max_windows: int = 128,
                  variant: str = "fp32", batch_size: int = 8) -> float:
    """Mean next-token loss (nats) of the exported model over evenly spaced windows of `data`."""
    from lmforge.evaluate import windows

    gen = Generator(model_dir, variant=variant, device="cpu", fast=False)
    T = int(block_size or gen.dir.model["block_size"])
    starts = windows(data, T, max_windows)
    if not len(starts):
        raise LmforgeError(f"the val shard has {len(data)} tokens, fewer than one window of {T + 1}",
                           hint="prepare more data or lower model.block_size")
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        xy = np.stack([data[s:s + T + 1].astype(np.int64) for s in starts[i:i + batch_size]])
        x, y = xy[:, :-1], xy[:, 1:]
        logits = gen.session.run([gen.dir.io["logits"]], prefill_feeds(gen, x))[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logsumexp = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
        total += float((logsumexp - np.take_along_axis(logits, y[..., None], -1)[..., 0]).sum())
        count += y.size
    return total / count


DELTA_VARIANTS = ("int8", "fp16", "optimized")  # portable graphs onnx_val_loss can score beside fp32


def variant_val_loss_deltas(model_dir: Path, val: np.ndarray, max_windows: int = 32) -> dict[str, float]:
    """fp32's val loss and each exported variant's val loss minus it, all through onnxruntime on the same
    windows of `val`; also written into the directory's lmforge.json `metrics`. {} when there is no variant."""
    from lmforge.runtime.modeldir import read_model_dir, write_manifest

    md = read_model_dir(model_dir)
    variants = [v for v in DELTA_VARIANTS if v in md.variants()]
    if not variants:
        return {}
    fp32 = onnx_val_loss(model_dir, val, max_windows=max_windows)
    scores = {"onnx_fp32_val_loss": fp32,
              **{f"{v}_val_loss_delta": onnx_val_loss(model_dir, val, max_windows=max_windows, variant=v) - fp32
                 for v in variants}}
    write_manifest(model_dir, {**md.manifest, "metrics": {**md.manifest.get("metrics", {}), **scores}})
    return scores


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _val_shard(version) -> np.ndarray:
    from lmforge.data.shards import open_shard

    where = version.tags.get("prepared_dir")
    if not where or not (Path(where) / "val.bin").is_file():
        raise LmforgeError(f"the candidate's val shard ({where or 'no prepared_dir tag'}) is not on this machine",
                           hint="promote where the candidate was trained, or re-run `lmforge prepare` with its preset")
    return open_shard(Path(where), "val")


def candidate_version(name: str):
    """The registry's `candidate` version of `name`, or a clear error."""
    try:
        return tracking.client().get_model_version_by_alias(name, "candidate")
    except Exception:
        raise LmforgeError(f"registered model {name!r} has no `candidate` version",
                           hint="run the pipeline first: `lmforge run --preset NAME`") from None


def promote(name: str, margin: float = 0.01, force: bool = False, max_windows: int = 128) -> dict:
    """Compare `candidate` with `champion` of registered model `name`; point `champion` at the candidate when it
    wins by more than `margin` nats per token (or `force`, or when there is no champion yet). The comparison is
    written to the candidate version's tags and description. Returns the comparison."""
    c = tracking.client()
    cand = candidate_version(name)
    try:
        champ = c.get_model_version_by_alias(name, "champion")
    except Exception:
        champ = None
    result = {"model": name, "candidate_version": str(cand.version), "margin": margin, "forced": force,
              "champion_version": str(champ.version) if champ else None, "candidate_loss": None,
              "champion_loss": None}
    if champ is not None and champ.version == cand.version:
        return {**result, "decision": "unchanged", "reason": f"version {cand.version} is already the champion"}
    with tempfile.TemporaryDirectory(prefix="lmforge-promote-") as tmp:
        cand_dir = tracking.fetch_model_dir(f"models:/{name}/{cand.version}", Path(tmp) / "candidate")
        data = _val_shard(cand)
        if _sha256(Path(cand.tags["prepared_dir"]) / "tokenizer.json") != _sha256(cand_dir / "tokenizer.json"):
            raise LmforgeError(f"the val shard at {cand.tags['prepared_dir']} was made with another tokenizer than "
                               f"{name} version {cand.version}", hint="re-run the candidate's pipeline")
        cand_spec = Generator(cand_dir, device="cpu", fast=False).dir.model
        block = int(cand_spec["block_size"])
        if champ is not None:
            champ_dir = tracking.fetch_model_dir(f"models:/{name}/{champ.version}", Path(tmp) / "champion")
            same_tokenizer = _sha256(champ_dir / "tokenizer.json") == _sha256(cand_dir / "tokenizer.json")
            if not same_tokenizer and not force:
                raise LmforgeError(f"{name} candidate v{cand.version} and champion v{champ.version} use different "
                                   "tokenizers, so their losses are not comparable",
                                   hint="retrain the candidate with the champion's tokenizer settings, or --force")
            if same_tokenizer:
                block = min(block, int(Generator(champ_dir, device="cpu", fast=False).dir.model["block_size"]))
                result["champion_loss"] = onnx_val_loss(champ_dir, data, block, max_windows)
        result["candidate_loss"] = onnx_val_loss(cand_dir, data, block, max_windows)
    result["windows"], result["block_size"] = max_windows, block
    if champ is None:
        decision, reason = "promoted", "no champion yet: first promotion"
    elif force:
        decision, reason = "promoted", "forced by --force"
    elif result["champion_loss"] - result["candidate_loss"] > margin:
        decision, reason = "promoted", f"candidate beats champion by more than {margin:g} nats/token"
    else:
        decision, reason = "kept", f"candidate does not beat champion by more than {margin:g} nats/token"
    result.update(decision=decision, reason=reason)
    if decision == "promoted":
        c.set_registered_model_alias(name, "champion", cand.version)
    for key, value in (("promotion_decision", decision), ("promotion_reason", reason),
                       ("promotion_champion_version", result["champion_version"] or "none"),
                       ("promotion_candidate_loss", _fmt(result["candidate_loss"])),
                       ("promotion_champion_loss", _fmt(result["champion_loss"]))):
        c.set_model_version_tag(name, cand.version, key, value)
    c.update_model_version(name, cand.version, description=(cand.description or "") + "\n\n" +
                           comparison_markdown(result))
    return result


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def comparison_markdown(r: dict) -> str:
    champ = f"v{r['champion_version']}" if r["champion_version"] else "none"
    return "\n".join([f"## Promotion of {r['model']} v{r['candidate_version']}: {r['decision']}", "",
                      f"{r['reason']}.", "",
                      "| version | role | val loss (onnxruntime, same windows) |", "| --- | --- | --- |",
                      f"| v{r['candidate_version']} | candidate | {_fmt(r['candidate_loss'])} |",
                      f"| {champ} | champion before | {_fmt(r['champion_loss'])} |", "",
                      f"margin {r['margin']:g} nats/token, forced: {r['forced']}"])
