"""Promotion: decide whether a registered version (the `candidate`, or one picked by number) becomes the
`champion`, on evidence a reviewer can check.

- Both versions are scored through onnxruntime on the SAME windows of one val split, identified by its data
  fingerprint, that neither was trained on: the same data, or two document splits with the same seed and
  fraction (a document's side depends only on its text, so one version's val documents are never the other's
  training documents). Anything else (different corpora split by position, versions from before fingerprints)
  is refused unless --force, with the reason.
- A first champion must beat the unigram entropy of its val windows by promote.gate nats/token, so a smoke run
  cannot become champion by being first.
- The alias moves only if `champion` still points where it pointed when the comparison began.
- The decision is recorded on the version (previous champion, both scores, margin, when, who) and in its
  description; `rollback` puts the previous champion back, recorded the same way."""
from __future__ import annotations

import getpass
import tempfile
import time
from pathlib import Path

import numpy as np

from lmforge.registry import tracking
from lmforge.core.errors import LmforgeError
from lmforge.runtime.generator import Generator
from lmforge.runtime.scoring import unigram_entropy, val_loss


def _version(name: str, version: str | None, alias: str = "candidate"):
    c = tracking.client()
    try:
        if version is not None:
            return c.get_model_version(name, str(version))
        return c.get_model_version_by_alias(name, alias)
    except Exception:
        if version is not None:
            raise LmforgeError(f"registered model {name!r} has no version {version}",
                               hint=f"`lmforge runs` shows the versions of {name}") from None
        raise LmforgeError(f"registered model {name!r} has no `{alias}` version",
                           hint="run the pipeline first: `lmforge run --preset NAME`") from None


def candidate_version(name: str, version: str | None = None):
    """The version to promote: `version`, or the registry's `candidate`; a clear error when there is none."""
    return _version(name, version)


def champion_version(name: str):
    try:
        return tracking.client().get_model_version_by_alias(name, "champion")
    except Exception:  # no champion yet
        return None


def val_data(version, dest: Path) -> np.ndarray:
    """The val shard `version` was scored and registered with: its run's data directory when it is on this
    machine and still holds that data, else the copy logged with its MLflow run (data/val.bin)."""
    from lmforge.data.shards import open_shard, read_meta

    fingerprint = version.tags.get("data_fingerprint")
    local = version.tags.get("data_dir")
    if local and (Path(local) / "meta.json").is_file() and read_meta(Path(local)).get("data_fingerprint") == fingerprint:
        return open_shard(Path(local), "val")
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        got = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="data",
                                                      dst_path=str(dest)))
    except Exception:
        raise LmforgeError(f"the val shard of version {version.version} is neither in {local or 'a local run'} nor "
                           "logged with its MLflow run", hint="promote on the machine that trained it") from None
    if read_meta(got).get("data_fingerprint") != fingerprint:
        raise LmforgeError(f"the val shard logged with version {version.version} does not match its data "
                           "fingerprint", hint="re-run the version's pipeline")
    return open_shard(got, "val")


