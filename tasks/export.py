"""Export task: the best checkpoint -> the exported model directory (ONNX + variants, tokenizer, lmforge.json),
with the torch/onnxruntime parity error and each variant's val loss beside fp32's logged; then samples
generated through that directory."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.checkpoint import load_best
from lmforge.config import Config
from lmforge.data.shards import open_shard
from lmforge.export import export_model_dir, provenance
from lmforge.models import model_spec
from lmforge.runtime import Generator
from lmforge.runtime.scoring import variant_val_loss_deltas


@task(name="export")
def export_model(cfg: Config, data: dict, trained: dict, metrics: dict, out_dir: Path,
                 run_id: str | None = None) -> dict:
    model = load_best(cfg.model, data["vocab_size"], Path(trained["ckpt_dir"]))
    e = cfg.export
    model_dir, export_metrics = export_model_dir(model, model_spec(model), Path(data["dir"]) / "tokenizer.json",
                                                 out_dir, provenance(cfg, data, metrics, run_id), e.opset, e.int8,
                                                 e.parity_tolerance, e.optimize, e.fp16)
    export_metrics.update(variant_val_loss_deltas(model_dir, open_shard(Path(data["dir"]), "val")))
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
