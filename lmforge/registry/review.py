"""What a reviewer sees of a registered version: its tags, its model card (the version's description, which the
MLflow UI renders as markdown), and the run's summary in markdown.

Tags, grouped so the registered model's version list (one row per version, every tag shown) stays readable: a
few flat tags a reviewer compares at a glance and searches by (`val_bpb`, `val_loss`, `preset`, `data_source`,
`data_fingerprint`, `promotion`, `parent`; `data_object*` for an object-store source), and JSON-valued groups
for the rest: `lmforge.data` (where the model comes
from: corpus, tokenizer, split), `lmforge.model` (weights, export parity, sizes, variant deltas, the export's
checks), `lmforge.promotion` (the last promotion decision: scores, reason, who, when), `lmforge.rollback` and
`lmforge.lineage` (what a warm start began from). `facts()` reads them back
as one flat dict (the keys the tags had before they were grouped; versions registered before read the same)."""
from __future__ import annotations

import json
import urllib.parse

from lmforge.core.config import Config
from lmforge.core.layout import config_hash
from lmforge.core.records import Exported, PreparedData, Trained
from lmforge.data.objectstore import version_tags as object_version_tags

GROUPS = ("lmforge.data", "lmforge.model", "lmforge.promotion", "lmforge.rollback", "lmforge.lineage")
PROMOTION_TAG = "lmforge.promotion"
LOSS_PLOT = "plots/loss.png"  # logged by the evaluate task; the card shows it through the MLflow server


def version_tags(cfg: Config, data: PreparedData, trained: Trained, exported: Exported, metrics: dict, *,
                 git_commit: str, scores: dict | None = None) -> dict:
    """The tags of a newly registered version (scores: lmforge.registry.promote.val_text_score, or None)."""
    split, e = data.split, exported.metrics
    data_group = {"corpus_sha256": data.corpus_sha256, "tokenizer": cfg.tokenizer.kind,
                  "tokenizer_sha256": data.tokenizer_sha256, "split": split["method"],
                  "split_val_fraction": split["val_fraction"], "val_sha256": data.val_sha256, "data_dir": str(data.dir)}
    if split["method"] == "documents":
        data_group.update(split_seed=split["seed"], split_val_filter=split["val_filter"] or "none")
    model_group = {"weights_sha256": trained.weights_sha256, "export_config": config_hash(cfg, ("export",)),
                   "train_steps": trained.steps, "git_commit": git_commit,
                   "onnx_parity_max_abs": f"{e['onnx_parity_max_abs']:.3e}", "onnx_fp32_bytes": e["onnx_fp32_bytes"],
                   **{k: f"{v:+.4f}" for k, v in e.items() if k.endswith("_val_loss_delta")},
                   # lmforge.export.verify: every graph checked through the runtime at export (docs/decode.md)
                   **{k: f"{v:+.5f}" if k.endswith("_loss_delta") else f"{v:.4f}"
                      if k.endswith(("_agreement", "_loss")) else f"{v:.3e}" for k, v in e.items()
                      if k.startswith("verify_")}}
    if "onnx_int8_bytes" in e:
        model_group["onnx_int8_bytes"] = e["onnx_int8_bytes"]
    tags = {"preset": cfg.preset, "data_source": data.source, "data_fingerprint": data.fingerprint,
            "val_loss": f"{metrics['val_loss']:.4f}",
            "lmforge.data": _group(data_group), "lmforge.model": _group(model_group)}
    if scores:
        tags["val_bpb"] = f"{scores['bits_per_byte']:.4f}"
    tags.update(object_version_tags(data.source_objects))  # s3:// gs:// az://: which object versions it saw
    return tags


def lineage_tags(trained: Trained) -> dict:
    """What the version's weights started from, for a warm start or a continued run (the `train` branch's
    Trained.lineage: kind, source, parent_name, parent_version, parent_data_fingerprint, ...): the
    `lmforge.lineage` group, and a flat `parent` tag naming the parent version. Nothing for a fresh start."""
    import dataclasses

    lineage = getattr(trained, "lineage", None)
    if lineage is None or getattr(lineage, "kind", "fresh") == "fresh":
        return {}
    values = dataclasses.asdict(lineage) if dataclasses.is_dataclass(lineage) else dict(lineage)
    values = {k: v for k, v in values.items() if v not in ("", 0, False, None)}
    tags = {"lmforge.lineage": _group(values)}
    if values.get("parent_version"):
        tags["parent"] = f"{values.get('parent_name', '')} v{values['parent_version']}".strip()
    elif values.get("source"):
        tags["parent"] = str(values["source"])[:250]
    return tags


def _group(values: dict) -> str:
    return json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":"))


def facts(version_or_tags) -> dict[str, str]:
    """A version's tags as one flat dict: the flat tags, and every group's entries beside them (the promotion
    group's as promotion_<key>, the lineage group's as lineage_<key>). Versions registered before the groups existed had these keys flat."""
    tags = dict(getattr(version_or_tags, "tags", version_or_tags) or {})
    out = {k: v for k, v in tags.items() if k not in GROUPS}
    for group in GROUPS:
        try:
            values = json.loads(tags.get(group) or "{}")
        except ValueError:
            continue
        prefix = "promotion_" if group == PROMOTION_TAG else "lineage_" if group == "lmforge.lineage" else ""
        out.update({f"{prefix}{k}": str(v) for k, v in values.items()})
    return out


