"""Training tasks: where the weights start (fresh, a warm start from train.init_from, or the finished run that
--continue extends), then the training loop in the run's directory, logging each evaluation, the run's lineage
and its weights (checkpoint/: what a warm start elsewhere fetches) to MLflow."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from lmforge.core.config import Config
from lmforge.core.layout import RunLayout
from lmforge.core.records import PreparedData, StartFrom, Trained
from lmforge.models import build_model
from lmforge.registry import tracking
from lmforge.registry.warmstart import resolve_init
from lmforge.tasks import retry_unless_user_error
from lmforge.training import distributed
from lmforge.training.checkpoint import Identity
from lmforge.training.evaluate import eval_sampler
from lmforge.training.progress import TrainProgress
from lmforge.training.train import Hooks, trained_record
from lmforge.training.warmstart import find_continuation, lineage_of, with_vocabulary


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


@task(name="resolve-start", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def resolve_start(cfg: Config, layout: RunLayout, data: PreparedData) -> StartFrom | None:
    """None (a fresh init), the parent of a warm start (train.init_from; its tokenizer checked against this
    data's), or the finished run --continue extends: before the run directory is chosen, since it is part of
    the run's identity."""
    t = cfg.train
    if t.continue_run:
        return find_continuation(layout, data.fingerprint, t.max_steps)
    if not t.init_from:
        return None
    parent = resolve_init(t.init_from, cfg.name, layout.cache)
    if parent is None:
        get_run_logger().info("train.init_from=champion: %s has no champion yet, so this run starts from a fresh "
                              "init", cfg.name)
        return None
    return with_vocabulary(parent, data.tokenizer_file, t.init_optimizer)


@task(name="train", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error)
def train_model(cfg: Config, data: PreparedData, layout: RunLayout, start: StartFrom | None = None,
                run_id: str | None = None) -> Trained:
    run = layout.run_dir(data.fingerprint, start)
    earlier = layout.earlier_runs(data.fingerprint) if start is None else []
    identity = Identity(layout.weights_for(start), data.fingerprint, str(earlier[0]) if earlier else "", layout.family)
    model = build_model(cfg.model, data.vocab_size, seed=cfg.train.seed)
    n_params = sum(p.numel() for p in model.parameters())
    get_run_logger().info("%s model, %.2fM parameters", cfg.model.family, n_params / 1e6)
    # a retry (or a re-run of the same config) resumes from ckpt/last; the artifact shows the step reached
    progress_id = create_progress_artifact(0.0, description=f"training {cfg.name}: step / max_steps")
    with TrainProgress(f"train {cfg.name}") as progress:
        hooks = _eval_hooks(cfg, data, progress_id, run_id, progress if cfg.train.nproc <= 1 else None)
        result = distributed.train_here_or_launch(model, cfg, data, run.ckpt, hooks, identity, start)
    update_progress_artifact(progress_id, 100.0)
    trained = trained_record(result, run, n_params, lineage_of(cfg.train, start))
    if run_id:
        _log_trained(run_id, trained)
    return trained


def _log_trained(run_id: str, trained: Trained) -> None:
    """The training figures, the lineage (lineage.* tags: where the weights started, the schedule used) and the
    weights themselves (checkpoint/: a warm start on another machine fetches them)."""
    tracking.log_metrics(run_id, {"best_val_loss": trained.best_val_loss, "train_tokens_per_s": trained.tokens_per_s,
                                  "train_wall_s": trained.wall_s, "n_params": trained.n_params,
                                  "resumed_from": trained.resumed_from})
    tracking.set_tags(run_id, trained.lineage.tags())
    best = trained.ckpt_dir / "best"
    if (best / "model.safetensors").is_file():
        for name in ("model.safetensors", "state.json"):
            tracking.log_artifact(run_id, best / name, "checkpoint")