def held_out_for_both(cand, champ) -> tuple[bool, str]:
    """Whether the candidate's val split is held out for the champion too, and why (or why not)."""
    a, b = cand.tags, champ.tags
    if not a.get("data_fingerprint") or not b.get("data_fingerprint"):
        return False, (f"v{champ.version if not b.get('data_fingerprint') else cand.version} was registered "
                       "without a data fingerprint, so its training data cannot be checked against the val split")
    if a["data_fingerprint"] == b["data_fingerprint"]:
        return True, f"both were trained on the same data (fingerprint {a['data_fingerprint'][:12]})"
    same_rule = all(a.get(k) == b.get(k) for k in ("split", "split_seed", "split_val_fraction", "split_val_filter"))
    if same_rule and a.get("split") == "documents":
        return True, (f"v{cand.version}'s val split of corpus {a['corpus_sha256'][:12]} (v{champ.version} was trained "
                      f"on corpus {b['corpus_sha256'][:12]}): both use the document split with seed "
                      f"{a.get('split_seed')}, where a document's side depends only on its text, so neither "
                      "trained on these documents")
    return False, (f"v{cand.version} and v{champ.version} were trained on different data ({a.get('split')} split of "
                   f"corpus {a.get('corpus_sha256', '?')[:12]} vs {b.get('split')} split of corpus "
                   f"{b.get('corpus_sha256', '?')[:12]}): v{cand.version}'s val text may be in v{champ.version}'s "
                   "training data")


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def promote(name: str, margin: float = 0.01, force: bool = False, max_windows: int = 128, version: str | None = None,
            gate: float = 0.75, by: str | None = None) -> dict:
    """Compare the candidate (or `version`) with the champion of registered model `name` and point `champion`
    at it when it wins by more than `margin` nats/token; with no champion, when it beats the unigram entropy of
    the val windows by `gate`; always with `force`. Returns the comparison, also written to the version's tags
    and description."""
    cand = candidate_version(name, version)
    champ = champion_version(name)
    by = by or getpass.getuser()
    result = {"model": name, "candidate_version": str(cand.version), "margin": margin, "gate": gate, "forced": force,
              "by": by, "champion_version": str(champ.version) if champ else None, "candidate_loss": None,
              "champion_loss": None, "unigram_entropy": None, "scored_on": None}
    if champ is not None and champ.version == cand.version:
        return {**result, "decision": "unchanged", "reason": f"version {cand.version} is already the champion"}
    with tempfile.TemporaryDirectory(prefix="lmforge-promote-") as tmp:
        cand_dir = tracking.fetch_model_dir(f"models:/{name}/{cand.version}", Path(tmp) / "candidate")
        data = val_data(cand, Path(tmp) / "val")
        block = int(Generator(cand_dir, device="cpu", fast=False).dir.model["block_size"])
        fair, why = (True, f"v{cand.version}'s own val split") if champ is None else held_out_for_both(cand, champ)
        if champ is not None:
            champ_dir = tracking.fetch_model_dir(f"models:/{name}/{champ.version}", Path(tmp) / "champion")
            if _sha256(champ_dir / "tokenizer.json") != _sha256(cand_dir / "tokenizer.json"):
                fair, why = False, (f"v{cand.version} and v{champ.version} use different tokenizers, so their "
                                    "losses are in different units")
            if not fair and not force:
                raise LmforgeError(f"{name}: cannot compare v{cand.version} with champion v{champ.version} fairly: "
                                   f"{why}", hint="retrain the candidate on the champion's data and settings, "
                                   "or --force to promote it anyway")
            if fair:
                block = min(block, int(Generator(champ_dir, device="cpu", fast=False).dir.model["block_size"]))
                result["champion_loss"] = val_loss(champ_dir, data, block, max_windows)
        result["candidate_loss"] = val_loss(cand_dir, data, block, max_windows)
        result["unigram_entropy"] = unigram_entropy(data, block, max_windows)
    result.update(windows=max_windows, block_size=block, scored_on=why)
    decision, reason = decide(result, champ is not None, force, margin, gate)
    result.update(decision=decision, reason=reason)
    if decision == "promoted":
        move_champion(name, expected=champ.version if champ else None, to=cand.version)
    record(name, cand.version, result)
    return result


def promote_after_run(name: str, version: str, margin: float, gate: float, windows: int, by: str) -> dict:
    """The pipeline's last step under promote.auto: compare the version the run just registered with the champion,
    as `lmforge promote NAME --version V` would. A comparison promote() refuses (the two were trained on data that
    makes it unfair, the champion moved meanwhile, the val shard is gone) leaves the champion where it is: the
    version is recorded as kept, with the refusal as the reason, and the run that trained it does not fail."""
    try:
        return promote(name, margin=margin, max_windows=windows, version=version, gate=gate, by=by)
    except LmforgeError as refused:
        champ = champion_version(name)
        result = {"model": name, "candidate_version": str(version), "margin": margin, "gate": gate, "forced": False,
                  "by": by, "champion_version": str(champ.version) if champ else None, "candidate_loss": None,
                  "champion_loss": None, "unigram_entropy": None, "scored_on": "not scored",
                  "decision": "kept", "reason": f"not compared: {refused}"}
        record(name, str(version), result)
        return result


