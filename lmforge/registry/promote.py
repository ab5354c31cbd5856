"""Promotion: decide whether a registered version (the `candidate`, or one picked by number) becomes the
`champion`, on evidence a reviewer can check.

- The score is bits per byte of the same raw val text (the candidate's val documents, lmforge.data.prepare's
  val.jsonl), each version scoring it in its own tokenization (lmforge.runtime.scoring.text_score): a number in
  the text's units, not the tokenizer's, so versions with different tokenizers compare fairly. The val loss in
  nats/token on the same windows of the candidate's val shard is shown beside it, for both versions when their
  tokenizers are the same (for the candidate alone otherwise: nats per token of different vocabularies do not
  compare).
- The text must be held out for both: the same data, two document splits with the same seed and fraction (a
  document's side depends only on its text), or the same corpus cut at the same place. Anything else (different
  corpora split by position, versions from before fingerprints) is refused unless --force, with the reason.
- A first champion must beat the unigram model of its own tokens on that text by promote.gate bits per byte, so
  a smoke run cannot become champion by being first.
- The two versions' continuations of the preset's prompts (eval.prompts), greedy and at its sampling settings,
  are decoded side by side: an MLflow table on the candidate's run, and a table in the version's description.
- Margin, gate, windows, text size and seed come from the [promote] section of the config the candidate was
  trained with (its run's params), or of `preset` when given; arguments override them (`settings`).
- The alias moves only if `champion` still points where it pointed when the comparison began. An automatic
  promotion (a scheduled run's promote.auto step) only ever moves it to a version newer than the champion, so a
  person's --force or rollback stands until a newer version wins.
- The decision is recorded on the version (the `lmforge.promotion` tag group: previous champion, scores,
  margin, when, who) and in its description; `rollback` puts the previous champion back, recorded the same way."""
from __future__ import annotations

import ast
import dataclasses
import getpass
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.core.config import Config, load_config
from lmforge.core.errors import LmforgeError
from lmforge.registry import tracking
from lmforge.registry.review import PROMOTION_TAG, cell, facts
from lmforge.runtime.generator import Generator
from lmforge.runtime.scoring import sample_documents, text_score, val_loss

DESCRIPTION_MAX = 5000  # MLflow's SQL stores hold a version description in a VARCHAR(5000)
PROMOTION_HEADING = "## Promotion of "


class Refused(LmforgeError):
    """A comparison promote() will not make (not fair, or the evidence is missing): never a champion move."""


@dataclass(frozen=True)
class Settings:
    """What a promotion reads from a config: its [promote] section and the side-by-side table's prompts and
    sampling settings (eval.prompts, eval.max_new_tokens, export.temperature/top_k/top_p)."""
    margin: float
    gate: float
    windows: int
    text_bytes: int
    seed: int
    prompts: tuple[str, ...]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    source: str  # where they were read

    def sampling(self) -> str:
        return f"T={self.temperature:g}, top_k={self.top_k or 'off'}, top_p={self.top_p:g}, seed {self.seed}"


def recorded_config(version) -> Config | None:
    """The config `version` was trained with, from its MLflow run's params (every key is logged as a param), or
    None when the run cannot be read. Values are read as Python literals, anything else as text."""
    try:
        params = tracking.client().get_run(version.run_id).data.params
    except Exception:  # noqa: BLE001 - a run deleted since, or a version registered from elsewhere
        return None
    cfg = Config()
    for key, text in params.items():
        section, _, attr = key.partition(".")
        target = getattr(cfg, section, None) if attr else None
        if target is None or not dataclasses.is_dataclass(target) or not hasattr(target, attr):
            continue
        default = getattr(target, attr)
        try:
            value = ast.literal_eval(text) if not isinstance(default, str) else text
        except (ValueError, SyntaxError):
            continue  # a list param cut at MLflow's length limit: the default stays
        if isinstance(default, bool) or type(value) is type(default) or (isinstance(default, float) and
                                                                          isinstance(value, int)):
            setattr(target, attr, type(default)(value) if not isinstance(default, list) else value)
    cfg.name, cfg.preset = params.get("name", cfg.name), params.get("preset", params.get("name", cfg.preset))
    return cfg


