"""`lmforge doctor`: will the deployments in prefect.yaml actually run, and end where they should? One line per
check; each failing line says its fix.

Server-side (the Prefect server PREFECT_API_URL names): the API answers and its version; each work pool exists,
is not paused, and a worker has polled it recently (its heartbeat); each GPU pool has its global concurrency
limit (tasks/slots.py); each deployment exists on the pool prefect.yaml names, with its concurrency limit, no run
left Late, parameters that make a valid config, and its schedule on or off; the late-run automations.
Host-side (the machine and environment doctor runs in: run it as the worker's user, in its environment): MLflow
tracking answers and the registry takes a write; the artifacts directory is writable with free disk; onnxruntime's
providers against the devices the checked deployments need (CUDA must actually load, lmforge/runtime/session.py).

`--pool NAME` checks one pool and its deployments, and this host as one of its workers. `warn` lines do not fail
doctor: they say what would fail once a schedule is turned on. Prefect and onnxruntime are imported lazily."""
from __future__ import annotations

import datetime
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from lmforge.ops.deployments import Deployment, gpu_pools, pools
from lmforge.core.errors import LmforgeError

WORKER_WINDOW_S = 300.0
MIN_FREE_GB = 2.0
MLFLOW_PROBE = "lmforge-doctor-probe"


@dataclass
class Check:
    check: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.check}: {self.detail}"
        return text + (f" (fix: {self.fix})" if self.fix and self.status in ("fail", "warn") else "")

    def as_dict(self) -> dict:
        return asdict(self)


def passed(checks: list[Check]) -> bool:
    return not any(c.status == "fail" for c in checks)


def run_checks(deployments: list[Deployment], automations: list[dict], pool: str | None = None,
               worker_window_s: float = WORKER_WINDOW_S, min_free_gb: float = MIN_FREE_GB) -> list[Check]:
    if pool is not None and pool not in pools(deployments):
        raise LmforgeError(f"prefect.yaml names no work pool {pool!r}", hint="pools: " + ", ".join(pools(deployments)))
    checked = [d for d in deployments if pool is None or d.pool == pool]
    checks = [api := prefect_api()]
    if api.status == "ok":
        checks += work_pools(checked, worker_window_s) + gpu_slots(checked) + deployment_checks(checked)
        checks += alert_automations(automations)
    else:
        checks.append(Check("prefect", "skip", "pools, workers, deployments and automations not checked: no API"))
    return checks + [mlflow_registry(), artifacts_dir(min_free_gb), devices(checked, pool, deployments)]


# -- the Prefect server ------------------------------------------------------------------------------------------

