"""Export task: the best checkpoint -> the exported model directory (ONNX + int8, tokenizer, lmforge.json),
with the torch/onnxruntime parity error and each variant's val loss beside fp32's logged; then samples
generated through that directory."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.export import export_model_dir
from lmforge.data.shards import open_shard
from lmforge.models import build_model, model_spec
from lmforge.promote import variant_val_loss_deltas
from lmforge.redact import redact_text
from lmforge.runtime import Generator
from lmforge.train import Checkpoints


@task(name="export")
def export_model(cfg: Config, meta: dict, trained: dict, metrics: dict, out_dir: Path,
                 run_id: str | None = None) -> dict:
    model = build_model(cfg.model, meta["vocab_size"])
    Checkpoints(Path(trained["ckpt_dir"])).load_model("best", model)
    e = cfg.export
    manifest = {
        "name": cfg.name,
        "tokenizer": {"kind": cfg.tokenizer.kind, "file": "tokenizer.json"},
        "tokens": meta["special_ids"],
        "generation": {"temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                       "max_new_tokens": e.max_new_tokens},
        "data": {"source": redact_text(meta["source"]), "corpus_sha256": meta["corpus_sha256"],
                 "documents": meta["documents"]},
        "metrics": metrics,
        "mlflow_run_id": run_id,
    }
    model_dir, export_metrics = export_model_dir(model, model_spec(model), Path(meta["dir"]) / "tokenizer.json",
                                                 out_dir, manifest, e.opset, e.int8, e.parity_tolerance,
                                                 e.optimize, e.fp16)
    export_metrics.update(variant_val_loss_deltas(model_dir, open_shard(Path(meta["dir"]), "val")))
    get_run_logger().info("exported %s (parity %.2e)", model_dir, export_metrics["onnx_parity_max_abs"])
    if run_id:
        tracking.log_metrics(run_id, export_metrics)
    return {"model_dir": str(model_dir), **export_metrics}


@task(name="samples")
def sample_model(cfg: Config, model_dir: str, run_id: str | None = None) -> list[dict]:
    """Generate from the exported directory (onnxruntime) at each configured temperature."""
    gen = Generator(model_dir)
    samples = []
    for prompt in cfg.eval.prompts:
        for t in cfg.eval.temperatures:
            for i in range(cfg.eval.num_samples):
                text = gen.generate(prompt, max_new_tokens=cfg.eval.max_new_tokens, temperature=t,
                                    top_k=cfg.eval.top_k, seed=i)
                samples.append({"prompt": prompt, "temperature": t, "seed": i, "text": prompt + text})
    logger = get_run_logger()
    for s in samples:
        logger.info("T=%.1f  %r", s["temperature"], s["text"][:200])
    if run_id:
        tracking.log_text(run_id, json.dumps(samples, indent=2, ensure_ascii=False), "samples/samples.json")
    return samples
