"""What a reviewer sees of a registered version: its tags (where the model comes from: data fingerprint,
corpus, tokenizer, split, weights hash; how it scores: val loss, export parity, variant deltas, sizes), its
model card, and the run's summary in markdown."""
from __future__ import annotations

from lmforge.core.config import Config
from lmforge.core.layout import config_hash
from lmforge.core.records import Exported, PreparedData, Trained
from lmforge.data.objectstore import version_tags as object_version_tags


def version_tags(cfg: Config, data: PreparedData, trained: Trained, exported: Exported, metrics: dict,
                 git_commit: str) -> dict:
    split, e = data.split, exported.metrics
    tags = {"preset": cfg.name, "data_source": data.source, "corpus_sha256": data.corpus_sha256,
            "data_fingerprint": data.fingerprint, "tokenizer_sha256": data.tokenizer_sha256,
            "split": split["method"], "split_val_fraction": split["val_fraction"], "val_sha256": data.val_sha256,
            "weights_sha256": trained.weights_sha256, "export_config": config_hash(cfg, ("export",)),
            "train_steps": trained.steps, "git_commit": git_commit,
            "val_loss": f"{metrics['val_loss']:.4f}", "onnx_parity_max_abs": f"{e['onnx_parity_max_abs']:.3e}",
            "onnx_fp32_bytes": e["onnx_fp32_bytes"], "data_dir": str(data.dir),
            **{k: f"{v:+.4f}" for k, v in e.items() if k.endswith("_val_loss_delta")},
            # lmforge.export.verify: every graph checked through the runtime at export (docs/decode.md "Verification")
            **{k: f"{v:+.5f}" if k.endswith("_loss_delta") else f"{v:.4f}" if k.endswith(("_agreement", "_loss"))
               else f"{v:.3e}" for k, v in e.items() if k.startswith("verify_")}}
    if split["method"] == "documents":
        tags.update(split_seed=split["seed"], split_val_filter=split["val_filter"] or "none")
    if "onnx_int8_bytes" in e:
        tags["onnx_int8_bytes"] = e["onnx_int8_bytes"]
    tags.update(object_version_tags(data.source_objects))  # s3:// gs:// az://: which object versions it saw
    return tags


def model_card(cfg: Config, data: PreparedData, metrics: dict, samples: list[dict]) -> str:
    m, split = cfg.model, data.split
    lines = [f"# {cfg.name}", "", cfg.description, "",
             f"**Data**: {data.source} ({cfg.tokenizer.kind} tokenizer), fingerprint "
             f"`{data.fingerprint[:16]}`, {split['method']} split, val {split['val_fraction']:g}",
             f"**Architecture**: {m.family}, {m.n_layer} layers, {m.n_embd} wide, context {m.block_size}", "",
             "| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], "",
             "**Samples**", *[f"- T={s['temperature']}: {s['text'][:160]!r}" for s in samples[:6]], "",
             "Intended use: experimentation with small language models; not for production text."]
    return "\n".join(lines)


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
        champion = p["candidate_version"] if p["decision"] == "promoted" else p["champion_version"]
        lines += ["", f"## Promotion: {p['decision']}", "", f"{p['reason']}.", "",
                  f"champion after this run: {f'version {champion}' if champion else 'none'}"]
    return "\n".join(lines)


def run_result(run_id: str, data: PreparedData, trained: Trained, metrics: dict, exported: Exported,
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
