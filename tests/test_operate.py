"""Operating the deployments on a schedule, on real parts: a `prefect server start` of its own (its late-runs
service marks a run Late 5 s past due; a deployment run refused a concurrency slot is retried every 2 s),
prefect.yaml deployed with `prefect deploy --all`, real process workers, an MLflow SQLite registry and a loopback
HTTP receiver standing in for the alert webhook. Module fixtures play one story on that server, in this order,
and record what each step saw (the tests assert on those records, never on state a later step moves, so each
passes alone and in any order):

- `lmforge doctor` flags a pool no worker polls, with its fix, and passes once a worker does;
- README.md's nightly block runs as written (the receiver's URL for the webhook, TINY overrides for the run);
  while its deployment run trains, a second run of the same deployment waits (AwaitingConcurrencySlot) and
  starts after it ends; the first becomes champion over the gate, the weak second is kept, and why is on its
  version and in its Prefect summary;
- `lmforge serve` serves a deployment with prefect.yaml's schedule, runs it with no worker (a run whose
  comparison is refused completes, kept, with the reason), and stops on Ctrl-C with the deployment paused;
- meanwhile a run left Late and a run left Pending each fire their automation's webhook, and `lmforge doctor
  --pool lmforge-gpu` (the pool paused for it) flags it paused, polled by no worker, with a run Late;
- a run from the GPU pool trains holding a slot of the pool's global concurrency limit (the CPU pool's runs
  none), and, better than the champion, replaces it;
- each promotion decision (promoted, kept, refused, a person's rollback) POSTs one alert with its reason and scores;
- a run that fails inside a task and one whose process is killed (Crashed) each POST one alert.
The nightly run is followed from the terminal with `lmforge runs --follow`, as README's block does."""
from __future__ import annotations

import http.server
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, TINY, readme_commands
from test_deploy import PREFECT, free_port, isolated_env, stop, wait_http
from test_deploy import prefect as prefect_cli

NIGHTLY = readme_commands("### Nightly retraining, from on to a new champion")
CPU, GPU = "lmforge-cpu", "lmforge-gpu"
SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "5",
                   "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1",
                   "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2"}
ONE_THREAD = {"train.threads": 1}  # tiny models on a busy 2-core machine
# val loss against the unigram entropy of the windows (~3.20): 150 steps ~3.00, 250 ~2.75; 4 steps ~4.43
AUTO = {"promote.auto": True, "promote.gate": 0.05}
FIRST = {**TINY, **ONE_THREAD, **AUTO, "train.max_steps": 150, "train.eval_interval": 75, "train.lr": 3e-3}
WEAK = {**TINY, **ONE_THREAD, **AUTO, "train.max_steps": 4, "train.eval_interval": 4}
BETTER = {**FIRST, "train.max_steps": 250, "train.eval_interval": 125}
TERMINAL = {"Completed", "Failed", "Crashed", "Cancelled"}


class Receiver:
    """A loopback HTTP server that records every JSON POST: the webhook the automations call."""

    def __init__(self):
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                              "json": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lmforge-alerts"

    def posts_for(self, flow_run_id) -> list[dict]:
        return [p for p in self.posts if p["json"].get("flow_run_id") == str(flow_run_id)]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Ops:
    """The module's server, receiver and background processes."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.env = {**isolated_env(tmp, port), "PREFECT_API_URL": self.url, **SERVER_SETTINGS}
        self.receiver = Receiver()
        self.background: dict[str, tuple[subprocess.Popen, object]] = {}
        self.server = self.spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        wait_http(f"{self.url}/health", self.server, 90)

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        # SIGINT back to its default in the child: a test run started in the background of a shell without job
        # control (`pytest &`, as a CI script may) ignores SIGINT, the child would inherit that, and the Ctrl-C the
        # served fixture sends would do nothing
        proc = subprocess.Popen(cmd, env=env or self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)
        self.background[name] = (proc, log)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-4000:]

    @contextmanager
    def client(self):
        """A Prefect client on this module's server (another module's test harness may be this process's)."""
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def start_worker(self, pool: str) -> None:
        """A process worker on `pool`, once it has polled (its heartbeat is on the server)."""
        name = f"worker-{pool}"
        if name not in self.background:
            self.spawn(name, [PREFECT, "worker", "start", "--pool", pool])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with self.client() as c:
                if any(w.last_heartbeat_time for w in c.read_workers_for_work_pool(pool)):
                    return
            assert self.background[name][0].poll() is None, self.log(name)
            time.sleep(1)
        raise TimeoutError(f"no heartbeat from the worker on {pool}:\n{self.log(name)}")

    def stop(self, name: str) -> None:
        proc, log = self.background.pop(name)
        stop(proc)
        log.close()

    def close(self) -> None:
        for name in [n for n in self.background if n != "server"] + ["server"]:
            self.stop(name)
        self.receiver.server.shutdown()


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    """A server with both pools and prefect.yaml's six deployments; no worker yet."""
    o = Ops(tmp_path_factory.mktemp("operate"))
    try:
        for pool in (CPU, GPU):
            prefect_cli(o.env, "work-pool", "create", pool, "--type", "process")
        prefect_cli(o.env, "deploy", "--all", timeout=300)
        yield o
    finally:
        o.close()


