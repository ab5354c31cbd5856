"""Which serving library carries streamed tokens fastest: the choice behind `lmforge serve-model` (docs/serving.md).

A model that costs nothing (each decode step emits one character for every request in flight) behind:
  litserve       LitServe with lmforge's spec, continuous-batching loop and engine, over LitServe's ZeroMQ
                 transport or its default multiprocessing-manager queues, a message per token or a row's text
                 sent at most every 20 ms (what `lmforge serve-model` runs: mp, 20 ms)
  mlserver       MLServer's streaming endpoint (/v2/models/NAME/generate_stream, server-sent events), its model's
                 predict_stream an async generator; requests interleave on one event loop
so the figure is each library's own cost per streamed token: HTTP, queues, event loops, serialisation. N clients
stream requests of --tokens characters back to back for --seconds.

MLServer pins fastapi<0.116 and cannot be installed beside Prefect (fastapi>=0.139): pass the Python of a separate
virtual environment that has it (`python -m venv /tmp/mlsv && /tmp/mlsv/bin/pip install mlserver==1.7.1`).

    python benchmarks/serve_libraries.py [--mlserver-python /tmp/mlsv/bin/python] [--clients 1,16] [--seconds 8]
Writes benchmarks/results/serve-libraries-<time>.json and .md."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_decode import free_port  # noqa: E402
from serve_load import RESULTS, start, stop  # noqa: E402

MLSERVER_MODEL = '''
import asyncio
from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceResponse

class Echo(MLModel):
    async def load(self):
        return True

    async def predict_stream(self, payloads):
        payload = await payloads.__anext__()
        n = int(StringCodec.decode_input(payload.inputs[0])[0])
        for i in range(n):
            await asyncio.sleep(0)
            yield InferenceResponse(model_name=self.name, outputs=[StringCodec.encode_output("text", ["x"])])
'''


class EchoSession:
    """lmforge.runtime.BatchSession's calls with no model: each step, one character for every row."""

    def __init__(self):
        self.rows: dict[int, list[int]] = {}
        self.ids = iter(range(2**62))

    @property
    def busy(self):
        return bool(self.rows)

    def add(self, request):
        rid = next(self.ids)
        self.rows[rid] = [0, request.max_new_tokens or 16]
        return rid

    def cancel(self, rid):
        self.rows.pop(rid, None)

    def step(self):
        from lmforge.runtime import RowEvent

        out = []
        time.sleep(0.0005)  # a step is never free: keeps the loop from spinning the CPU the clients need
        for rid, row in list(self.rows.items()):
            row[0] += 1
            done = row[0] >= row[1]
            out.append(RowEvent(rid, "x", (0,), "length" if done else None, 1, row[0]))
            if done:
                del self.rows[rid]
        return out


from lmforge.serving.worker import CompletionAPI  # noqa: E402


class EchoAPI(CompletionAPI):
    """lmforge serve-model's worker with EchoRows for a model."""

    def setup(self, device):
        from lmforge.serving.engine import Engine

        self.engine = Engine(EchoSession(), self.flush_s)


def litserve_echo(port: int, fast_queue: bool, flush_ms: float) -> None:
    import litserve as ls

    from lmforge.serving.protocol import Limits
    from lmforge.serving.spec import CompletionsSpec

    api = EchoAPI("unused", max_batch=64, flush_s=flush_ms / 1e3, spec=CompletionsSpec("echo", Limits()))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=False, fast_queue=fast_queue)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False, num_api_servers=1)


async def ask_litserve(http, base: str, n: int) -> tuple[float, int]:
    t0, got = time.perf_counter(), 0
    body = {"prompt": "x", "max_tokens": n, "stream": True}
    async with http.stream("POST", f"{base}/v1/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                got += len(choices[0]["text"]) if choices else 0  # one character a token
    return time.perf_counter() - t0, got


async def ask_mlserver(http, base: str, n: int) -> tuple[float, int]:
    t0, got = time.perf_counter(), 0
    body = {"inputs": [{"name": "n", "shape": [1], "datatype": "BYTES", "data": [str(n)]}]}
    async with http.stream("POST", f"{base}/v2/models/echo/generate_stream", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data:"):
                got += 1
    return time.perf_counter() - t0, got


async def load(ask, base: str, clients: int, seconds: float, n: int) -> dict:
    import httpx

    done = []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients + 2)) as http:
        await ask(http, base, n)
        t0 = time.perf_counter()

        async def client():
            while time.perf_counter() < t0 + seconds:
                done.append(await ask(http, base, n))

        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(done), "tokens_per_s": round(sum(d[1] for d in done) / wall, 1),
            "request_ms_median": round(1e3 * sorted(d[0] for d in done)[len(done) // 2], 1),
            "load_average": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlserver-python", help="python of a venv with mlserver installed (skipped without)")
    p.add_argument("--clients", default="1,16")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    report = {"tokens_per_request": args.tokens, "seconds": args.seconds, "cpus": os.cpu_count(), "libraries": {}}
    with tempfile.TemporaryDirectory(prefix="serve-libs-") as tmp:
        root = Path(tmp)
        contenders = {"litserve-zmq, every token": "zmq-0", "litserve-mp, every token": "mp-0",
                      "litserve-mp, 20 ms flush": "mp-20"}
        if args.mlserver_python:
            contenders["mlserver"] = "mlserver"
        for name, kind in contenders.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            if kind == "mlserver":
                (root / "echo.py").write_text(MLSERVER_MODEL)
                (root / "model-settings.json").write_text(json.dumps({"name": "echo", "implementation": "echo.Echo"}))
                (root / "settings.json").write_text(json.dumps({"http_port": port, "grpc_port": free_port(),
                                                                "metrics_port": free_port(), "parallel_workers": 0}))
                argv_ = [args.mlserver_python, "-m", "mlserver.cli.main", "start", str(root)]
                health, ask = "/v2/health/ready", ask_mlserver
            else:
                argv_ = [sys.executable, __file__, "--serve-echo", str(port), kind]
                health, ask = "/health", ask_litserve
            proc = start(argv_, dict(os.environ), root / f"{name}.log", base + health)
            try:
                report["libraries"][name] = [asyncio.run(load(ask, base, n, args.seconds, args.tokens))
                                             for n in counts]
            finally:
                stop(proc)
            print(name, report["libraries"][name], file=sys.stderr)
    rows = ["| library | clients | streamed tokens/s | request ms (median) | load avg |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {name} | {r['clients']} | {r['tokens_per_s']} | {r['request_ms_median']} | {r['load_average']} |"
             for name, runs in report["libraries"].items() for r in runs]
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("serve-libraries-%Y%m%d-%H%M%S")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-echo":  # KIND = zmq-MS | mp-MS (MS: flush interval)
        litserve_echo(int(sys.argv[2]), sys.argv[3].startswith("zmq"), float(sys.argv[3].split("-")[1]))
    else:
        raise SystemExit(main())
