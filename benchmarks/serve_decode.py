"""Decoding speed through MLflow serving: a registered version's pyfunc generate model behind
`mlflow models serve --env-manager local` on 127.0.0.1, one JSON request of one prompt, greedy, beside
lmforge.runtime.Generator in-process on the same exported directory and graph, in the same run.

Model: the reference shape of benchmarks/decode.py (random-init lmforge gpt, 6 layers x 6 heads x 384 wide,
vocab 8192, context 512), a 16-token prompt, 256 new tokens (benchmarks/web_decode.py's reference directory).
Serving's figure is the whole request: HTTP, JSON, the pyfunc's predict and decoding.

    python benchmarks/serve_decode.py [--new-tokens N] [--requests N]
Writes benchmarks/results/serve-decode-<time>.json and prints it."""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from web_decode import PROMPT, reference_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(model_dir: Path, uri: str) -> str:
    """The exported directory logged and registered as lmforge registers a version (lmforge.registry.pyfunc)."""
    import mlflow

    from lmforge.registry.pyfunc import log_generate_model

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-bench")
    with mlflow.start_run() as run:
        info = log_generate_model(model_dir, PROMPT)
    client = mlflow.MlflowClient(uri)
    client.create_registered_model("bench")
    version = client.create_model_version("bench", source=info.model_uri, run_id=run.info.run_id).version
    client.set_registered_model_alias("bench", "champion", version)
    return "models:/bench@champion"


def ask(port: int, n: int) -> tuple[float, str]:
    body = json.dumps({"dataframe_records": [{"prompt": PROMPT}],
                       "params": {"max_new_tokens": n, "greedy": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        text = json.loads(resp.read())["predictions"][0]
    return time.perf_counter() - t0, text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--requests", type=int, default=5, help="timed requests after one warm-up (median reported)")
    args = p.parse_args(argv)
    from lmforge.runtime import Generator

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = reference_dir(root)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        model_uri = register(model_dir, uri)
        gen = Generator(model_dir)
        gen.generate(PROMPT, max_new_tokens=args.new_tokens, temperature=0)
        local = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            expected = gen.generate(PROMPT, max_new_tokens=args.new_tokens, temperature=0)
            local.append(time.perf_counter() - t0)
        port = free_port()
        mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        log = open(root / "serve.log", "w")
        proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local",
                                 "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=root, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("mlflow models serve did not start: " + (root / "serve.log").read_text()[-800:])
                    time.sleep(0.5)
            ask(port, args.new_tokens)  # warm-up: the first request loads nothing more, but pays JIT-free setup
            served, texts = [], set()
            for _ in range(args.requests):
                seconds, text = ask(port, args.new_tokens)
                served.append(seconds)
                texts.add(text)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
            log.close()
    n = args.new_tokens
    report = {"shape": "gpt 6x6x384, vocab 8192, context 512, prompt 16 tokens, greedy, batch 1",
              "new_tokens": n, "requests": args.requests, "graph": gen.session._model_path.rsplit("/", 1)[-1],
              "provider": gen.provider,
              "in_process_tokens_per_s": round(n / statistics.median(local), 1),
              "served_tokens_per_s": round(n / statistics.median(served), 1),
              "served_request_ms_median": round(1e3 * statistics.median(served), 1),
              "served_over_in_process": round(statistics.median(local) / statistics.median(served), 3),
              "same_text": texts == {expected}, "load_average": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("serve-decode-%Y%m%d-%H%M%S.json")
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
