"""Training task: build the model for the prepared vocabulary and run the training loop, logging each
evaluation to MLflow. Returns the checkpoint directory and the run's training figures."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from lmforge import distributed, tracking
from lmforge.config import Config
from lmforge.data.shards import open_shard
from lmforge.data.tokenize import load_tokenizer
from lmforge.evaluate import sample_text
from lmforge.models import build_model
from lmforge.progress import TrainProgress
from lmforge.train import TrainResult, train
from tasks import retry_unless_user_error


def eval_sampler(cfg: Config, meta: dict, run_id: str | None):
    """Samples from the model at every evaluation (first prompt, top-k, T=1), logged and kept in MLflow."""
    tok = load_tokenizer(Path(meta["dir"]) / "tokenizer.json")
    ids = meta["special_ids"]
    prompt = cfg.eval.prompts[0] if cfg.eval.prompts else ""
    prompt_ids = ([ids["bos"]] if ids["bos"] is not None else []) + tok.encode(prompt, add_special_tokens=False).ids

    def on_eval(model, step: int) -> None:
        out = sample_text(model, prompt_ids, min(cfg.eval.max_new_tokens, 60), cfg.model.block_size,
                          temperature=1.0, top_k=cfg.eval.top_k, seed=step, eos=ids["eos"])
        text = prompt + tok.decode(out)
        get_run_logger().info("sample at step %d: %r", step, text)
        if run_id:
            tracking.log_text(run_id, text, f"samples/step-{step:06d}.txt")

    return on_eval


@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def train_model(cfg: Config, meta: dict, ckpt_dir: Path, run_id: str | None = None) -> dict:
    logger = get_run_logger()
    model = build_model(cfg.model, meta["vocab_size"])
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%s model, %.2fM parameters", cfg.model.family, n_params / 1e6)

    # a retry (or a re-run of the same config) resumes from ckpt/last; the artifact shows the step reached
    progress_id = create_progress_artifact(0.0, description=f"training {cfg.name}: step / max_steps")

    def log(row: dict, step: int) -> None:
        update_progress_artifact(progress_id, 100.0 * step / cfg.train.max_steps)
        logger.info("step %(step)d  train %(train_loss).4f  val %(val_loss).4f  %(tokens_per_s).0f tok/s", row)
        if run_id:
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, step)

    if cfg.train.nproc > 1:  # DDP under torchrun; rank 0's evaluations reach MLflow once the job has finished
        result = TrainResult(**distributed.launch(cfg, meta, ckpt_dir, cfg.train.nproc))
        for row in result.history:
            if row["step"] > result.resumed_from:  # rows up to the resume point were logged by the earlier run
                log(row, row["step"])
    else:
        data_dir = Path(meta["dir"])
        with TrainProgress(f"train {cfg.name}") as progress:
            result = train(model, open_shard(data_dir, "train"), open_shard(data_dir, "val"), cfg.model.block_size,
                           cfg.train, ckpt_dir, log, progress=progress, on_eval=eval_sampler(cfg, meta, run_id))
    update_progress_artifact(progress_id, 100.0)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
    if run_id:
        tracking.log_metrics(run_id, {"best_val_loss": result.best_val_loss, "train_tokens_per_s": result.tokens_per_s,
                                      "train_wall_s": result.wall_s, "n_params": n_params,
                                      "resumed_from": result.resumed_from})
    if result.resumed_from:
        logger.info("resumed from the step-%d checkpoint in %s", result.resumed_from, ckpt_dir)
    return {**summary, "history": result.history, "ckpt_dir": str(ckpt_dir), "n_params": n_params}
