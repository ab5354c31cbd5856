"""Secrets in source URLs and tracking URIs (lmforge/core/redact.py, lmforge/core/envsubst.py): redacted everywhere lmforge
writes or logs them. Two whole runs from a loopback server that demands HTTP Basic auth and a ?token=: one with
the credentials written into data.source, one reading them from the environment with ${NAME}; then every file
under the artifacts root (run and prepared directories, download cache, the MLflow SQLite store and its mlruns
artifacts), the captured stdout/stderr and log records, and for the ${NAME} run the Prefect server's database
too, are searched for the secret strings."""
from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import REPO, TINY
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text, redact_url, split_credentials
from test_bad_input import restore_log_streams  # noqa: F401 - autouse: Prefect's handlers outlive capfd

# -- the helpers on their own ---------------------------------------------------------------------------------------
REDACTED = {
    "https://user:pass@host/path?token=abc": "https://***@host/path?token=***",
    "https://host/x?api_key=1&n=2&Signature=s&X-Amz-Credential=c": "https://host/x?api_key=***&n=2&Signature=***"
                                                                   "&X-Amz-Credential=***",
    "http://u:p%40ss@h:8080/a/b.csv?lang=en": "http://***@h:8080/a/b.csv?lang=en",
    "https://h/x?ACCESS_TOKEN=t#frag": "https://h/x?ACCESS_TOKEN=***#frag",
    "https://h/cb#access_token=t&state=1": "https://h/cb#access_token=***&state=1",
    "https://h/x?password=&auth=a;sig=z": "https://h/x?password=&auth=***;sig=***",
    "postgresql://mlflow:pw@db:5432/mlflow": "postgresql://***@db:5432/mlflow",
    "https://user@h/x": "https://***@h/x",
    "https://h/p@th?secret=1": "https://h/p@th?secret=***",  # an @ in the path is not userinfo
    "https://host/plain.txt": "https://host/plain.txt",
    "/local/path/corpus.txt": "/local/path/corpus.txt",
    "pyjokes": "pyjokes",
    "sqlite:////tmp/mlflow.db": "sqlite:////tmp/mlflow.db",
    "https://h/x?token=${LMFORGE_SOURCE_TOKEN}": "https://h/x?token=***",
}


@pytest.mark.parametrize("url", REDACTED)
def test_redact_url(url):
    assert redact_url(url) == REDACTED[url]
    assert redact_text(f"downloading {url} now") == f"downloading {REDACTED[url]} now"


def test_redact_text_finds_every_url_in_a_message():
    text = "error: 'https://a:b@h1/x?key=k' failed, see http://h2/y?token=t (and ftp://c:d@h3/)"
    assert redact_text(text) == "error: 'https://***@h1/x?key=***' failed, see http://h2/y?token=*** (and ftp://***@h3/)"


def test_split_credentials_decodes_userinfo_for_basic_auth():
    url, auth = split_credentials("https://us%40er:p%3Aw%2Fd@host:8443/x?q=1")
    assert url == "https://host:8443/x?q=1"
    assert base64.b64decode(auth.removeprefix("Basic ")).decode() == "us@er:p:w/d"
    assert split_credentials("https://host/x") == ("https://host/x", None)


# -- a loopback server that demands credentials ------------------------------------------------------------------
def new_secrets() -> dict:
    return {"user": "reader-" + secrets.token_hex(6), "password": "pw-" + secrets.token_hex(12),
            "token": "tok-" + secrets.token_hex(12)}


class GuardedServer:
    """Serves CORPUS at /jokes.txt to a request that carries one of the accepted credential sets (Basic auth and
    ?token=); 401 / 403 otherwise. Records (path, ok) of every request."""

    def __init__(self, corpus: bytes):
        self.accepted: list[dict] = []
        self.requests: list[tuple[str, bool]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                ok = any(auth == "Basic " + base64.b64encode(f"{c['user']}:{c['password']}".encode()).decode()
                         and f"token={c['token']}" in self.path for c in server.accepted)
                server.requests.append((self.path, ok))
                if not self.path.startswith("/jokes.txt"):
                    self.send_error(404)
                    return
                self.send_response(200 if ok else 401)
                body = corpus if ok else b""
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", '"jokes-1"')
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]