def settings(version, preset: str | None = None, **explicit) -> Settings:
    """The promotion settings for `version`: the [promote] section (and prompts, sampling) of `preset` when
    given, else of the config the version was trained with, else PromoteConfig's defaults; then any explicit
    value that is not None (the CLI's --margin, --gate)."""
    if preset:
        cfg, source = load_config(preset), f"preset {preset}"
    else:
        cfg = recorded_config(version)
        source = f"the config v{version.version} was trained with" if cfg else "lmforge's defaults"
        cfg = cfg or Config()
    p, e, x = cfg.promote, cfg.eval, cfg.export
    values = {"margin": p.margin, "gate": p.gate, "windows": p.windows, "text_bytes": p.text_bytes, "seed": p.seed}
    given = {k: v for k, v in explicit.items() if v is not None}
    unknown = set(given) - set(values)
    if unknown:
        raise TypeError(f"unknown promotion settings {sorted(unknown)}")
    for key in ("margin", "gate"):
        if given.get(key, 0) < 0:  # below 0 a worse model wins: that is --force, said as such
            raise LmforgeError(f"--{key} must be >= 0, got {given[key]}", hint="--force promotes whatever the scores")
    values.update(given)
    if given:
        source += " (" + ", ".join(f"{k} {v:g}" for k, v in given.items()) + " given)"
    return Settings(**values, prompts=tuple(e.prompts), max_new_tokens=e.max_new_tokens, temperature=x.temperature,
                    top_k=x.top_k, top_p=x.top_p, source=source)


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


def _data_artifact(version, name: str, dest: Path) -> Path | None:
    """data/<name> of the version: in its run's data directory when it is on this machine and still holds the data
    the version was registered with, else the copy logged with its MLflow run; None when neither has it."""
    from lmforge.data.shards import read_meta

    known = facts(version)
    fingerprint, local = known.get("data_fingerprint"), known.get("data_dir")
    if local and (Path(local) / name).is_file() and (Path(local) / "meta.json").is_file() \
            and read_meta(Path(local)).get("data_fingerprint") == fingerprint:
        return Path(local)
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        got = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="data",
                                                      dst_path=str(dest)))
    except Exception:  # noqa: BLE001 - not logged (too large, or a version from before)
        return None
    if not (got / name).is_file():
        return None
    if read_meta(got).get("data_fingerprint") != fingerprint:
        raise Refused(f"the val data logged with version {version.version} does not match its data fingerprint",
                      hint="re-run the version's pipeline")
    return got


def val_data(version, dest: Path) -> np.ndarray:
    """The val shard `version` was scored and registered with (its tokens: the val loss beside the score)."""
    from lmforge.data.shards import open_shard

    found = _data_artifact(version, "val.bin", dest)
    if found is None:
        raise Refused(f"the val shard of version {version.version} is neither in "
                      f"{facts(version).get('data_dir') or 'a local run'} nor logged with its MLflow run",
                      hint="promote on the machine that trained it")
    return open_shard(found, "val")


def val_text(version, model_dir: Path, dest: Path) -> tuple[list[str], str]:
    """(the val documents of `version` as text, where they came from): its val.jsonl, or for a version
    registered before val text was kept, its val shard decoded by its own tokenizer (split at <eos>)."""
    found = _data_artifact(version, "val.jsonl", dest / "text")
    if found is not None:
        with open(found / "val.jsonl", encoding="ascii") as f:
            return [json.loads(line) for line in f if line.strip()], f"v{version.version}'s val text"
    ids = np.asarray(val_data(version, dest / "shard"), np.int64)
    gen = Generator(model_dir, device="cpu", fast=False)
    cuts = np.flatnonzero(ids == gen.eos) if gen.eos is not None else np.zeros(0, np.int64)
    docs = [gen.tokenizer.decode(part.tolist(), skip_special_tokens=True) for part in np.split(ids, cuts + 1)]
    return [d for d in docs if d], f"v{version.version}'s val shard decoded by its tokenizer"


def val_text_score(model_dir: Path, data_dir: Path, text_bytes: int) -> dict | None:
    """A newly exported model's score on its own val text (data_dir/val.jsonl, sampled as promotion samples it):
    text_score's dict, or None for data prepared before val text was kept."""
    path = Path(data_dir) / "val.jsonl"
    if not path.is_file():
        return None
    with open(path, encoding="ascii") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return text_score(model_dir, sample_documents(docs, text_bytes)) if docs else None


