"""What a reviewer sees of a registered version: its tags (where the model comes from: data fingerprint,
corpus, tokenizer, split, weights hash; how it scores: val loss, export parity, variant deltas, sizes), its
model card, and the run's summary in markdown."""
from __future__ import annotations

from lmforge.config import Config
from lmforge.layout import config_hash


def version_tags(cfg: Config, data: dict, trained: dict, exported: dict, metrics: dict, git_commit: str) -> dict:
    split = data["split"]
    tags = {"preset": cfg.name, "data_source": data["source"], "corpus_sha256": data["corpus_sha256"],
            "data_fingerprint": data["data_fingerprint"], "tokenizer_sha256": data["tokenizer_sha256"],
            "split": split["method"], "split_val_fraction": split["val_fraction"], "val_sha256": data["val"]["sha256"],
            "weights_sha256": trained["weights_sha256"], "export_config": config_hash(cfg, ("export",)),
            "train_steps": trained["steps"], "git_commit": git_commit,
            "val_loss": f"{metrics['val_loss']:.4f}", "onnx_parity_max_abs": f"{exported['onnx_parity_max_abs']:.3e}",
            "onnx_fp32_bytes": exported["onnx_fp32_bytes"], "data_dir": data["dir"],
            **{k: f"{v:+.4f}" for k, v in exported.items() if k.endswith("_val_loss_delta")}}
    if split["method"] == "documents":
        tags.update(split_seed=split["seed"], split_val_filter=split["val_filter"] or "none")
    if "onnx_int8_bytes" in exported:
        tags["onnx_int8_bytes"] = exported["onnx_int8_bytes"]
    return tags


def model_card(cfg: Config, data: dict, metrics: dict, samples: list[dict]) -> str:
    m, split = cfg.model, data["split"]
    lines = [f"# {cfg.name}", "", cfg.description, "",
             f"**Data**: {data['source']} ({cfg.tokenizer.kind} tokenizer), fingerprint "
             f"`{data['data_fingerprint'][:16]}`, {split['method']} split, val {split['val_fraction']:g}",
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
