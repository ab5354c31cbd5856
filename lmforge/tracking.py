"""MLflow: the tracking URI, runs (params, metrics, artifacts) addressed by run id (mlflow.active_run() is
thread-local, so tasks get ids, not an ambient run), model registration with tags, description and the
`candidate` alias, and fetching a registered model directory back by `models:/NAME@ALIAS`."""
from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.layout import artifacts_root
from lmforge.redact import redact_text, redact_values, split_credentials



def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(artifacts_root() / 'mlflow.db').resolve()}"


def client():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow.MlflowClient(tracking_uri())


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast (before any training) when an HTTP tracking server does not answer."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        url, auth = split_credentials(uri.rstrip("/") + "/health")  # user:pass@ in the URI: Basic auth
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": auth} if auth else {}),
                                        timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise LmforgeError(f"MLflow tracking server {redact_text(uri)} is unreachable: "
                               f"{redact_text(str(getattr(exc, 'reason', exc)))}",
                               hint="start it (`mlflow server ...`) or unset MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(experiment: str, run_name: str, params: dict, tags: dict | None = None) -> str:
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        local = tracking_uri().startswith("sqlite:")  # a server chooses its own artifact root
        location = (artifacts_root() / "mlruns" / experiment).resolve().as_uri() if local else None
        exp_id = c.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = c.create_run(exp_id, run_name=run_name, tags=redact_values({"git_commit": git_commit(), **(tags or {})}))
    log_params(run.info.run_id, params)
    return run.info.run_id


def log_params(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, redact_text(str(v))[:6000]) for k, v in params.items()]  # data.source may hold a token
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict, step: int | None = None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    if items:
        client().log_batch(run_id, metrics=items)


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    c = client()
    (c.log_artifacts if Path(path).is_dir() else c.log_artifact)(run_id, str(path), artifact_path)


def log_text(run_id: str, text: str, name: str) -> None:
    client().log_text(run_id, text, name)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


def fail_runs_tagged(tag: str, value: str) -> None:
    """End every still-running run carrying tag=value as FAILED (best effort: the server may be the failure,
    and then this returns at once instead of waiting out the client's retries)."""
    try:
        check_tracking_server(timeout=2.0)
        c = client()
        exps = [e.experiment_id for e in c.search_experiments()]
        for run in c.search_runs(exps, filter_string=f"tags.{tag} = '{value}' and attributes.status = 'RUNNING'"):
            c.set_terminated(run.info.run_id, "FAILED")
    except Exception:  # noqa: BLE001 - never mask the flow's own failure
        pass


def register_model(run_id: str, model_dir: Path, name: str, tags: dict, description: str = "",
                   alias: str = "candidate") -> str:
    """Log the exported directory as an `mlflow.onnx` model of the run (plus tokenizer.json, lmforge.json and
    variants beside model.onnx), register it under `name`, tag it and point `alias` at it. Returns the version."""
    import mlflow
    import onnx

    c = client()
    signature, example = onnx_signature(model_dir)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(model_dir / "model.onnx")), name="model",
                                     save_as_external_data=False, signature=signature, input_example=example,
                                     onnx_execution_providers=["CPUExecutionProvider"])
    c.log_model_artifacts(info.model_id, str(model_dir))
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description=f"lmforge preset {name}")
    version = c.create_model_version(name, source=info.model_uri, run_id=run_id,
                                     tags={k: redact_text(str(v)) for k, v in tags.items()},
                                     description=redact_text(description),
                                     model_id=info.model_id)
    c.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def onnx_signature(model_dir: Path):
    """The model.onnx signature (symbolic axes as -1) and an input example: 4 tokens after one cached position
    (an empty cache would lose its trailing axes in MLflow's JSON round trip of the example)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from lmforge.promote import prefill_feeds
    from lmforge.runtime import Generator

    gen = Generator(model_dir, device="cpu", fast=False)
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def schema(args) -> Schema:
        return Schema([TensorSpec(np.dtype(types.get(a.type, np.float32)),
                                  tuple(d if isinstance(d, int) else -1 for d in a.shape), a.name) for a in args])

    example = prefill_feeds(gen, np.zeros((1, 4), np.int64))
    if not gen.rnn:
        example.update({s["input"]: np.zeros((1, gen.n_head, 1, gen.head_dim), np.float32) for s in gen.state_io},
                       attention_mask=np.ones((1, 5), np.int64), position_ids=np.arange(1, 5, dtype=np.int64)[None])
    return ModelSignature(schema(gen.session.get_inputs()), schema(gen.session.get_outputs())), example


def fetch_model_dir(uri: str, dest: Path | None = None) -> Path:
    """Download `models:/NAME@ALIAS` (or models:/NAME/VERSION) to a local directory and return it."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    dest = Path(dest or tempfile.mkdtemp(prefix="lmforge-model-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as exc:  # mlflow raises MlflowException / RestException with long bodies
        raise LmforgeError(f"cannot fetch {uri} from {redact_text(tracking_uri())}: "
                           f"{redact_text(str(exc).splitlines()[0][:200])}",
                           hint="check the name and alias (`lmforge runs`), and MLFLOW_TRACKING_URI") from None


def recent_runs(limit: int = 10) -> list[dict]:
    """The newest runs across lmforge experiments, with their latest metrics."""
    import datetime

    c = client()
    exps = [e.experiment_id for e in c.search_experiments() if e.name.startswith("lmforge-")]
    if not exps:
        return []
    runs = c.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=limit)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start": datetime.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
             "metrics": dict(r.data.metrics)} for r in runs]