def held_out_for_both(cand, champ) -> tuple[bool, str]:
    """Whether the candidate's val split is held out for the champion too, and why (or why not)."""
    a, b = facts(cand), facts(champ)
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
    if same_rule and a.get("split") == "contiguous" and a.get("corpus_sha256") == b.get("corpus_sha256"):
        return True, (f"the same corpus {a['corpus_sha256'][:12]} cut at the same place (the last "
                      f"{a.get('split_val_fraction')} of its text), held out by both")
    return False, (f"v{cand.version} and v{champ.version} were trained on different data ({a.get('split')} split of "
                   f"corpus {a.get('corpus_sha256', '?')[:12]} vs {b.get('split')} split of corpus "
                   f"{b.get('corpus_sha256', '?')[:12]}): v{cand.version}'s val text may be in v{champ.version}'s "
                   "training data")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def side_by_side(cand_dir: Path, champ_dir: Path | None, s: Settings) -> list[dict]:
    """Each prompt continued by both versions, greedily and at the sampling settings (the same seed for both):
    rows {prompt, decoding, candidate, champion} (champion None without one)."""
    gens = [Generator(d, device="cpu") for d in (cand_dir, champ_dir) if d is not None]
    rows = []
    for decoding, kwargs in (("greedy", {"temperature": 0.0}),
                             (s.sampling(), {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p,
                                             "seed": s.seed})):
        outs = [g.generate(list(s.prompts), max_new_tokens=s.max_new_tokens, **kwargs) for g in gens]
        for i, prompt in enumerate(s.prompts):
            rows.append({"prompt": prompt, "decoding": decoding, "candidate": outs[0][i],
                         "champion": outs[1][i] if len(outs) > 1 else None})
    return rows


def evidence(cand, champ, s: Settings, force: bool = False) -> dict:
    """Score `cand` (and `champ`, when there is one and the comparison is fair or forced) on the candidate's
    val text and shard, and decode the prompts side by side. Refused (unless force) when the text is not held
    out for both."""
    out: dict = {"candidate_loss": None, "champion_loss": None, "candidate_bpb": None, "champion_bpb": None,
                 "candidate_bpc": None, "champion_bpc": None, "unigram_bpb": None, "tokenizers": None,
                 "scored_on": f"v{cand.version}'s own val split", "side_by_side": []}
    with tempfile.TemporaryDirectory(prefix="lmforge-promote-") as tmp:
        cand_dir = tracking.fetch_model_dir(f"models:/{cand.name}/{cand.version}", Path(tmp) / "candidate")
        champ_dir = None
        if champ is not None:
            fair, why = held_out_for_both(cand, champ)
            out["scored_on"] = why
            if not fair and not force:
                raise Refused(f"{cand.name}: cannot compare v{cand.version} with champion v{champ.version} fairly: "
                              f"{why}", hint="retrain the candidate on the champion's data and settings, "
                              "or --force to promote it anyway")
            champ_dir = tracking.fetch_model_dir(f"models:/{champ.name}/{champ.version}", Path(tmp) / "champion")
            same = _sha256(champ_dir / "tokenizer.json") == _sha256(cand_dir / "tokenizer.json")
            out["tokenizers"] = "same" if same else "different"
        docs, text_from = val_text(cand, cand_dir, Path(tmp) / "val")
        sample = sample_documents(docs, s.text_bytes)
        cs = text_score(cand_dir, sample)
        out.update(candidate_bpb=cs["bits_per_byte"], candidate_bpc=cs["bits_per_char"],
                   unigram_bpb=cs["unigram_bits_per_byte"], candidate_unk=cs["unk_tokens"], text_bytes=cs["bytes"],
                   text_documents=cs["documents"], text_from=text_from)
        shard = val_data(cand, Path(tmp) / "shard")
        block = int(Generator(cand_dir, device="cpu", fast=False).dir.model["block_size"])
        if champ_dir is not None:
            hs = text_score(champ_dir, sample)
            out.update(champion_bpb=hs["bits_per_byte"], champion_bpc=hs["bits_per_char"],
                       champion_unk=hs["unk_tokens"])
            if out["tokenizers"] == "same":
                block = min(block, int(Generator(champ_dir, device="cpu", fast=False).dir.model["block_size"]))
                out["champion_loss"] = val_loss(champ_dir, shard, block, s.windows)
        out["candidate_loss"] = val_loss(cand_dir, shard, block, s.windows)
        out.update(windows=s.windows, block_size=block)
        out["side_by_side"] = side_by_side(cand_dir, champ_dir, s)
    return out