@pytest.fixture(scope="module")
def corpus_server():
    import pyjokes

    corpus = "\n".join(" ".join(j.split()) for j in pyjokes.get_jokes(language="en", category="all")) + "\n"
    server = GuardedServer(corpus.encode())
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Every file under root whose bytes contain one of the needles (as UTF-8), as 'path: needle'."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


def prefect_database_files() -> list[Path]:
    """The Prefect test harness's SQLite database and its journal/WAL files (tests/conftest.py prefect_server)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    assert db.is_file(), db
    return sorted(db.parent.glob(db.name + "*"))


def captured(out: str, err: str, caplog) -> str:
    """Everything a run printed or logged: stdout and stderr at the file-descriptor level, and the log records
    (Prefect's handlers write to stderr or, once pytest's own handler is back on the root logger, to caplog)."""
    return "\n".join([out, err, caplog.text])


def run_cli(*argv: str) -> int:
    from lmforge.cli import main

    return main(list(argv))


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "secretrun.toml"
    path.write_text((REPO / "configs" / "jokes-char.toml").read_text())
    return path


def tiny_overrides(source: str, seed: int) -> dict:
    return {**TINY, "data.source": source, "data.format": "lines", "train.seed": seed,  # a run of its own
            "name": "secretrun"}  # another source than the preset's would otherwise name the model after the data


def as_args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def test_a_run_from_a_url_with_credentials_leaves_no_secret(prefect_server, corpus_server, preset, artifacts,
                                                           capfd, caplog):
    from lmforge.core.config import load_config
    from lmforge.core.layout import RunLayout
    from lmforge.registry.tracking import client

    s = new_secrets()
    corpus_server.accepted.append(s)
    url = (f"http://{s['user']}:{s['password']}@127.0.0.1:{corpus_server.port}/jokes.txt?token={s['token']}"
           "&lang=en")
    shown = f"http://***@127.0.0.1:{corpus_server.port}/jokes.txt?token=***&lang=en"
    overrides = tiny_overrides(url, 7001)
    assert run_cli("run", "--preset", str(preset), *as_args(overrides), "--json") == 0
    out, err = capfd.readouterr()
    logs = captured(out, err, caplog)
    result = json.loads(out.strip().splitlines()[-1])
    assert corpus_server.requests[-1] == ("/jokes.txt?token=" + s["token"] + "&lang=en", True)  # credentials sent

    # each place the source is written holds it, redacted (so the search below looks where it should)
    c = client()
    assert json.loads((Path(result["model_dir"]) / "lmforge.json").read_text())["data"]["source"] == shown
    assert c.get_run(result["run_id"]).data.params["data.source"] == shown
    version = c.get_model_version("secretrun", result["model_version"])
    assert version.tags["data_source"] == shown and f"**Data**: {shown}" in version.description
    prepared = RunLayout.for_config(load_config(str(preset), {k: str(v) for k, v in overrides.items()})).prepared
    assert json.loads((prepared / "meta.json").read_text())["source"] == shown
    assert f"downloading {shown}" in logs and f"corpus at {artifacts}" in logs  # the log lines were captured

    needles = list(s.values())
    assert files_holding(artifacts, needles) == []  # runs/, prepared/, cache/, mlflow.db, mlruns/
    assert not [n for n in needles if n in logs]
    # Prefect itself keeps a flow run's parameters as passed: the credentials written into `overrides` are in its
    # database. This is why a deployment should pass ${NAME} instead (next test).
    assert any(s["password"].encode() in f.read_bytes() for f in prefect_database_files())


def test_a_run_reading_credentials_from_the_environment_leaves_no_secret_even_in_prefect(
        prefect_server, corpus_server, preset, artifacts, capfd, caplog, monkeypatch):
    s = new_secrets()
    corpus_server.accepted.append(s)
    monkeypatch.setenv("LMFORGE_TEST_SOURCE_USER", s["user"])
    monkeypatch.setenv("LMFORGE_TEST_SOURCE_PASSWORD", quote(s["password"], safe=""))
    monkeypatch.setenv("LMFORGE_TEST_SOURCE_TOKEN", s["token"])
    monkeypatch.setenv("LMFORGE_ALLOWED_SECRETS", " ".join(  # the operator's policy names each variable and host
        f"LMFORGE_TEST_SOURCE_{n}@http://127.0.0.1:{corpus_server.port}" for n in ("USER", "PASSWORD", "TOKEN")))
    template = (f"http://${{LMFORGE_TEST_SOURCE_USER}}:${{LMFORGE_TEST_SOURCE_PASSWORD}}@127.0.0.1:{corpus_server.port}"
                "/jokes.txt?token=${LMFORGE_TEST_SOURCE_TOKEN}")
    assert run_cli("run", "--preset", str(preset), *as_args(tiny_overrides(template, 7002)), "--json") == 0
    out, err = capfd.readouterr()
    logs = captured(out, err, caplog)
    result = json.loads(out.strip().splitlines()[-1])
    assert corpus_server.requests[-1][1] is True  # the expanded credentials reached the server
    assert f"downloading http://***@127.0.0.1:{corpus_server.port}/jokes.txt?token=***" in logs
    manifest = json.loads((Path(result["model_dir"]) / "lmforge.json").read_text())
    assert manifest["data"]["source"] == f"http://***@127.0.0.1:{corpus_server.port}/jokes.txt?token=***"

    needles = list(s.values())
    assert files_holding(artifacts, needles) == []
    assert not [n for n in needles if n in logs]
    db_files = prefect_database_files()
    assert any(b"LMFORGE_TEST_SOURCE_TOKEN" in f.read_bytes() for f in db_files)  # the parameters were stored ...
    assert not [f"{f}: {n}" for f in db_files for n in needles if n.encode() in f.read_bytes()]  # ... not secrets


def test_unset_environment_variable_is_one_line(prefect_server, capsys, preset, monkeypatch):
    monkeypatch.delenv("LMFORGE_TEST_UNSET", raising=False)
    monkeypatch.setenv("LMFORGE_ALLOWED_SECRETS", "LMFORGE_TEST_UNSET@http://127.0.0.1:9")
    rc = run_cli("prepare", "--preset", str(preset), "--set",
                 "data.source=http://127.0.0.1:9/x?token=${LMFORGE_TEST_UNSET}")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == ("error: data.source refers to ${LMFORGE_TEST_UNSET}, which is not set in this "
                                   "worker's environment (hint: export LMFORGE_TEST_UNSET=... in the environment of "
                                   "the process that runs the flow (for a deployment: the worker's))")


# -- the tracking URI ------------------------------------------------------------------------------------------------
def test_tracking_uri_credentials_are_sent_as_basic_auth_and_never_shown(monkeypatch):
    from lmforge.registry.tracking import check_tracking_server

    s = new_secrets()
    seen = []

    class Health(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == "Basic " + base64.b64encode(
                f"{s['user']}:{s['password']}".encode()).decode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True).start()
    try:
        uri = f"http://{s['user']}:{s['password']}@127.0.0.1:{httpd.server_address[1]}"
        assert check_tracking_server(uri) == uri
        assert seen and seen[0].startswith("Basic ")
        httpd.shutdown()
        httpd.server_close()
        with pytest.raises(LmforgeError) as info:  # now nothing answers
            check_tracking_server(uri, timeout=1.0)
        assert f"MLflow tracking server http://***@127.0.0.1:{httpd.server_address[1]} is unreachable" in str(info.value)
        assert not [v for v in s.values() if v in str(info.value)]
    finally:
        httpd.server_close()
