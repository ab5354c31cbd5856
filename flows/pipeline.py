"""The main job: acquire -> clean -> tokenize -> (the run's data) -> train -> evaluate -> export -> samples ->
register (-> promote, with promote.auto). The prepared-data directory and the run directory are each held by one
process at a time; training on a GPU pool also holds one of that pool's GPU slots."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.states import Cancelled

from lmforge.flows.prepare import prepare_data
from lmforge.core.config import DEFAULT_PRESET, Config
from lmforge.core.interrupt import Interrupted
from lmforge.core.layout import RunLayout
from lmforge.core.locks import hold
from lmforge.registry.promote import decision_line
from lmforge.registry.review import run_result
from lmforge.tasks import parsed_config, run_policy
from lmforge.tasks.data import snapshot_data
from lmforge.tasks.evaluate import evaluate_model
from lmforge.tasks.export import export_model, sample_model
from lmforge.tasks.promote import promote_registered
from lmforge.tasks.slots import gpu_slot
from lmforge.tasks.tracking import end_tracking, mark_mlflow_run_failed, publish_summary, register_model, start_tracking
from lmforge.tasks.train import resolve_start, train_model


@flow(name="lmforge-pipeline", log_prints=True, on_failure=[mark_mlflow_run_failed])
def pipeline(preset: str = DEFAULT_PRESET, overrides: dict | None = None, wait: bool = True,
             config: Config | None = None) -> dict:
    """`wait`: when another process holds this config's data or run directory, wait for it (else stop).
    `config`: the preset and overrides already parsed (the CLI's); a deployment's run parses them here."""
    policy = run_policy()  # the operator's: a deployment run gets the deployment defaults
    cfg = parsed_config(preset, overrides, config, policy)
    layout = RunLayout.for_config(cfg)
    logger = get_run_logger()
    run_id = start_tracking(cfg, f"{cfg.name}-{layout.weights}")
    try:
        with hold(layout.prepared_lock, f"the prepared data of {cfg.name}", wait, logger):
            prepared = prepare_data(cfg, layout, run_id, policy)
            start = resolve_start(cfg, layout, prepared, policy)  # fresh, warm start or --continue: part of identity
            data = snapshot_data(prepared, layout, start, run_id)
        run = layout.run_dir(data.fingerprint, start)
        with hold(run.lock, f"the run directory {run.root.name}", wait, logger):
            with gpu_slot(cfg):  # one training per GPU of a GPU pool, across deployments (tasks/slots.py)
                trained = train_model(cfg, data, layout, start, run_id)
            metrics = evaluate_model(cfg, data, trained, run_id)
            exported = export_model(cfg, data, trained, metrics, run.model, run_id)
            samples = sample_model(cfg, exported.model_dir, run_id)
            registered = register_model(cfg, run_id, exported, data, trained, metrics=metrics, samples=samples)
    except Interrupted as stop:
        end_tracking(run_id, "KILLED")
        return Cancelled(message=stop.message)
    result = run_result(run_id, data, trained, metrics, exported, registered=registered, samples=samples)
    if cfg.promote.auto:  # the deployments' runs (prefect.yaml): the registry's decision, recorded
        result["promotion"] = promote_registered(cfg, registered)
    publish_summary(cfg, result)
    if cfg.promote.auto:  # the run's last line says what promotion decided
        print(decision_line(result["promotion"]))
    return result
