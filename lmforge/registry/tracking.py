"""MLflow: the tracking URI, runs (params, metrics, artifacts) addressed by run id (mlflow.active_run() is
thread-local, so tasks get ids, not an ambient run), model registration (the pyfunc generate model of
lmforge.registry.pyfunc) with tags, description and the `candidate` alias, and fetching a registered model directory back
by `models:/NAME@ALIAS`."""
from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmforge.core.errors import LmforgeError
from lmforge.core.layout import artifacts_root
from lmforge.core.redact import redact_text, redact_values, split_credentials


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(artifacts_root() / 'mlflow.db').resolve()}"


_ready: set[str] = set()  # SQLite stores this process has opened (created and migrated)


def client():
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and uri not in _ready:
        # the first open of a new SQLite store (the client opens it as it is made) creates and migrates its
        # tables: two processes doing it at once (two runs started together on a fresh machine) collide, so
        # each process's first open waits for the others'
        from filelock import FileLock

        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db) + ".init.lock"), _quiet_mlflow(True):  # (its "Creating initial ... tables" INFO lines
            c = mlflow.MlflowClient(uri)                                # would come before a command's one-line error)
        _ready.add(uri)
        return c
    return mlflow.MlflowClient(uri)


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
    exp = with_retries(c.get_experiment_by_name, experiment)
    if exp is None:
        local = tracking_uri().startswith("sqlite:")  # a server chooses its own artifact root
        location = (artifacts_root() / "mlruns" / experiment).resolve().as_uri() if local else None
        try:
            exp_id = with_retries(c.create_experiment, experiment, artifact_location=location)
        except Exception as exc:  # noqa: BLE001 - another process created it first
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
                raise
            exp_id = with_retries(c.get_experiment_by_name, experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    run = with_retries(c.create_run, exp_id, run_name=run_name, tags=redact_values({"git_commit": git_commit(), **(tags or {})}))
    log_params(run.info.run_id, params)
    return run.info.run_id


def log_params(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, redact_text(str(v))[:6000]) for k, v in params.items()]  # data.source may hold a token
    for i in range(0, len(items), 100):
        with_retries(client().log_batch, run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict, step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    if items:
        with_retries(client().log_batch, run_id, metrics=items)


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    c = client()
    with_retries(c.log_artifacts if Path(path).is_dir() else c.log_artifact, run_id, str(path), artifact_path)


def log_text(run_id: str, text: str, name: str) -> None:
    with_retries(client().log_text, run_id, text, name)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    with_retries(client().set_terminated, run_id, status)


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


TRANSIENT = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED",
             "database is locked", "Connection", "timed out", "502", "503", "504")


def with_retries(fn, *args, attempts: int = 5, backoff: float = 0.5, **kwargs):
    """Call a registry/tracking function, retrying transient failures (a busy SQLite store, a server restarting,
    a dropped connection) with exponential backoff; other errors pass through at once."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests' and sqlite's errors
            text = f"{getattr(exc, 'error_code', '')} {exc}"
            if attempt == attempts - 1 or not any(t in text for t in TRANSIENT):
                raise
            time.sleep(backoff * 2 ** attempt)


def ensure_registered_model(name: str, description: str = "") -> None:
    """Create registered model `name` unless it exists: two first registrations at once both succeed (the
    loser of the race gets RESOURCE_ALREADY_EXISTS, which is the state it wanted)."""
    c = client()
    try:
        with_retries(c.create_registered_model, name, description=description)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
            raise


def identical_version(name: str, weights_sha256: str, data_fingerprint: str, export_config: str):
    """A registered version of `name` with these very weights, trained on this very data, exported with these
    export settings, or None."""
    from lmforge.registry.review import facts

    c = client()
    try:
        found = with_retries(c.search_model_versions,
                             f"name = '{name}' and tags.data_fingerprint = '{data_fingerprint}'")
    except Exception as exc:  # noqa: BLE001 - no such registered model yet
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    same = [v for v in found if facts(v).get("weights_sha256") == weights_sha256
            and facts(v).get("export_config") == export_config]
    return min(same, key=lambda v: int(v.version)) if same else None


def register_model(run_id: str, model_dir: Path, name: str, tags: dict, *, description: str = "",
                   alias: str = "candidate", val_dir: Path | None = None, example_prompt: str = "",
                   model_description: str = "") -> tuple[str, bool]:
    """Log the exported directory as the run's pyfunc "generate" model (lmforge.registry.pyfunc: the directory travels
    as its artifact, its predict answers prompts with text), register it under `name`, tag it and point `alias`
    at it. A version with the same weights, data fingerprint and export settings (lmforge.registry.review.facts:
    weights_sha256, data_fingerprint, export_config) is reused instead: alias moves to it, nothing new is
    registered. Returns (version, reused). `val_dir`: a directory whose val.bin, val.jsonl (the val text) and
    meta.json are logged with the run (data/), so promotion can score the version on another machine.
    `example_prompt`: the prompt of the model's input example."""
    import mlflow

    from lmforge.registry.pyfunc import log_generate_model

    from lmforge.registry.review import facts

    c = client()
    known = facts(tags)
    same = identical_version(name, known["weights_sha256"], known["data_fingerprint"], known["export_config"])
    if same is not None:
        with_retries(c.set_registered_model_alias, name, alias, same.version)
        with_retries(c.set_tag, run_id, "model_version", str(same.version))
        return str(same.version), True
    if val_dir is not None and (Path(val_dir) / "val.bin").stat().st_size <= VAL_ARTIFACT_MAX_BYTES:
        for f in ("val.bin", "val.jsonl", "meta.json"):
            if f != "val.jsonl" or (Path(val_dir) / f).is_file():  # val.jsonl: in data prepared since it exists
                with_retries(c.log_artifact, run_id, str(Path(val_dir) / f), "data")
    with mlflow.start_run(run_id=run_id):
        info = with_retries(log_generate_model, Path(model_dir), example_prompt)
    ensure_registered_model(name, redact_text(model_description or f"lmforge model {name}"))
    version = with_retries(c.create_model_version, name, source=info.model_uri, run_id=run_id,
                           tags={k: redact_text(str(v)) for k, v in tags.items()},
                           description=redact_text(description),
                           model_id=info.model_id)
    with_retries(c.set_registered_model_alias, name, alias, version.version)
    with_retries(c.set_tag, run_id, "model_version", str(version.version))
    return str(version.version), False