def _base(name: str, cand, champ, s: Settings, force: bool, by: str) -> dict:
    return {"model": name, "candidate_version": str(cand.version), "margin": s.margin, "gate": s.gate,
            "forced": force, "by": by, "champion_version": str(champ.version) if champ else None,
            "score": "bits per byte", "settings_from": s.source, "candidate_loss": None, "champion_loss": None,
            "candidate_bpb": None, "champion_bpb": None, "unigram_bpb": None, "scored_on": None,
            "side_by_side": []}


def promote(name: str, *, margin: float | None = None, force: bool = False, max_windows: int | None = None,
            version: str | None = None, gate: float | None = None, by: str | None = None, preset: str | None = None,
            automatic: bool = False) -> dict:
    """Compare the candidate (or `version`) with the champion of registered model `name` and point `champion`
    at it when it wins by more than the margin in bits per byte; with no champion, when it beats the unigram
    model of its tokens by the gate; always with `force`. `automatic`: a scheduled run's step, which never moves
    the champion to an older version. Returns the comparison, also written to the version's tags and
    description and, as a table, to its run."""
    cand = candidate_version(name, version)
    champ = champion_version(name)
    by = by or getpass.getuser()
    s = settings(cand, preset, margin=margin, gate=gate, windows=max_windows)
    result = _base(name, cand, champ, s, force, by)
    if champ is not None and champ.version == cand.version:
        return {**result, "decision": "unchanged", "reason": f"version {cand.version} is already the champion"}
    if automatic and champ is not None and int(cand.version) < int(champ.version):
        return {**result, "decision": "unchanged",
                "reason": f"v{cand.version} is older than champion v{champ.version}: a scheduled run moves the champion "
                          "only to a newer version that wins, so a person's promotion or rollback stands"}
    result.update(evidence(cand, champ, s, force))
    decision, reason = decide(result, champ is not None, force, s.margin, s.gate)
    result.update(decision=decision, reason=reason)
    if decision == "promoted":
        move_champion(name, expected=champ.version if champ else None, to=cand.version)
    record(name, cand.version, result, run_id=cand.run_id)
    return result


def promote_after_run(name: str, registered, by: str, *, margin: float | None = None, gate: float | None = None,
                      windows: int | None = None) -> dict:
    """The pipeline's last step under promote.auto: compare the version the run just registered with the champion,
    as `lmforge promote NAME --version V` would, with the run's own [promote] settings. A run that registered
    nothing new (its weights were already version N) decides nothing: the champion stays, whoever put it there.
    A comparison promote() refuses (unfair data, the champion moved meanwhile, the val data gone) leaves the
    champion where it is: the version is recorded as refused, with the reason, and the run does not fail."""
    champ = champion_version(name)
    if registered.reused:
        return {"model": name, "candidate_version": str(registered.version), "forced": False, "by": by,
                "champion_version": str(champ.version) if champ else None, "decision": "unchanged",
                "reason": f"this run registered nothing new (its weights, on this data, are already v"
                          f"{registered.version}), so the champion stays "
                          f"{f'v{champ.version}' if champ else 'unset'}", "side_by_side": []}
    try:
        return promote(name, margin=margin, max_windows=windows, version=registered.version, gate=gate, by=by,
                       automatic=True)
    except LmforgeError as refused:
        champ = champion_version(name)
        s = settings(candidate_version(name, registered.version), margin=margin, gate=gate, windows=windows)
        result = {**_base(name, candidate_version(name, registered.version), champ, s, False, by),
                  "scored_on": "not scored", "decision": "refused", "reason": f"not compared: {refused}"}
        record(name, str(registered.version), result)
        return result


def decide(r: dict, has_champion: bool, force: bool, margin: float, gate: float) -> tuple[str, str]:
    if force:
        return "promoted", f"forced by {r['by']}"
    cand = r["candidate_bpb"]
    if not has_champion:
        bar = r["unigram_bpb"] - gate
        if cand < bar:
            return "promoted", (f"first champion: its {cand:.4f} bits per byte on its val text beat the unigram "
                                f"model of its own tokens ({r['unigram_bpb']:.4f}) by more than the gate {gate:g}")
        return "kept", (f"no champion yet, and its {cand:.4f} bits per byte on its val text do not beat the unigram "
                        f"model of its own tokens ({r['unigram_bpb']:.4f}) by the gate {gate:g} (a smoke run?); "
                        "--force to promote it anyway")
    champ = r["champion_bpb"]
    if champ - cand > margin:
        reason = f"candidate beats champion by more than {margin:g} bits per byte ({cand:.4f} vs {champ:.4f})"
        decision = "promoted"
    else:
        reason = f"candidate does not beat champion by more than {margin:g} bits per byte ({cand:.4f} vs {champ:.4f})"
        decision = "kept"
    if r.get("tokenizers") == "different":
        reason += (f"; compared by bits per byte of the same text because v{r['candidate_version']} and "
                   f"v{r['champion_version']} use different tokenizers (val loss in nats/token does not compare "
                   "across vocabularies)")
    return decision, reason