def lmforge(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def doctor(env: dict, *args: str) -> tuple[int, dict]:
    out = lmforge(env, "doctor", "--json", *args)
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


def failing(report: dict) -> dict[str, dict]:
    return {c["check"]: c for c in report["checks"] if c["status"] == "fail"}


def wait_final(ops: Ops, run_id, timeout: float = 400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ops.client() as c:
            state = c.read_flow_run(run_id).state
        if state.name in TERMINAL:
            return state
        time.sleep(1)
    raise TimeoutError(f"flow run {run_id} still {state.name} after {timeout:.0f} s")


def states(ops: Ops, run_id) -> list:
    with ops.client() as c:
        return sorted(c.read_flow_run_states(run_id), key=lambda s: s.timestamp)


def version_of(flow_run_id):
    """The registered jokes-char version a flow run made (its MLflow run carries the flow run's id); its number as
    a string, as the registry's tags and aliases hold it."""
    from lmforge.registry import tracking

    from lmforge.registry.review import facts

    c = tracking.client()
    for mv in c.search_model_versions("name='jokes-char'"):
        if c.get_run(mv.run_id).data.tags.get("prefect_flow_run_id") == str(flow_run_id):
            return SimpleNamespace(version=str(mv.version), tags=facts(mv))
    raise AssertionError(f"no version registered by flow run {flow_run_id}")


def artifact(ops: Ops, flow_run_id, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with ops.client() as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                                                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert found, f"flow run {flow_run_id} has no artifact {key}"
    return found[0].data


def aliases(ops: Ops) -> dict:
    """jokes-char's aliases now, in this module's registry: the fixture that moved them keeps this snapshot (later
    runs and a rollback move them again)."""
    from mlflow import MlflowClient

    uri = ops.env["MLFLOW_TRACKING_URI"]
    model = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model("jokes-char")
    return {k: str(v) for k, v in model.aliases.items()}


@pytest.fixture
def registry(ops, monkeypatch):
    """This module's MLflow store, as the workers write it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ops.env["MLFLOW_TRACKING_URI"])


@pytest.fixture(scope="module")
def first_doctor(ops):
    """`lmforge doctor` on the server as deployed (no worker, nothing set up), `schedule setup` without a webhook
    and with one, a CPU worker, then `doctor --pool lmforge-cpu` again: the story's first step."""
    before = doctor(ops.env)
    unset = lmforge(ops.env, "schedule", "setup")
    setup = lmforge({**ops.env, "LMFORGE_ALERT_WEBHOOK": ops.receiver.url}, "schedule", "setup")
    ops.start_worker(CPU)
    return SimpleNamespace(before=before, unset=unset, setup=setup, after=doctor(ops.env, "--pool", CPU))


def test_doctor_flags_a_pool_without_a_worker_and_passes_once_one_polls(first_doctor):
    code, before = first_doctor.before
    assert code == 2 and before["ok"] is False
    worker = failing(before)[f"worker {CPU}"]
    assert worker["detail"].startswith(f"no worker has polled {CPU} in the last 5 min")
    assert worker["fix"] == f"prefect worker start --pool {CPU}"
    # nothing set up yet, no worker anywhere; every other check passes
    assert set(failing(before)) == {f"worker {CPU}", f"worker {GPU}", f"gpu slots {GPU}", "alerts"}
    assert failing(before)[f"gpu slots {GPU}"]["fix"] == "lmforge schedule setup"
    deployed = [c for c in before["checks"] if c["check"].startswith("deployment ")]
    assert len(deployed) == 6 and all("one run at a time (1)" in c["detail"] for c in deployed if c["status"] == "ok")
    gpt2 = next(c for c in deployed if c["check"] == "deployment lmforge-pipeline/jokes-gpt2")
    assert gpt2["status"] == "warn" and "model.pretrained" in gpt2["fix"]  # its schedule is off: a warning

    unset = first_doctor.unset  # no webhook to send alerts to: one line, nothing written
    assert unset.returncode == 2 and unset.stderr.count("\n") == 1 and "LMFORGE_ALERT_WEBHOOK" in unset.stderr
    setup = first_doctor.setup
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert f"global concurrency limit {GPU}: created, limit 1" in setup.stdout
    code, after = first_doctor.after  # once the CPU worker has polled
    assert code == 0 and after["ok"] is True, failing(after)
    assert next(c for c in after["checks"] if c["check"] == f"worker {CPU}")["status"] == "ok"


def run_nightly_block(ops: Ops) -> dict:
    """README's nightly block, line by line (each must exit 0 without a traceback). Its deployment run is created
    with TINY overrides; `lmforge runs --follow` follows it in the background; once it is Running a second, weak
    run of the same deployment is created, and both states are sampled until the first ends."""
    env, outputs, record = dict(ops.env), {}, {}
    for line in NIGHTLY:
        words = shlex.split(line)
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = ops.receiver.url if key == "LMFORGE_ALERT_WEBHOOK" else value
            continue
        cmd = [sys.executable, "-m", "lmforge.cli", *words[1:]] if words[0] == "lmforge" else [PREFECT, *words[1:]]
        if words[:3] == ["prefect", "deployment", "run"]:
            cmd += ["--params", json.dumps({"overrides": FIRST})]
        if words[:3] == ["lmforge", "runs", "--follow"]:
            record = run_two(ops, env, cmd)
            outputs[line] = record.pop("output")
            continue
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        text = out.stdout + out.stderr
        assert out.returncode == 0, f"{line}\n{text[-3000:]}"
        assert "Traceback" not in text, f"{line}\n{text[-3000:]}"
        outputs[line] = text
    return {"outputs": outputs, **record}


def run_two(ops: Ops, env: dict, cmd: list[str]) -> dict:
    watch = ops.spawn("nightly-run", cmd, env)  # `lmforge runs --follow`: the run created by the line before
    with ops.client() as c:
        dep = c.read_deployment_by_name("lmforge-pipeline/jokes-char")
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline, first = time.monotonic() + 300, None
    while first is None:
        assert time.monotonic() < deadline and watch.poll() is None, ops.log("nightly-run")
        with ops.client() as c:
            runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
        first = next((r for r in runs if r.state.name == "Running"), None)
        time.sleep(0.5)
    with ops.client() as c:
        second = c.create_flow_run_from_deployment(dep.id, parameters={"overrides": WEAK})
    while_first_ran = []  # the second run's state each time the first was seen Running
    while True:
        with ops.client() as c:
            a, b = c.read_flow_run(first.id).state, c.read_flow_run(second.id).state
        if a.name != "Running":
            break
        while_first_ran.append(b.name)
        time.sleep(0.5)
    assert watch.wait(400) == 0, ops.log("nightly-run")
    output = ops.log("nightly-run")
    ops.stop("nightly-run")
    wait_final(ops, second.id)
    return {"first": first.id, "second": second.id, "while_first_ran": while_first_ran, "output": output}


@pytest.fixture(scope="module")
def nightly(ops, first_doctor):
    """README's nightly block (after the first doctor's step), the aliases it left, then `lmforge schedule off
    jokes-char` and the deployment's schedules as that left them (`lmforge serve` deletes the deployment later)."""
    ops.start_worker(CPU)
    try:
        record = run_nightly_block(ops)
        record["aliases"] = aliases(ops)
    finally:  # off even when the block failed half-way: no 02:00 run later in the module
        off = lmforge(ops.env, "schedule", "off", "jokes-char")
    with ops.client() as c:
        active = [s.active for s in c.read_deployment_by_name("lmforge-pipeline/jokes-char").schedules]
    return {**record, "off": off, "active_after_off": active}


def test_readme_nightly_block_runs_as_written(nightly, registry):
    out = nightly["outputs"]
    assert "fires after 900 s" in out["lmforge schedule setup"]  # automations.yaml's default threshold
    assert not [line for line in out["lmforge doctor --pool lmforge-cpu"].splitlines() if line.startswith("fail")]
    assert "lmforge-pipeline/jokes-char: schedule 0 2 * * * UTC on" in out["lmforge schedule on jokes-char"]
    assert "Created flow run" in out["prefect deployment run lmforge-pipeline/jokes-char"]
    followed = out["lmforge runs --follow"]  # the run's training, from the terminal, to its end
    first = version_of(nightly["first"]).version
    assert followed.startswith("following flow run ") and followed.rstrip().endswith(": Completed")
    assert "step 75  train " in followed and "step 150  train " in followed and "sample at step 150: " in followed
    assert f"registered jokes-char version {first} (alias candidate)" in followed
    assert f"promotion of jokes-char v{first}: promoted: first champion: " in followed
    assert followed.index("registered jokes-char") < followed.index("promotion of jokes-char")
    assert "champion" in out["lmforge runs --limit 3"]
    assert out["lmforge generate --model models:/jokes-char@champion --prompt Why"].startswith("Why")
    off = nightly["off"]
    assert off.returncode == 0 and "schedule 0 2 * * * UTC off" in off.stdout, off.stderr[-3000:]
    assert nightly["active_after_off"] == [False]


def test_a_second_run_of_a_deployment_waits_for_the_first(ops, nightly):
    first, second = states(ops, nightly["first"]), states(ops, nightly["second"])
    assert first[-1].name == second[-1].name == "Completed"
    assert nightly["while_first_ran"], "the first run ended before the second could be watched"
    assert set(nightly["while_first_ran"]) <= {"Scheduled", "AwaitingConcurrencySlot", "Late"}
    assert "AwaitingConcurrencySlot" in [s.name for s in second]
    first_done = next(s.timestamp for s in first if s.name == "Completed")
    second_started = next(s.timestamp for s in second if s.name == "Running")
    assert second_started >= first_done


def test_deployment_runs_promote_only_a_winner_and_record_why(ops, nightly, registry):
    first, second = version_of(nightly["first"]), version_of(nightly["second"])
    assert first.tags["promotion_decision"] == "promoted"
    assert first.tags["promotion_reason"].startswith("first champion: its ")
    assert first.tags["promotion_by"].startswith("lmforge-pipeline/jokes-char (flow run ")
    assert second.tags["promotion_decision"] == "kept"
    assert second.tags["promotion_reason"].startswith("candidate does not beat champion by more than 0.01 bits per byte")
    assert second.tags["promotion_previous_champion"] == first.version
    assert float(second.tags["promotion_candidate_bpb"]) > float(second.tags["promotion_champion_bpb"])
    assert float(second.tags["promotion_candidate_loss"]) > float(second.tags["promotion_champion_loss"])
    assert nightly["aliases"] == {"champion": first.version, "candidate": second.version}
    summary = artifact(ops, nightly["second"], "run-jokes-char")
    assert "## Promotion: kept" in summary and f"champion after this run: version {first.version}" in summary
    assert f"| v{second.version} | candidate |" in artifact(ops, nightly["second"], "promotion-jokes-char")


class StuckRuns:
    """Alerts after 10 s (`schedule setup --stuck-after 10`), then a run of the imdb-gpt deployment left Late (no
    worker polls the GPU pool yet) and one of tinystories-lstm set Pending, as a worker does when it takes a run,
    that nothing starts."""

    def __init__(self, ops: Ops):
        from prefect.states import Pending

        self.ops = ops
        self.setup = lmforge({**ops.env, "LMFORGE_ALERT_WEBHOOK": ops.receiver.url}, "schedule", "setup",
                             "--stuck-after", "10")
        assert self.setup.returncode == 0, self.setup.stderr[-3000:]
        with ops.client() as c:
            self.late = c.create_flow_run_from_deployment(c.read_deployment_by_name("lmforge-pipeline/imdb-gpt").id)
            self.pending = c.create_flow_run_from_deployment(
                c.read_deployment_by_name("lmforge-pipeline/tinystories-lstm").id)
            c.set_flow_run_state(self.pending.id, Pending())
        self.cancelled = False
        self.seen: SimpleNamespace | None = None

    def observe(self) -> SimpleNamespace:
        """Once, while the runs are still stuck and no worker polls the GPU pool (gpu_run calls it before cancel()):
        the alerts of both runs (waited for up to 180 s), the runs' states after they fired, and `lmforge doctor
        --pool lmforge-gpu` run with the pool paused and the jokes-gpt2 schedule on (both put back after)."""
        if self.seen is None:
            assert not self.cancelled, "observe() after cancel(): the runs are no longer stuck"
            ops, deadline = self.ops, time.monotonic() + 180
            while not (ops.receiver.posts_for(self.late.id) and ops.receiver.posts_for(self.pending.id)) \
                    and time.monotonic() < deadline:  # the test asserts they came
                time.sleep(1)
            seen = SimpleNamespace(late_posts=ops.receiver.posts_for(self.late.id),
                                   pending_posts=ops.receiver.posts_for(self.pending.id),
                                   all_posts=list(ops.receiver.posts))
            with ops.client() as c:  # after the alerts: the runs really stayed there
                seen.late_state, seen.pending_state = (c.read_flow_run(r.id).state.name
                                                       for r in (self.late, self.pending))
            seen.doctor = self.paused_doctor()
            self.seen = seen
        return self.seen

    def paused_doctor(self) -> subprocess.CompletedProcess:
        from prefect.client.schemas.actions import WorkPoolUpdate

        from lmforge.ops.deployments import load_deployments
        from lmforge.ops.schedule import set_active

        gpt2 = next(d for d in load_deployments() if d.name == "jokes-gpt2")
        with self.ops.client() as c:  # the pool paused, and a schedule on whose config cannot load
            c.update_work_pool(GPU, WorkPoolUpdate(is_paused=True))
            set_active(gpt2, True)
        try:
            return lmforge(self.ops.env, "doctor", "--pool", GPU)
        finally:
            with self.ops.client() as c:
                c.update_work_pool(GPU, WorkPoolUpdate(is_paused=False))
                set_active(gpt2, False)

    def cancel(self) -> None:
        """Before a worker polls the GPU pool (it would take them)."""
        from prefect.states import Cancelled

        if not self.cancelled:
            with self.ops.client() as c:
                for run in (self.late, self.pending):
                    c.set_flow_run_state(run.id, Cancelled(), force=True)
            self.cancelled = True


@pytest.fixture(scope="module")
def stuck(ops, nightly):
    """After the nightly block (its `schedule setup` puts back the 900 s threshold); `served` runs while the
    alerts' clocks tick, before anything calls observe()."""
    runs = StuckRuns(ops)
    try:
        yield runs
    finally:
        runs.cancel()


@pytest.fixture(scope="module")
def served(ops, nightly, stuck):
    """`lmforge serve jokes-char`: refused while the deployment is on its pool, then served once it is deleted; one
    run on different data (the contiguous split: its comparison with the champion is unfair); then Ctrl-C."""
    refused = lmforge(ops.env, "serve", "jokes-char")
    prefect_cli(ops.env, "deployment", "delete", "lmforge-pipeline/jokes-char")
    proc = ops.spawn("serve", [sys.executable, "-m", "lmforge.cli", "serve", "jokes-char"])
    deadline, dep = time.monotonic() + 120, None
    while dep is None:
        assert time.monotonic() < deadline and proc.poll() is None, ops.log("serve")
        time.sleep(1)
        with ops.client() as c:
            found = c.read_deployments()
        dep = next((d for d in found if d.name == "jokes-char" and not d.paused), None)
    with ops.client() as c:
        run = c.create_flow_run_from_deployment(dep.id, parameters={"overrides": {**WEAK, "data.split": "contiguous"}})
    final = wait_final(ops, run.id)
    aliases_then = aliases(ops)  # before gpu_run (which depends on this fixture) moves the champion
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("`lmforge serve` did not stop within 90 s of Ctrl-C; its log:\n" + ops.log("serve"))
    with ops.client() as c:
        after = c.read_deployment(dep.id)
    return {"refused": refused, "deployment": dep, "run": run.id, "final": final, "code": code, "after": after,
            "log": ops.log("serve"), "aliases": aliases_then}


def test_serve_runs_prefect_yamls_schedule_without_a_worker_and_stops_on_ctrl_c(served):
    from lmforge.ops.deployments import load_deployments

    refused = served["refused"]
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is on work pool lmforge-cpu" in refused.stderr and "prefect deployment delete" in refused.stderr
    want, dep = next(d for d in load_deployments() if d.name == "jokes-char"), served["deployment"]
    assert dep.work_pool_name is None
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules] == \
        [(s.cron, s.timezone, True) for s in want.schedules]
    assert dep.parameters == want.parameters and set(dep.tags) == set(want.tags)
    assert dep.global_concurrency_limit.limit == want.concurrency_limit
    assert served["final"].name == "Completed", served["log"]
    assert served["code"] == 0, served["log"]
    assert "stopped serving jokes-char" in served["log"] and served["after"].paused is True


def test_a_refused_comparison_keeps_the_champion_and_the_run_completes(ops, nightly, served, registry):
    champion, kept = version_of(nightly["first"]).version, version_of(served["run"])
    assert kept.tags["promotion_decision"] == "refused"
    reason = kept.tags["promotion_reason"]  # a contiguous split of the corpus: its val text is the champion's train
    assert reason.startswith(f"not compared: jokes-char: cannot compare v{kept.version} with champion v{champion} "
                             "fairly: ")
    assert "trained on different data (contiguous split of corpus" in reason and "--force" in reason
    assert served["aliases"]["champion"] == champion
    assert "## Promotion: refused" in artifact(ops, served["run"], "run-jokes-char")


def test_runs_left_late_or_pending_fire_the_alert_webhook(stuck, served):
    """`served` only so that the serve run goes while the alerts' clocks tick, whatever the order of the tests."""
    seen = stuck.observe()
    assert "fires after 10 s" in stuck.setup.stdout
    late = stuck.late
    assert seen.late_posts and seen.pending_posts, seen.all_posts  # both within 180 s
    alert = seen.late_posts[0]
    assert alert["path"] == "/lmforge-alerts" and alert["content_type"] == "application/json"
    assert alert["json"]["state"] == "Late" and alert["json"]["deployment"] == "lmforge-pipeline/imdb-gpt"
    assert alert["json"]["work_pool"] == GPU and alert["json"]["flow_run"] == late.name
    assert f"has been Late for over 10 s: no worker has taken it from work pool {GPU}" in alert["json"]["text"]
    held = seen.pending_posts[0]["json"]
    assert held["state"] == "Pending" and held["deployment"] == "lmforge-pipeline/tinystories-lstm"
    assert "has been Pending for over 10 s" in held["text"]
    assert (seen.late_state, seen.pending_state) == ("Late", "Pending")  # fired on runs that really stayed there
    report = seen.doctor  # the pool paused, and the jokes-gpt2 schedule on, whose config cannot load
    lines = report.stdout.splitlines()
    assert report.returncode == 2
    assert (f"fail  pool {GPU}: work pool {GPU} is paused: its runs stay Scheduled "
            f"(fix: prefect work-pool resume {GPU})") in lines
    assert (f"fail  worker {GPU}: no worker has polled {GPU} in the last 5 min: its runs go Late "
            f"(fix: prefect worker start --pool {GPU} on a GPU host)") in lines
    assert f"ok    gpu slots {GPU}: global concurrency limit {GPU}: 1 slot(s), 0 in use" in lines
    assert any(line.startswith("fail  deployment lmforge-pipeline/imdb-gpt: 1 run(s) Late") for line in lines)
    assert any(line.startswith("fail  deployment lmforge-pipeline/jokes-gpt2: its parameters make no valid config")
               for line in lines)
    devices = next(line for line in lines if line.startswith("fail  devices: "))
    assert f"need CUDA on {GPU}'s hosts" in devices and 'pip install -e ".[pipeline,cuda]"' in devices


@pytest.fixture(scope="module")
def gpu_run(ops, nightly, served, stuck):
    """A run from a GPU-pool deployment (the imdb-gpt one, here training the jokes preset, BETTER than the
    first nightly run) through a worker on that pool, once the stuck runs there are observed and cancelled; after
    `served` (whose refused comparison is with the nightly champion, which this run replaces). The aliases it
    left (a rollback moves them later)."""
    stuck.observe()
    stuck.cancel()
    ops.start_worker(GPU)
    with ops.client() as c:
        dep = c.read_deployment_by_name("lmforge-pipeline/imdb-gpt")
        run = c.create_flow_run_from_deployment(dep.id, parameters={"preset": "jokes-char", "overrides": BETTER})
    assert wait_final(ops, run.id).name == "Completed", ops.log(f"worker-{GPU}")
    return {"run": run.id, "aliases": aliases(ops)}


def slot_events(ops: Ops, flow_run_id) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    with ops.client() as c:
        return c.read_events(EventFilter(event=EventNameFilter(prefix=["prefect.concurrency-limit."]),
                                         related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"])),
                             limit=50).events


def test_training_on_the_gpu_pool_holds_a_slot_of_its_limit(ops, nightly, served, gpu_run):
    deadline = time.monotonic() + 60  # events reach the server's store in batches
    while len(events := slot_events(ops, gpu_run["run"])) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(e.event for e in events) == ["prefect.concurrency-limit.acquired",
                                              "prefect.concurrency-limit.released"]
    assert {e.resource.get("prefect.resource.name") for e in events} == {GPU}
    assert {e.resource.get("slots-acquired") for e in events} == {"1"}
    for other in (nightly["first"], nightly["second"], served["run"]):  # CPU pool, and `lmforge serve`
        assert slot_events(ops, other) == []


def test_a_later_run_that_wins_replaces_the_champion(ops, nightly, gpu_run, registry):
    first, better = version_of(nightly["first"]), version_of(gpu_run["run"])
    assert better.tags["promotion_decision"] == "promoted"
    assert better.tags["promotion_reason"].startswith("candidate beats champion by more than 0.01 bits per byte")
    assert better.tags["promotion_previous_champion"] == first.version
    assert float(better.tags["promotion_champion_bpb"]) - float(better.tags["promotion_candidate_bpb"]) > 0.01
    assert gpu_run["aliases"]["champion"] == better.version


def decision_posts(ops: Ops, version: str) -> list[dict]:
    return [p["json"] for p in ops.receiver.posts if p["json"].get("model") == "jokes-char"
            and p["json"].get("candidate_version") == version]


@pytest.fixture(scope="module")
def rolled_back(ops, gpu_run):
    """A person's `lmforge rollback jokes-char` once the GPU run has replaced the champion: the story's last move
    of the aliases."""
    return lmforge(ops.env, "rollback", "jokes-char", "--by", "carol")


def test_each_promotion_decision_posts_one_alert(ops, nightly, served, gpu_run, rolled_back, registry):
    """Promoted (first, better), kept (second), refused (the served run), and a person's rollback: one POST each,
    with the reason and the scores, through the same webhook block as the stuck-run alerts."""
    first, second = version_of(nightly["first"]).version, version_of(nightly["second"]).version
    refused, better = version_of(served["run"]).version, version_of(gpu_run["run"]).version
    assert rolled_back.returncode == 0, rolled_back.stderr[-3000:]
    want = {(first, "promoted"), (second, "kept"), (refused, "refused"), (better, "promoted"), (first, "rolled back")}
    deadline = time.monotonic() + 120
    while not want <= {(p["candidate_version"], p["decision"]) for v in (first, second, refused, better)
                       for p in decision_posts(ops, v)}:
        assert time.monotonic() < deadline, [p["json"] for p in ops.receiver.posts]
        time.sleep(1)
    time.sleep(5)  # a second POST for any of them would have arrived by now
    for version, decision in want:
        posts = [p for p in decision_posts(ops, version) if p["decision"] == decision]
        assert len(posts) == 1, (version, decision, posts)
        alert = posts[0]
        assert alert["text"].startswith(f"lmforge: jokes-char v{version} {decision}: ")
        assert alert["reason"] and alert["reason"] in alert["text"]
    kept = next(p for p in decision_posts(ops, second) if p["decision"] == "kept")
    assert kept["champion_after"] == first and set(kept["scores"]) >= {"candidate_bpb", "champion_bpb"}
    assert kept["scores"]["candidate_bpb"] > kept["scores"]["champion_bpb"]
    rolled = next(p for p in decision_posts(ops, first) if p["decision"] == "rolled back")
    assert rolled["by"] == "carol" and rolled["champion_after"] == first and rolled["champion_before"] == better


@pytest.fixture(scope="module")
def broken_runs(ops, nightly, served):
    """Two runs of an lmforge deployment through the CPU worker (the shakespeare-char deployment, training the
    jokes preset): one whose source does not exist (its acquire task fails), one whose process is killed while it
    trains (the worker reports it Crashed)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with ops.client() as c:
        dep = c.read_deployment_by_name("lmforge-pipeline/shakespeare-char")
        failing = c.create_flow_run_from_deployment(dep.id, parameters={
            "preset": "jokes-char", "overrides": {**TINY, "data.source": str(ops.tmp / "no-such-file.txt")}})
    failed = wait_final(ops, failing.id)
    with ops.client() as c:
        long = c.create_flow_run_from_deployment(dep.id, parameters={"preset": "jokes-char", "overrides": {
            **TINY, **ONE_THREAD, "train.max_steps": 100000, "train.eval_interval": 50, "train.seed": 4242}})
    deadline = time.monotonic() + 300
    while True:  # its train task runs: kill the flow run's process, as an OOM killer or a reboot would
        with ops.client() as c:
            run = c.read_flow_run(long.id)
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[long.id])))
        if any(t.name.startswith("train") and t.state and t.state.name == "Running" for t in tasks):
            break
        assert time.monotonic() < deadline and run.state.name not in TERMINAL, (run.state, ops.log(f"worker-{CPU}"))
        time.sleep(1)
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    os.kill(pid, signal.SIGKILL)
    crashed = wait_final(ops, long.id)
    return {"failed": (failing, failed), "crashed": (long, crashed)}


def test_a_run_that_fails_in_a_task_or_is_killed_posts_one_alert_each(ops, broken_runs):
    for key, state in (("failed", "Failed"), ("crashed", "Crashed")):
        run, final = broken_runs[key]
        assert final.name == state, (key, final)
        deadline = time.monotonic() + 120
        while not ops.receiver.posts_for(run.id):
            assert time.monotonic() < deadline, (key, ops.receiver.posts)
            time.sleep(1)
    time.sleep(5)  # a second POST would have arrived by now
    for key, state in (("failed", "Failed"), ("crashed", "Crashed")):
        run, final = broken_runs[key]
        posts = ops.receiver.posts_for(run.id)
        assert len(posts) == 1, (key, posts)
        alert = posts[0]["json"]
        assert alert["state"] == state and alert["flow_run"] == run.name
        assert alert["deployment"] == "lmforge-pipeline/shakespeare-char" and alert["work_pool"] == CPU
        assert alert["text"].startswith(f"lmforge: flow run {run.name} of lmforge-pipeline/shakespeare-char {state}: ")
        assert f"lmforge runs --follow {run.name}" in alert["text"]
    assert "no-such-file.txt" in ops.receiver.posts_for(broken_runs["failed"][0].id)[0]["json"]["message"]