VAL_ARTIFACT_MAX_BYTES = 64 << 20  # val shards up to this size travel with the run (promotion elsewhere)


def set_tags(run_id: str, tags: dict) -> None:
    c = client()
    for k, v in tags.items():
        with_retries(c.set_tag, run_id, k, redact_text(str(v)))


def fetch_model_dir(uri: str, dest: Path | None = None, quiet: bool = False) -> Path:
    """Download `models:/NAME@ALIAS` (or models:/NAME/VERSION) and return the exported model directory in it.
    quiet: without MLflow's "Downloading artifacts" progress bar (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, read
    when the download starts) and its info lines: the CLI's stderr keeps lmforge's own lines only."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    dest = Path(dest or tempfile.mkdtemp(prefix="lmforge-model-"))
    try:
        with _quiet_mlflow(quiet):
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as exc:  # mlflow raises MlflowException / RestException with long bodies
        raise LmforgeError(f"cannot fetch {uri} from {redact_text(tracking_uri())}: "
                           f"{redact_text(str(exc).splitlines()[0][:200])}",
                           hint="check the name and alias (`lmforge runs`), and MLFLOW_TRACKING_URI") from None
    from lmforge.registry.pyfunc import model_dir_in

    return confined_model_dir(uri, root, model_dir_in(root))


def confined_model_dir(uri: str, root: Path, model_dir: Path) -> Path:
    """`model_dir` if it lies inside the downloaded version `root`, judged on real paths: the `MLmodel` file names
    the artifact's path, and whoever can write the registry's artifact store writes that file (`../../etc`, an
    absolute path, or a symlink out would make the runtime read the worker's files)."""
    real_root, real = os.path.realpath(root), os.path.realpath(model_dir)
    if os.path.commonpath([real_root, real]) != real_root:
        raise LmforgeError(f"{uri}: its MLmodel names the model directory {str(model_dir)!r}, outside the "
                           "downloaded version", hint="the registered version is malformed or malicious; "
                                                      "register the model again with `lmforge run`")
    return model_dir


@contextlib.contextmanager
def _quiet_mlflow(quiet: bool):
    if not quiet:
        yield
        return
    import logging

    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if before is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = before


def _lmforge_experiments(c) -> list[str]:
    return [e.experiment_id for e in c.search_experiments() if e.name.startswith("lmforge-")]


def recent_runs(limit: int = 10) -> list[dict]:
    """The newest runs across lmforge experiments: metrics, and the registered version each made with the
    aliases that point at it now."""
    import datetime

    c = client()
    exps = _lmforge_experiments(c)
    if not exps:
        return []
    runs = c.search_runs(exps, order_by=["attributes.start_time DESC"], max_results=limit)
    aliases: dict[str, dict[str, list[str]]] = {}
    def model_of(run) -> str | None:  # runs before the `model` tag carried the model's name as `preset`
        return run.data.tags.get("model") or run.data.tags.get("preset")

    for name in {model_of(r) for r in runs if r.data.tags.get("model_version")}:
        try:
            got = c.get_registered_model(name).aliases
        except Exception:  # noqa: BLE001 - deleted since
            got = {}
        for alias, version in got.items():
            aliases.setdefault(name, {}).setdefault(str(version), []).append(alias)
    out = []
    for r in runs:
        name, version = model_of(r), r.data.tags.get("model_version")
        out.append({"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                    "start": datetime.datetime.fromtimestamp(r.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
                    "model": name, "version": version,
                    "aliases": sorted(aliases.get(name, {}).get(version, [])) if version else [],
                    "metrics": dict(r.data.metrics)})
    return out


def resolve_run_id(prefix: str) -> str:
    """The full id of the one lmforge run whose id starts with `prefix` (what `lmforge runs` shows)."""
    c = client()
    prefix = prefix.strip().lower()
    if len(prefix) == 32:
        return prefix
    exps = _lmforge_experiments(c)
    matches, token = [], None
    while exps:
        page = c.search_runs(exps, max_results=1000, page_token=token)
        matches += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
        token = page.token
        if not token:
            break
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LmforgeError(f"no lmforge run id starts with {prefix!r} at {tracking_uri()}",
                           hint="`lmforge runs` lists run ids (any unique prefix works)")
    raise LmforgeError(f"{len(matches)} runs start with {prefix!r}: {', '.join(m[:16] for m in matches[:5])}",
                       hint="give a few more characters of the id")