def move_champion(name: str, expected: str | None, to: str) -> None:
    """Point `champion` at version `to`, but only if it still points at `expected` (None: no champion): two
    promotions decided at once cannot both win, the later one is refused."""
    now = champion_version(name)
    current = str(now.version) if now else None
    if current != (str(expected) if expected is not None else None):
        raise Refused(f"{name}: champion moved to v{current} while v{to} was being compared with "
                      f"v{expected or 'none'}", hint=f"run `lmforge promote {name}` again to compare with v{current}")
    tracking.with_retries(tracking.client().set_registered_model_alias, name, "champion", str(to))


RECORDED = ("decision", "reason", "forced", "by", "margin", "gate", "score", "scored_on", "tokenizers",
            "candidate_bpb", "champion_bpb", "candidate_bpc", "champion_bpc", "unigram_bpb", "candidate_loss",
            "champion_loss", "candidate_unk", "champion_unk", "text_bytes", "text_from", "settings_from", "table")


def record(name: str, version: str, r: dict, run_id: str | None = None) -> None:
    """The decision on the version: its `promotion` tag (the decision) and `lmforge.promotion` group (the rest),
    the side-by-side table on its run (promotion/side_by_side-vC-vs-vH.json, an MLflow table), and the
    comparison at the end of its description (replacing an earlier one)."""
    c = tracking.client()
    if run_id and r.get("side_by_side"):
        import pandas as pd

        champ = r["champion_version"] or "none"
        r["table"] = f"promotion/side_by_side-v{version}-vs-v{champ}.json"
        table = pd.DataFrame([{"prompt": row["prompt"], "decoding": row["decoding"],
                               f"v{version} (candidate)": row["candidate"],
                               f"v{champ} (champion)": row["champion"]} for row in r["side_by_side"]])
        tracking.with_retries(c.log_table, run_id, data=table, artifact_file=r["table"])
    group = {k: (_fmt(r.get(k)) if k.endswith(("_bpb", "_bpc", "_loss")) else r.get(k)) for k in RECORDED
             if r.get(k) is not None}
    group.update(previous_champion=r["champion_version"] or "none", at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tracking.with_retries(c.set_model_version_tag, name, version, PROMOTION_TAG,
                          json.dumps({k: str(v)[:1500] for k, v in group.items()}, separators=(",", ":")))
    tracking.with_retries(c.set_model_version_tag, name, version, "promotion",
                          r["decision"] + (" (forced)" if r.get("forced") else ""))
    mv = c.get_model_version(name, version)
    card = (mv.description or "").split("\n\n" + PROMOTION_HEADING)[0]
    section = comparison_markdown(r)
    if len(card) + len(section) + 2 > DESCRIPTION_MAX:
        section = comparison_markdown(r, cell_chars=40)[:max(0, DESCRIPTION_MAX - len(card) - 2)]
    tracking.with_retries(c.update_model_version, name, version, description=card + "\n\n" + section)


def rollback_target(name: str) -> tuple:
    """(the champion, the version it replaced), or a clear error when there is nothing to roll back to."""
    champ = champion_version(name)
    if champ is None:
        raise LmforgeError(f"registered model {name!r} has no champion to roll back", hint="`lmforge runs`")
    previous = facts(champ).get("promotion_previous_champion", "none")
    if previous in ("", "none"):
        raise LmforgeError(f"{name} v{champ.version} was the first champion: there is no earlier one to put back",
                           hint=f"promote another version: `lmforge promote {name} --version N`")
    return champ, previous


def rollback(name: str, by: str | None = None) -> dict:
    """Put back the champion the current one replaced (its previous champion), recorded on both versions
    (the `lmforge.rollback` group, and `promotion` on the version rolled back)."""
    c = tracking.client()
    by = by or getpass.getuser()
    champ, previous = rollback_target(name)
    move_champion(name, expected=champ.version, to=previous)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for version, tags in ((previous, {"rollback_from": str(champ.version), "rollback_by": by, "rollback_at": when}),
                          (champ.version, {"rolled_back_to": previous, "rollback_by": by, "rollback_at": when})):
        tracking.with_retries(c.set_model_version_tag, name, str(version), "lmforge.rollback", json.dumps(tags))
    tracking.with_retries(c.set_model_version_tag, name, str(champ.version), "promotion", f"rolled back to v{previous}")
    tracking.with_retries(c.set_model_version_tag, name, str(previous), "promotion", f"champion again (rollback by {by})")
    return {"model": name, "decision": "rolled back", "champion_version": previous, "candidate_version": previous,
            "replaced_version": str(champ.version), "by": by, "at": when,
            "reason": f"rolled back by {by}: v{previous} is champion again, replacing v{champ.version}"}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def comparison_markdown(r: dict, cell_chars: int = 100) -> str:
    """The decision, the scores and the side-by-side table, in markdown (the version's description, the Prefect
    artifact)."""
    champ = f"v{r['champion_version']}" if r["champion_version"] else "none"
    lines = [f"{PROMOTION_HEADING}{r['model']} v{r['candidate_version']}: {r['decision']}", "", f"{r['reason']}.", ""]
    if r.get("candidate_bpb") is not None:
        lines += [f"Scored on {r['scored_on']}: {r.get('text_bytes', 0):,} bytes of {r.get('text_from', 'val text')}, "
                  "each version in its own tokenization (bits per byte and per character of the text); val loss in "
                  "nats/token on the same windows of the candidate's val shard"
                  + (" (candidate only: the tokenizers differ)" if r.get("tokenizers") == "different" else "") + ".",
                  "", "| version | role | bits per byte | bits per char | val loss |", "| --- | --- | --- | --- | --- |",
                  f"| v{r['candidate_version']} | candidate | {_fmt(r['candidate_bpb'])} | "
                  f"{_fmt(r.get('candidate_bpc'))} | {_fmt(r['candidate_loss'])} |",
                  f"| {champ} | champion before | {_fmt(r['champion_bpb'])} | {_fmt(r.get('champion_bpc'))} | "
                  f"{_fmt(r['champion_loss'])} |",
                  f"| - | unigram model of the candidate's tokens | {_fmt(r['unigram_bpb'])} | | |", ""]
        unk = [f"v{r[f'{role}_version']} {r[f'{role}_unk']}" for role in ("candidate", "champion")
               if r.get(f"{role}_unk")]
        if unk:
            lines += [f"Tokens read as <unk> (unseen characters, which cost only the <unk>): {', '.join(unk)}.", ""]
    else:
        lines += [f"Scored on: {r.get('scored_on') or 'not scored'}.", ""]
    lines += [f"margin {r.get('margin', 0):g} bits/byte, gate {r.get('gate', 0):g}, forced: {r['forced']}, "
              f"by {r['by']}; settings from {r.get('settings_from', '?')}"]
    rows = r.get("side_by_side") or []
    if rows:
        lines += ["", f"### Side by side ({r.get('table', 'not logged')})", "",
                  f"| prompt | decoding | v{r['candidate_version']} (candidate) | {champ} (champion) |",
                  "| --- | --- | --- | --- |",
                  *[f"| {cell(x['prompt'], 40) or '(empty)'} | {x['decoding']} | {cell(x['candidate'], cell_chars)} | "
                    f"{cell(x['champion'], cell_chars) if x['champion'] is not None else '-'} |" for x in rows]]
    return "\n".join(lines)


def decision_line(r: dict) -> str:
    """One line for the end of a run's output: what promotion decided and where the champion is."""
    champion = r["candidate_version"] if r["decision"] in ("promoted", "rolled back") else r.get("champion_version")
    scores = ""
    if r.get("candidate_bpb") is not None:
        scores = f" [v{r['candidate_version']} {r['candidate_bpb']:.4f}" + (
            f" vs v{r['champion_version']} {r['champion_bpb']:.4f}" if r.get("champion_bpb") is not None else "") + \
            " bits/byte]"
    return (f"promotion of {r['model']} v{r['candidate_version']}: {r['decision']}: {r['reason']}{scores}; "
            f"champion {f'v{champion}' if champion else 'none'}")
