"""train.init_from resolved to the weights a warm start begins with (docs/scheduling.md "Warm starts and training
longer"): a registered version (models:/NAME@ALIAS, models:/NAME/VERSION, or `champion`: this preset's champion,
none yet meaning a fresh start) or a run directory. A version's weights come from its run directory when that is
on this machine and still holds them (the MLflow run's run_dir tag, the weights' sha256 checked against the
version's weights_sha256 tag), else from the run's checkpoint/ artifact (logged by the train task), with the
tokenizer logged beside it (tokenizer/)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from lmforge.core.errors import LmforgeError
from lmforge.core.records import StartFrom
from lmforge.registry import tracking
from lmforge.registry.review import facts
from lmforge.training.checkpoint import Checkpoints, weights_sha256

URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


def resolve_init(init_from: str, preset: str, cache: Path) -> StartFrom | None:
    """The parent of a warm start (vocabulary not yet compared: lmforge.training.warmstart.with_vocabulary), or
    None for `champion` while the preset has none. `cache`: where a downloaded checkpoint lands."""
    if init_from == "champion":
        return _from_version(f"models:/{preset}@champion", cache, missing_ok=True)
    if init_from.startswith("models:/"):
        return _from_version(init_from, cache, missing_ok=False)
    return from_run_dir(Path(init_from), init_from)


def from_run_dir(root: Path, source: str, name: str = "", version: str = "") -> StartFrom:
    """A run directory (artifacts/runs/<run>: ckpt/ and data/) as a warm start's parent."""
    ckpt, meta = root / "ckpt", root / "data" / "meta.json"
    if not (Checkpoints(ckpt).path("best") or Checkpoints(ckpt).path("last")) or not meta.is_file():
        raise LmforgeError(f"train.init_from {source!r} is neither models:/NAME@ALIAS, models:/NAME/VERSION, "
                           "champion, nor a run directory with checkpoints", hint="e.g. --set "
                           "train.init_from=models:/jokes-char@champion (`lmforge runs` lists versions)")
    fingerprint = json.loads(meta.read_text(encoding="utf-8"))["data_fingerprint"]
    return StartFrom("warm-start", source, ckpt, weights_sha256(ckpt), fingerprint, name=name, version=version,
                     run_dir=root, tokenizer_file=root / "data" / "tokenizer.json")


def _from_version(uri: str, cache: Path, missing_ok: bool) -> StartFrom | None:
    m = URI.match(uri)
    if not m:
        raise LmforgeError(f"train.init_from {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION",
                           hint="e.g. --set train.init_from=models:/jokes-char@champion")
    c = tracking.client()
    try:
        mv = (c.get_model_version(m["name"], m["version"]) if m["version"]
              else c.get_model_version_by_alias(m["name"], m["alias"]))
    except Exception:  # noqa: BLE001 - MLflow raises its own exception types for a missing model, alias, version
        if missing_ok:
            return None
        raise LmforgeError(f"train.init_from {uri}: no such registered version",
                           hint="`lmforge runs` lists the versions and aliases") from None
    run_dir = Path(c.get_run(mv.run_id).data.tags.get("run_dir", "") or "/nonexistent")
    if (run_dir / "ckpt").is_dir() and (run_dir / "data" / "tokenizer.json").is_file() and \
            weights_sha256(run_dir / "ckpt") == facts(mv).get("weights_sha256"):
        return from_run_dir(run_dir, uri, m["name"], str(mv.version))
    return _downloaded(c, mv, uri, cache / f"warm-start-{m['name']}-v{mv.version}")


def _downloaded(c, mv, uri: str, dest: Path) -> StartFrom:
    """The version's checkpoint/ and tokenizer/ artifacts, fetched into dest (ckpt/best/ and tokenizer.json)."""
    import mlflow

    best = dest / "ckpt" / "best"
    if not (best / "model.safetensors").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        try:
            got = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="checkpoint",
                                                           dst_path=str(dest / "download")))
            tok = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="tokenizer/tokenizer.json",
                                                           dst_path=str(dest / "download")))
        except Exception:  # noqa: BLE001
            raise LmforgeError(f"train.init_from {uri}: version {mv.version}'s run has no checkpoint artifact and "
                               "its run directory is not on this machine", hint="warm-start from a version "
                               "trained by this lmforge, or from a run directory (--set train.init_from=PATH)") from None
        best.parent.mkdir(parents=True)
        got.rename(best)
        tok.rename(dest / "tokenizer.json")
    known = facts(mv)  # the version's tags, groups included (lmforge.registry.review)
    if weights_sha256(dest / "ckpt") != known.get("weights_sha256"):
        raise LmforgeError(f"train.init_from {uri}: the downloaded checkpoint is not version {mv.version}'s weights",
                           hint=f"delete {dest} and retry")
    return StartFrom("warm-start", uri, dest / "ckpt", known["weights_sha256"], known.get("data_fingerprint", ""),
                     name=mv.name, version=str(mv.version), tokenizer_file=dest / "tokenizer.json")