def decide(r: dict, has_champion: bool, force: bool, margin: float, gate: float) -> tuple[str, str]:
    if force:
        return "promoted", f"forced by {r['by']}"
    if not has_champion:
        bar = r["unigram_entropy"] - gate
        if r["candidate_loss"] < bar:
            return "promoted", (f"first champion: its val loss {r['candidate_loss']:.4f} beats the unigram entropy "
                                f"{r['unigram_entropy']:.4f} by more than the gate {gate:g}")
        return "kept", (f"no champion yet, and its val loss {r['candidate_loss']:.4f} does not beat the unigram "
                        f"entropy {r['unigram_entropy']:.4f} by the gate {gate:g} (a smoke run?); --force to "
                        "promote it anyway")
    if r["champion_loss"] - r["candidate_loss"] > margin:
        return "promoted", f"candidate beats champion by more than {margin:g} nats/token"
    return "kept", f"candidate does not beat champion by more than {margin:g} nats/token"


def move_champion(name: str, expected: str | None, to: str) -> None:
    """Point `champion` at version `to`, but only if it still points at `expected` (None: no champion): two
    promotions decided at once cannot both win, the later one is refused."""
    now = champion_version(name)
    current = str(now.version) if now else None
    if current != (str(expected) if expected is not None else None):
        raise LmforgeError(f"{name}: champion moved to v{current} while v{to} was being compared with "
                           f"v{expected or 'none'}", hint=f"run `lmforge promote {name}` again to compare with v{current}")
    tracking.with_retries(tracking.client().set_registered_model_alias, name, "champion", str(to))


def record(name: str, version: str, r: dict) -> None:
    """The decision on the version's tags (promotion_*) and at the end of its description."""
    c = tracking.client()
    tags = {"promotion_decision": r["decision"], "promotion_reason": r["reason"],
            "promotion_previous_champion": r["champion_version"] or "none",
            "promotion_candidate_loss": _fmt(r["candidate_loss"]), "promotion_champion_loss": _fmt(r["champion_loss"]),
            "promotion_unigram_entropy": _fmt(r["unigram_entropy"]), "promotion_margin": f"{r['margin']:g}",
            "promotion_scored_on": r["scored_on"] or "", "promotion_by": r["by"],
            "promotion_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for key, value in tags.items():
        tracking.with_retries(c.set_model_version_tag, name, version, key, value[:5000])
    mv = c.get_model_version(name, version)
    tracking.with_retries(c.update_model_version, name, version,
                          description=(mv.description or "") + "\n\n" + comparison_markdown(r))


def rollback_target(name: str) -> tuple:
    """(the champion, the version it replaced), or a clear error when there is nothing to roll back to."""
    champ = champion_version(name)
    if champ is None:
        raise LmforgeError(f"registered model {name!r} has no champion to roll back", hint="`lmforge runs`")
    previous = champ.tags.get("promotion_previous_champion", "none")
    if previous in ("", "none"):
        raise LmforgeError(f"{name} v{champ.version} was the first champion: there is no earlier one to put back",
                           hint=f"promote another version: `lmforge promote {name} --version N`")
    return champ, previous


def rollback(name: str, by: str | None = None) -> dict:
    """Put back the champion the current one replaced (its promotion_previous_champion tag), recorded on both."""
    c = tracking.client()
    by = by or getpass.getuser()
    champ, previous = rollback_target(name)
    move_champion(name, expected=champ.version, to=previous)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for version, tags in ((previous, {"rollback_from": str(champ.version), "rollback_by": by, "rollback_at": when}),
                          (champ.version, {"rolled_back_to": previous, "rollback_by": by, "rollback_at": when})):
        for key, value in tags.items():
            tracking.with_retries(c.set_model_version_tag, name, str(version), key, value)
    return {"model": name, "decision": "rolled back", "champion_version": previous,
            "replaced_version": str(champ.version), "by": by, "at": when}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def comparison_markdown(r: dict) -> str:
    champ = f"v{r['champion_version']}" if r["champion_version"] else "none"
    return "\n".join([f"## Promotion of {r['model']} v{r['candidate_version']}: {r['decision']}", "",
                      f"{r['reason']}.", "", f"Scored on {r['scored_on']}.", "",
                      "| version | role | val loss (onnxruntime, same windows) |", "| --- | --- | --- |",
                      f"| v{r['candidate_version']} | candidate | {_fmt(r['candidate_loss'])} |",
                      f"| {champ} | champion before | {_fmt(r['champion_loss'])} |",
                      f"| - | unigram entropy of the windows | {_fmt(r['unigram_entropy'])} |", "",
                      f"margin {r['margin']:g} nats/token, gate {r['gate']:g}, forced: {r['forced']}, by {r['by']}"])