def prefect_api() -> Check:
    import prefect
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    from lmforge.ops.orchestration import check_api

    url = PREFECT_API_URL.value()
    if not url:
        return Check("prefect api", "fail", "PREFECT_API_URL is not set: a schedule needs a server that stays up",
                     "prefect server start; then prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        check_api(url)
    except LmforgeError as exc:
        return Check("prefect api", "fail", exc.message, exc.hint or "")
    with get_client(sync_client=True) as client:
        server = str(client.api_version())
    mine = prefect.__version__
    if _major_minor(server) < _major_minor(mine):
        return Check("prefect api", "fail", f"{url}: server {server} is older than this client {mine}",
                     f"upgrade the server to prefect {mine}")
    return Check("prefect api", "ok", f"{url} answers, server {server}, client {mine}")


def _major_minor(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _ago(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def work_pools(deployments: list[Deployment], worker_window_s: float) -> list[Check]:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    out = []
    gpu = set(gpu_pools(deployments))
    now = datetime.datetime.now(datetime.timezone.utc)
    with get_client(sync_client=True) as client:
        for pool in pools(deployments):
            host = " on a GPU host" if pool in gpu else ""
            try:
                wp = client.read_work_pool(pool)
            except ObjectNotFound:
                out.append(Check(f"pool {pool}", "fail", f"work pool {pool} does not exist: its deployments cannot "
                                 "be deployed and their runs have nowhere to go",
                                 f"prefect work-pool create {pool} --type process"))
                continue
            if wp.is_paused:
                out.append(Check(f"pool {pool}", "fail", f"work pool {pool} is paused: its runs stay Scheduled",
                                 f"prefect work-pool resume {pool}"))
            else:
                out.append(Check(f"pool {pool}", "ok", f"work pool {pool} exists ({wp.type})"))
            ages = sorted((now - w.last_heartbeat_time).total_seconds()
                          for w in client.read_workers_for_work_pool(pool) if w.last_heartbeat_time)
            recent = [a for a in ages if a <= worker_window_s]
            if recent:
                out.append(Check(f"worker {pool}", "ok", f"{len(recent)} worker(s) polled {pool} in the last "
                                 f"{_ago(worker_window_s)}, the latest {recent[0]:.0f} s ago"))
            else:
                last = f" (the last one {ages[0] / 60:.0f} min ago)" if ages else ""
                out.append(Check(f"worker {pool}", "fail", f"no worker has polled {pool} in the last "
                                 f"{_ago(worker_window_s)}{last}: its runs go Late",
                                 f"prefect worker start --pool {pool}{host}"))
    return out


def gpu_slots(deployments: list[Deployment]) -> list[Check]:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    out = []
    with get_client(sync_client=True) as client:
        for pool in gpu_pools(deployments):
            try:
                limit = client.read_global_concurrency_limit_by_name(pool)
            except ObjectNotFound:
                out.append(Check(f"gpu slots {pool}", "fail", f"no global concurrency limit named {pool}: two "
                                 "deployments' runs can train on one GPU at once", "lmforge schedule setup"))
                continue
            if not limit.active:
                out.append(Check(f"gpu slots {pool}", "fail", f"the global concurrency limit {pool} is disabled",
                                 f"prefect gcl enable {pool}"))
            else:
                out.append(Check(f"gpu slots {pool}", "ok", f"global concurrency limit {pool}: {limit.limit} "
                                 f"slot(s), {limit.active_slots} in use"))
    return out


def deployment_checks(deployments: list[Deployment]) -> list[Check]:
    from prefect import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateName)
    from prefect.exceptions import ObjectNotFound

    out = []
    with get_client(sync_client=True) as client:
        for d in deployments:
            name = f"deployment {d.full_name}"
            redeploy = f"prefect deploy --name {d.name} (from the repository root)"
            try:
                dep = client.read_deployment_by_name(d.full_name)
            except ObjectNotFound:
                out.append(Check(name, "fail", "not on the server", "prefect deploy --all (from the repository root)"))
                continue
            active = not dep.paused and any(s.active for s in dep.schedules)
            problems = []
            if (dep.work_pool_name or "") != d.pool:
                problems.append(Check(name, "fail", f"on work pool {dep.work_pool_name or 'none (lmforge serve)'}, "
                                      f"but prefect.yaml says {d.pool}", redeploy))
            limit = dep.global_concurrency_limit.limit if dep.global_concurrency_limit else None
            if d.concurrency_limit is not None and limit != d.concurrency_limit:
                problems.append(Check(name, "fail", f"concurrency limit {limit} on the server, {d.concurrency_limit} "
                                      "in prefect.yaml: a second run can start while the first still trains",
                                      redeploy))
            late = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Late"]))))
            if late:
                oldest = min(r.expected_start_time or r.created for r in late)
                problems.append(Check(name, "fail", f"{len(late)} run(s) Late, the oldest due at "
                                      f"{oldest:%Y-%m-%d %H:%M} UTC: no worker takes them from {dep.work_pool_name}",
                                      f"prefect worker start --pool {dep.work_pool_name}"))
            problems += _config(d, name, active)
            if problems:
                out += problems
                continue
            schedules = ", ".join(f"{getattr(s.schedule, 'cron', s.schedule)} {getattr(s.schedule, 'timezone', '')}"
                                  .strip() for s in dep.schedules) or "no schedule"
            state = "on" if active else f"off (`lmforge schedule on {d.name}` turns it on)"
            out.append(Check(name, "ok", f"on {dep.work_pool_name}, one run at a time ({limit or 'no limit'}), "
                             f"schedule {schedules} {state}"))
    return out


def _config(d: Deployment, name: str, active: bool) -> list[Check]:
    """The deployment's parameters as the flow will load them; a config that fails fails every run."""
    from lmforge.core.config import load_config

    try:
        cfg = load_config(d.parameters.get("preset"), d.parameters.get("overrides") or {})
    except LmforgeError as exc:
        fix = exc.hint.removeprefix("--set ") if exc.hint else "fix the preset"  # a --set is an overrides key here
        return [Check(name, "fail" if active else "warn", f"its parameters make no valid config, so every run "
                      f"fails: {exc.message}", f"put {fix} in its overrides in prefect.yaml, then "
                      f"prefect deploy --name {d.name}")]
    if cfg.train.device == "cuda" and not d.gpu:
        return [Check(name, "fail", f"train.device = cuda, but it is not tagged gpu on {d.pool}",
                      "tag it gpu and put it on a GPU pool in prefect.yaml, then prefect deploy --all")]
    return []


def alert_automations(automations: list[dict]) -> list[Check]:
    from prefect import get_client

    out = []
    with get_client(sync_client=True) as client:
        for spec in automations:
            found = client.read_automations_by_name(spec["name"])
            if not found:
                out.append(Check("alerts", "fail", f"no automation {spec['name']!r}: what it alerts on goes unnoticed",
                                 "LMFORGE_ALERT_WEBHOOK=https://your.hook/url lmforge schedule setup"))
            elif not found[0].enabled:
                out.append(Check("alerts", "fail", f"automation {spec['name']!r} is disabled",
                                 f"prefect automation enable {found[0].id}"))
            elif spec["trigger"].get("posture") == "Proactive":
                out.append(Check("alerts", "ok", f"automation {spec['name']!r} enabled (after "
                                 f"{found[0].trigger.within.total_seconds():g} s)"))
            else:
                out.append(Check("alerts", "ok", f"automation {spec['name']!r} enabled (on each event)"))
    return out


# -- this host -----------------------------------------------------------------------------------------------------

def mlflow_registry() -> Check:
    from lmforge.registry import tracking
    from lmforge.core.redact import redact_text

    uri = redact_text(tracking.tracking_uri())
    try:
        tracking.check_tracking_server()
    except LmforgeError as exc:
        return Check("mlflow", "fail", exc.message, exc.hint or "")
    client = tracking.client()
    try:
        try:
            client.delete_registered_model(MLFLOW_PROBE)  # left by an interrupted doctor
        except Exception:
            pass
        client.create_registered_model(MLFLOW_PROBE, description="written and deleted by lmforge doctor")
        client.delete_registered_model(MLFLOW_PROBE)
    except Exception as exc:
        return Check("mlflow", "fail", f"the registry at {uri} takes no write: {redact_text(str(exc).splitlines()[0])}",
                     "give the worker's user write access to MLFLOW_TRACKING_URI: every run registers there")
    return Check("mlflow", "ok", f"tracking at {uri} answers, the registry takes a write")


def artifacts_dir(min_free_gb: float) -> Check:
    from lmforge.core.layout import artifacts_root

    root = artifacts_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-") as probe:
            probe.write(b"lmforge doctor")
            probe.flush()
    except OSError as exc:
        return Check("artifacts", "fail", f"{root} is not writable: {exc.strerror or exc}",
                     "LMFORGE_ARTIFACTS=a directory the worker's user can write")
    free = shutil.disk_usage(root).free / 2**30
    if free < min_free_gb:
        return Check("artifacts", "fail", f"{root}: {free:.1f} GiB free, under {min_free_gb:g} GiB",
                     "free some space, or point LMFORGE_ARTIFACTS at a larger disk")
    return Check("artifacts", "ok", f"{root} writable, {free:.1f} GiB free")


def devices(checked: list[Deployment], pool: str | None, everything: list[Deployment]) -> Check:
    """onnxruntime's providers here against the devices the checked deployments need. With --pool, this host is
    one of that pool's workers: a GPU pool (or a deployment with train.device = cuda) needs CUDA to load here."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    listed = "CUDAExecutionProvider" in providers
    loads = listed and cuda_loads()
    here = f"onnxruntime {ort.__version__}: {', '.join(providers)}; CUDA {'loads' if loads else 'not available'}"
    needs = [d.name for d in checked if d.gpu or _wants_cuda(d)]
    if pool is None or not needs:  # this host's role is unknown (or needs no GPU): say where the GPU check runs
        gpu = gpu_pools(everything) if pool is None and not loads else []
        return Check("devices", "ok", here + (f" (on a GPU host: lmforge doctor --pool {gpu[0]})" if gpu else ""))
    if not listed:
        return Check("devices", "fail", f"{', '.join(needs)} need CUDA on {pool}'s hosts, but here {here}",
                     'pip install -e ".[pipeline,cuda]" (onnxruntime-gpu in place of onnxruntime) on this GPU host')
    if not loads:
        return Check("devices", "fail", f"onnxruntime lists CUDA but cannot load it here ({here})",
                     "install the CUDA 12 and cuDNN 9 libraries onnxruntime-gpu needs, or put them on LD_LIBRARY_PATH")
    import torch

    if not torch.cuda.is_available():
        return Check("devices", "fail", f"{here}, but torch {torch.__version__} sees no CUDA device: training "
                     "would run on the CPU", "install a CUDA build of torch==2.13.0 on this GPU host")
    return Check("devices", "ok", f"{here}; torch sees {torch.cuda.device_count()} CUDA device(s)")


def _wants_cuda(d: Deployment) -> bool:
    from lmforge.core.config import load_config

    try:
        return load_config(d.parameters.get("preset"), d.parameters.get("overrides") or {}).train.device == "cuda"
    except LmforgeError:
        return False


def cuda_loads() -> bool:
    """Whether onnxruntime's CUDA provider actually loads here: a one-node model through the runtime's own
    session code, which falls back to the CPU when the CUDA libraries are missing."""
    import onnx
    from onnx import TensorProto, helper

    from lmforge.runtime.session import create_session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tempfile.TemporaryDirectory(prefix="lmforge-doctor-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        _, provider = create_session(str(path), device="cuda")
    return provider == "CUDAExecutionProvider"
