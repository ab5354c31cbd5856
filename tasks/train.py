"""Training task: build the model for the prepared vocabulary and run the training loop in the run's
directory, logging each evaluation to MLflow. Returns the checkpoint directory and the run's training figures."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from lmforge.training import distributed
from lmforge.registry import tracking
from lmforge.training.checkpoint import Identity
from lmforge.core.config import Config
from lmforge.training.evaluate import eval_sampler
from lmforge.core.layout import RunLayout
from lmforge.models import build_model
from lmforge.training.progress import TrainProgress
from lmforge.core.records import PreparedData, Trained
from lmforge.training.train import Hooks, trained_record
from lmforge.tasks import retry_unless_user_error


def _eval_hooks(cfg: Config, data: PreparedData, progress_id, run_id: str | None, progress) -> Hooks:
    """Each evaluation to the log, the Prefect progress artifact and MLflow; each sample to MLflow."""
    logger = get_run_logger()

    def log(row: dict, step: int) -> None:
        update_progress_artifact(progress_id, 100.0 * step / cfg.train.max_steps)
        logger.info("step %(step)d  train %(train_loss).4f  val %(val_loss).4f  %(tokens_per_s).0f tok/s", row)
        if run_id:
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, step)

    def sampled(step: int, text: str) -> None:
        logger.info("sample at step %d: %r", step, text)
        if run_id:
            tracking.log_text(run_id, text, f"samples/step-{step:06d}.txt")

    return Hooks(log_eval=log, progress=progress, sample=eval_sampler(cfg, data, sampled), note=logger.info)


@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def train_model(cfg: Config, data: PreparedData, layout: RunLayout, run_id: str | None = None) -> Trained:
    run = layout.run_dir(data.fingerprint)
    earlier = layout.earlier_runs(data.fingerprint)
    identity = Identity(layout.weights, data.fingerprint, str(earlier[0]) if earlier else "")
    model = build_model(cfg.model, data.vocab_size, seed=cfg.train.seed)
    n_params = sum(p.numel() for p in model.parameters())
    get_run_logger().info("%s model, %.2fM parameters", cfg.model.family, n_params / 1e6)
    # a retry (or a re-run of the same config) resumes from ckpt/last; the artifact shows the step reached
    progress_id = create_progress_artifact(0.0, description=f"training {cfg.name}: step / max_steps")
    with TrainProgress(f"train {cfg.name}") as progress:
        hooks = _eval_hooks(cfg, data, progress_id, run_id, progress if cfg.train.nproc <= 1 else None)
        result = distributed.train_here_or_launch(model, cfg, data, run.ckpt, hooks, identity)
    update_progress_artifact(progress_id, 100.0)
    if run_id:
        tracking.log_metrics(run_id, {"best_val_loss": result.best_val_loss, "train_tokens_per_s": result.tokens_per_s,
                                      "train_wall_s": result.wall_s, "n_params": n_params,
                                      "resumed_from": result.resumed_from})
    return trained_record(result, run, n_params)
