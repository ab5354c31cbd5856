"""Export task: the best checkpoint -> the exported model directory (ONNX + variants, tokenizer, lmforge.json),
with the torch/onnxruntime parity error and each variant's val loss beside fp32's logged; then samples
generated through that directory."""
from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from lmforge.registry import tracking
from lmforge.core.config import Config
from lmforge.training.evaluate import exported_samples
from lmforge.export.hf import write_model_card
from lmforge.export.modeldir import export_run
from lmforge.core.records import Exported, PreparedData, Trained


@task(name="export")
def export_model(cfg: Config, data: PreparedData, trained: Trained, metrics: dict, out_dir: Path,
                 run_id: str | None = None) -> Exported:
    exported = export_run(cfg, data, trained.ckpt_dir, metrics, out_dir, run_id)
    get_run_logger().info("exported %s (parity %.2e)", exported.model_dir, exported.metrics["onnx_parity_max_abs"])
    if run_id:
        tracking.log_metrics(run_id, exported.metrics)
    return exported


@task(name="samples")
def sample_model(cfg: Config, model_dir: Path, run_id: str | None = None) -> list[dict]:
    """Generate from the exported directory (onnxruntime) at each configured temperature; they go into the
    Hugging Face folder's model card too."""
    samples = exported_samples(cfg, model_dir)
    write_model_card(model_dir, samples)  # hf/README.md: the model card, now with its samples
    logger = get_run_logger()
    for s in samples:
        logger.info("T=%.1f  %r", s["temperature"], s["text"][:200])
    if run_id:
        tracking.log_text(run_id, json.dumps(samples, indent=2, ensure_ascii=False), "samples/samples.json")
    return samples
