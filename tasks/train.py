"""Training task: build the model for the prepared vocabulary and run the training loop in the run's
directory, logging each evaluation to MLflow. Returns the checkpoint directory and the run's training figures."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from lmforge import distributed, tracking
from lmforge.checkpoint import Identity
from lmforge.config import Config
from lmforge.evaluate import eval_sampler
from lmforge.layout import RunLayout
from lmforge.models import build_model
from lmforge.progress import TrainProgress
from lmforge.records import PreparedData, Trained
from lmforge.train import Hooks, TrainResult, train, trained_record
from tasks import retry_unless_user_error


@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def train_model(cfg: Config, data: PreparedData, layout: RunLayout, run_id: str | None = None) -> Trained:
    logger = get_run_logger()
    run = layout.run_dir(data.fingerprint)
    earlier = layout.earlier_runs(data.fingerprint)
    identity = Identity(layout.weights, data.fingerprint, str(earlier[0]) if earlier else "")
    model = build_model(cfg.model, data.vocab_size, seed=cfg.train.seed)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%s model, %.2fM parameters", cfg.model.family, n_params / 1e6)

    # a retry (or a re-run of the same config) resumes from ckpt/last; the artifact shows the step reached
    progress_id = create_progress_artifact(0.0, description=f"training {cfg.name}: step / max_steps")

    def log(row: dict, step: int) -> None:
        update_progress_artifact(progress_id, 100.0 * step / cfg.train.max_steps)
        logger.info("step %(step)d  train %(train_loss).4f  val %(val_loss).4f  %(tokens_per_s).0f tok/s", row)
        if run_id:
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, step)

    def sampled(step: int, text: str) -> None:
        logger.info("sample at step %d: %r", step, text)
        if run_id:
            tracking.log_text(run_id, text, f"samples/step-{step:06d}.txt")

    if cfg.train.nproc > 1:  # DDP under torchrun; rank 0's evaluations reach MLflow once the job has finished
        result = TrainResult(**distributed.launch(cfg, data.dir, data.vocab_size, run.ckpt, cfg.train.nproc, identity))
        for row in result.history:
            if row["step"] > result.resumed_from:  # rows up to the resume point were logged by the earlier run
                log(row, row["step"])
    else:
        with TrainProgress(f"train {cfg.name}") as progress:
            hooks = Hooks(log_eval=log, progress=progress, sample=eval_sampler(cfg, data, sampled), note=logger.info)
            result = train(model, data.shard("train"), data.shard("val"), cfg.model.block_size, cfg.train, run.ckpt,
                           hooks, identity=identity)
    update_progress_artifact(progress_id, 100.0)
    if run_id:
        tracking.log_metrics(run_id, {"best_val_loss": result.best_val_loss, "train_tokens_per_s": result.tokens_per_s,
                                      "train_wall_s": result.wall_s, "n_params": n_params,
                                      "resumed_from": result.resumed_from})
    return trained_record(result, run, n_params)