def loss_plot_markdown(run_id: str) -> str:
    """The run's loss plot as an image the MLflow UI shows in the description: a link relative to the UI's page,
    which `mlflow ui` and `mlflow server` answer from the run's artifacts (their /get-artifact route)."""
    query = urllib.parse.urlencode({"path": LOSS_PLOT, "run_uuid": run_id})
    return f"![loss curve: train and val loss by step](get-artifact?{query})"


def _data_sentence(cfg: Config, data: PreparedData) -> str:
    m, t = cfg.model, cfg.tokenizer.kind
    recipe = (f"lmforge's `{cfg.preset}` recipe" if cfg.preset != cfg.name else f"the `{cfg.preset}` preset")
    return (f"A {m.family} language model ({m.n_layer} layers, {t} tokenizer) trained with {recipe} on "
            f"{data.source}: {data.documents:,} documents, {data.chars:,} characters after cleaning.")


def model_card(cfg: Config, data: PreparedData, metrics: dict, samples: list[dict], *, run_id: str = "",
               scores: dict | None = None, lineage: dict | None = None) -> str:
    """The version's description: what this model is (its name, its data; the preset's description only when
    the data is the preset's own), its scores, its loss curve, its samples with their prompt and settings, and
    which promotion is lmforge's."""
    m, split = cfg.model, data.split
    intro = cfg.description if cfg.description else _data_sentence(cfg, data)
    lines = [f"# {cfg.name}", "", intro, "",
             f"**Data**: {data.source} ({cfg.tokenizer.kind} tokenizer), fingerprint "
             f"`{data.fingerprint[:16]}`, {split['method']} split, val {split['val_fraction']:g}", "",
             f"**Recipe**: preset `{cfg.preset}`; {m.family}, {m.n_layer} layers, {m.n_embd} wide, context "
             f"{m.block_size}", ""]
    if lineage and lineage.get("parent"):
        kind = facts(lineage).get("lineage_kind", "warm-start")
        lines += [f"**Started from**: {lineage['parent']} ({kind}; the `lmforge.lineage` tag holds its data "
                  "fingerprint)", ""]
    if scores:
        lines += [f"**Score**: {scores['bits_per_byte']:.4f} bits per byte ({scores['bits_per_char']:.4f} per "
                  f"character) on {scores['bytes']:,} bytes of its val text, in its own tokenization; val loss "
                  f"{metrics['val_loss']:.4f} nats/token", ""]
    lines += ["| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], ""]
    if run_id:
        lines += ["**Loss curve**", "", loss_plot_markdown(run_id), ""]
    e = cfg.eval
    lines += [f"**Samples** (through onnxruntime; at most {e.max_new_tokens} new tokens, top_k "
              f"{e.top_k or 'off'})", "", "| prompt | temperature | seed | text |", "| --- | --- | --- | --- |",
              *[f"| {cell(s['prompt']) or '(empty)'} | {s['temperature']:g} | {s.get('seed', 0)} | "
                f"{cell(s['text'], 200)} |" for s in samples[:8]], "",
              f"**Promotion**: lmforge's is `lmforge promote {cfg.name}` (and a scheduled run's promote.auto step): "
              "it moves the alias `champion` only when this version wins on val text neither version trained on, "
              "and records why below. MLflow's own \"Promote model\" button copies the version into another "
              "registered model; it compares nothing and moves no alias.", "",
              "Intended use: experimentation with small language models; not for production text."]
    return "\n".join(lines)


def cell(text: str, limit: int = 160) -> str:
    """Text for one markdown table cell: one line, pipes escaped, at most `limit` characters."""
    flat = " ".join(str(text).split("\n")).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def run_summary(name: str, result: dict) -> str:
    """The flow run's markdown summary: metrics, samples, MLflow run and model version."""
    lines = [f"# {name}: version {result['model_version']}", "",
             f"MLflow run `{result['run_id']}`, model `{result['model_uri']}` (version {result['model_version']}"
             + (", unchanged: an identical version was already registered" if result.get("reused") else "") + ")",
             "", "| metric | value |", "| --- | --- |",
             *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
               for k, v in result["metrics"].items()],
             "", "## Samples", "", *[f"- `{s[:160]!r}`" for s in result["samples"][:6]]]
    if result.get("promotion"):  # promote.auto: the registry's decision on this version, and why
        p = result["promotion"]
        lines += ["", f"## Promotion: {p['decision']}", "", f"{p['reason']}.", "", champion_line(p)]
    return "\n".join(lines)


def champion_line(p: dict) -> str:
    champion = p["candidate_version"] if p["decision"] == "promoted" else p["champion_version"]
    return f"champion after this run: {f'version {champion}' if champion else 'none'}"


def run_result(run_id: str, data: PreparedData, trained: Trained, metrics: dict, exported: Exported, *,
               registered, samples: list[dict]) -> dict:
    """What `lmforge run --json` prints and the pipeline flow returns."""
    return {"run_id": run_id, "model_name": registered.name, "model_version": registered.version,
            "reused": registered.reused, "model_uri": f"models:/{registered.name}@candidate",
            "model_dir": str(exported.model_dir), "run_dir": str(trained.run_dir), "data_fingerprint": data.fingerprint,
            "metrics": {**metrics, "onnx_parity_max_abs": exported.metrics["onnx_parity_max_abs"],
                        "best_val_loss": trained.best_val_loss, "final_train_loss": trained.final_train_loss,
                        "train_tokens_per_s": trained.tokens_per_s, "train_steps": trained.steps,
                        "resumed_from": trained.resumed_from},
            "samples": [s["text"] for s in samples]}
