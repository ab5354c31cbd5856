"""Serving under load: N = 1, 4, 16 concurrent clients, each sending greedy completion requests back to back for a
fixed time, against `lmforge serve-model` (streamed, OpenAI /v1/completions) and against `mlflow models serve
--env-manager local` (one JSON answer per request, /invocations) on the same registered version, in one run.

Reports per server and N: aggregate tokens/s (all clients' completion tokens / wall time), requests/s, p50/p99
request latency and time to first token (for mlflow, the whole answer is the first token), and whether both
servers gave the same text for the same prompt. The machine's load average is recorded beside the figures.

Model: by default the shape of the default `jokes-char` preset (gpt 4 layers x 4 heads x 160 wide, context 96,
char tokenizer), random weights and no EOS, so every request generates exactly --max-tokens tokens; --model
serves an exported directory of your own instead. It is logged and registered as lmforge registers a version
(lmforge.registry.pyfunc) in a temporary SQLite registry, and both servers load models:/bench@champion.

--batch-lookahead adds `lmforge serve-model --batch-lookahead` (the batch of 8 that checks its greedy drafts in one
call of the rows graph; the reference model is then exported with it) beside the plain one, both at --max-batch 8.

    python benchmarks/serve_load.py [--quick] [--seconds S] [--clients 1,4,16] [--max-tokens N] [--model DIR]
                                    [--batch-lookahead]
Writes benchmarks/results/serve-load-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_decode import free_port, register  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["Why", "What do you call", "A programmer", "How many", "Knock knock", "I told my", "The best", "Q: ",
           "Why did the", "My code", "There are", "Two bytes", "A SQL query", "What is", "Debugging", "In theory"]
BIN = Path(sys.executable).parent


def jokes_char_shaped(root: Path, rows_graph: bool = False) -> Path:
    """The default preset's model shape with random weights and no EOS (every request runs to max_tokens);
    rows_graph: exported with model.fast.rows.onnx (serve-model --batch-lookahead)."""
    import string

    import torch

    from lmforge.data.tokenize import special_ids, train_char
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models.gpt import GPT, GPTConfig

    tok = train_char([string.printable])
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=96, n_layer=4, n_head=4, n_embd=160)).eval()
    manifest = {"name": "bench", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {**special_ids(tok), "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "model", manifest,
                              ExportConfig(int8=False, optimize=False, rows_graph=rows_graph))
    return out


def start(argv: list[str], env: dict, log: Path, health: str, timeout: float = 300) -> subprocess.Popen:
    fh = open(log, "w")
    proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=log.parent)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"{argv[0]} did not start: " + log.read_text()[-1500:])
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def ask_lmforge(http, base: str, prompt: str, n: int) -> tuple[float, float, int, str]:
    body = {"model": "bench", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, text, tokens = None, [], 0
    async with http.stream("POST", f"{base}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["text"]:
                first = first or time.perf_counter()
                text.append(event["choices"][0]["text"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return end - t0, (first or end) - t0, tokens, "".join(text)


async def ask_mlflow(http, base: str, prompt: str, n: int) -> tuple[float, float, int, str]:
    body = {"dataframe_records": [{"prompt": prompt}], "params": {"max_new_tokens": n, "greedy": True}}
    t0 = time.perf_counter()
    resp = await http.post(f"{base}/invocations", json=body)
    resp.raise_for_status()
    text = resp.json()["predictions"][0]
    seconds = time.perf_counter() - t0
    return seconds, seconds, n, text  # no EOS in the model: every answer is n tokens (checked against lmforge's)


async def load(ask, base: str, clients: int, seconds: float, n: int) -> dict:
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)
    done: list[tuple[float, float, int]] = []
    texts: dict[str, str] = {}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await ask(http, base, PROMPTS[0], n)  # warm-up
        start = time.perf_counter()
        stop_at = start + seconds

        async def client(i: int) -> None:
            k = i
            while time.perf_counter() < stop_at:
                prompt = PROMPTS[k % len(PROMPTS)]
                latency, ttft, tokens, text = await ask(http, base, prompt, n)
                done.append((latency, ttft, tokens))
                texts.setdefault(prompt, text)
                k += clients

        load_before = os.getloadavg()[0]
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - start
    lat = sorted(d[0] for d in done)
    ttft = sorted(d[1] for d in done)
    q = lambda xs, p: xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]
    return {"clients": clients, "requests": len(done), "seconds": round(wall, 2),
            "tokens_per_s": round(sum(d[2] for d in done) / wall, 1),
            "requests_per_s": round(len(done) / wall, 2),
            "latency_p50_ms": round(1e3 * statistics.median(lat), 1), "latency_p99_ms": round(1e3 * q(lat, 0.99), 1),
            "ttft_p50_ms": round(1e3 * statistics.median(ttft), 1), "ttft_p99_ms": round(1e3 * q(ttft, 0.99), 1),
            "tokens_per_request": sorted({d[2] for d in done}),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "_texts": texts}


def table(report: dict) -> str:
    rows = ["| server | clients | tokens/s | x one client | requests/s | latency p50 / p99 ms | TTFT p50 / p99 ms "
            "| load avg (start, end) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in report["servers"].items():
        one = runs[0]["tokens_per_s"]
        for r in runs:
            rows.append(f"| {name} | {r['clients']} | {r['tokens_per_s']} | {r['tokens_per_s'] / one:.2f} | "
                        f"{r['requests_per_s']} | {r['latency_p50_ms']} / {r['latency_p99_ms']} | "
                        f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['load_average'][0]}, {r['load_average'][1]} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 s per client count, 32 tokens per request")
    p.add_argument("--seconds", type=float, default=20.0, help="load time per client count (default 20)")
    p.add_argument("--clients", default="1,4,16", help="client counts (default 1,4,16)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    p.add_argument("--max-batch", type=int, default=16, help="lmforge serve-model --max-batch (default 16)")
    p.add_argument("--model", help="an exported model directory (default: the jokes-char-shaped reference)")
    p.add_argument("--only", choices=["lmforge", "mlflow"], help="run one server only (lmforge: both of its own)")
    p.add_argument("--batch-lookahead", action="store_true",
                   help="also serve-model --batch-lookahead; every lmforge server at --max-batch 8")
    args = p.parse_args(argv)
    if args.batch_lookahead:
        args.max_batch = 8
    if args.quick:
        args.seconds, args.max_tokens = 4.0, 32
    counts = [int(c) for c in args.clients.split(",")]
    report = {"model": args.model or "jokes-char shape (gpt 4x4x160, context 96, char), random weights, no EOS",
              "max_tokens": args.max_tokens, "seconds_per_run": args.seconds, "cpus": os.cpu_count(),
              "max_batch": args.max_batch, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        model_dir = Path(args.model) if args.model else jokes_char_shaped(root, args.batch_lookahead)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        model_uri = register(model_dir, uri)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        servers = {
            "lmforge serve-model": ([str(BIN / "lmforge"), "serve-model", model_uri, "--max-batch",
                                     str(args.max_batch), "--name", "bench"], "/health", ask_lmforge),
            **({"lmforge serve-model --batch-lookahead": (
                [str(BIN / "lmforge"), "serve-model", model_uri, "--batch-lookahead", "--name", "bench"], "/health",
                ask_lmforge)} if args.batch_lookahead else {}),
            "mlflow models serve": ([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                     "local", "--host", "127.0.0.1"], "/ping", ask_mlflow),
        }
        texts = {}
        for name, (argv_, health, ask) in servers.items():
            if args.only and not name.startswith(args.only):
                continue
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start([*argv_, "--port", str(port)], env, root / f"{name.split()[0]}.log", base + health)
            try:
                runs = [asyncio.run(load(ask, base, n, args.seconds, args.max_tokens)) for n in counts]
            finally:
                stop(proc)
            texts[name] = {k: v for r in runs for k, v in r.pop("_texts").items()}
            report["servers"][name] = runs
            print(f"{name}: " + ", ".join(f"{r['clients']} clients {r['tokens_per_s']} tok/s" for r in runs),
                  file=sys.stderr)
    if len(texts) > 1:  # every server's text for each prompt they both answered
        first, *others = texts.values()
        report["same_text"] = all(first[k] == o[k] for o in others for k in first.keys() & o.keys())
    ours = report["servers"].get("lmforge serve-model")
    spec = report["servers"].get("lmforge serve-model --batch-lookahead")
    if ours and spec:
        report["batch_lookahead_over_plain"] = {r["clients"]: round(q["tokens_per_s"] / r["tokens_per_s"], 2)
                                                for r, q in zip(ours, spec)}
    theirs = report["servers"].get("mlflow models serve")
    if ours and len(ours) > 1:
        report["lmforge_most_over_one_client"] = round(ours[-1]["tokens_per_s"] / ours[0]["tokens_per_s"], 2)
    if ours and theirs:
        report["lmforge_over_mlflow_at_most_clients"] = round(ours[-1]["tokens_per_s"] / theirs[-1]["tokens_per_s"], 2)
    md = table(report)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("serve-load-%Y%m%d-%H%M%S")
    for suffix, text in ((".json", json.dumps(report, indent=2)), (".md", md + "\n")):
        tmp_out = stem.with_name(f".{stem.name}{suffix}.tmp")
        tmp_out.write_text(text)
        os.replace(tmp_out, stem.with_suffix(suffix))
    print(md)
    print(json.dumps({k: v for k, v in report.items() if k != "servers"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
