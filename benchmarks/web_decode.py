"""Decoding speed in the browser: `lmforge web`'s page in headless Chromium (onnxruntime-web, wasm), batch 1,
greedy, beside lmforge.runtime.Generator (onnxruntime, CPU) on the same directory and graph in the same run.

Default model: the reference shape of benchmarks/decode.py (random-init lmforge gpt, 6 layers x 6 heads x 384
wide, vocab 8192, context 512), a 16-token prompt, 256 new tokens; or --model DIR for an exported directory.

    python benchmarks/web_decode.py [--model DIR] [--new-tokens N] [--threads N] [--graph auto|portable]
                                    [--variant fp32|int8] [--json]
Per contender: tokens/s including the prefill (as benchmarks/decode.py counts it), decode-only tokens/s (the
steps after the prefill) and the prefill time. Writes benchmarks/results/web-decode-<time>.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "abcdefghijklmno"  # 15 characters + <bos>: a 16-token prompt with the char tokenizer below


def reference_dir(root: Path) -> Path:
    import torch

    from lmforge.data.tokenize import train_char
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models.gpt import GPT, GPTConfig

    tok = train_char(["abcdefghijklmnopqrstuvwxyz ,.!?"])
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, block_size=512, n_layer=6, n_head=6, n_embd=384)).eval()
    manifest = {"name": "bench", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": 2, "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "model", manifest,
                              ExportConfig(int8=True, optimize=False))
    return out


def python_run(model_dir: Path, n: int, threads: int, fast: bool, variant: str) -> dict:
    from lmforge.runtime import Generator, batch

    gen = Generator(model_dir, variant=variant, threads=threads, fast=fast)
    gen.generate(PROMPT, max_new_tokens=8, temperature=0)  # warm up
    stamps, sample = [], batch.sample_rows  # the decode loop's one sampling call

    def stamped(*a, **kw):  # a token is available once sampled (random weights pick ids the tokenizer lacks)
        out = sample(*a, **kw)
        stamps.append(time.perf_counter())
        return out

    batch.sample_rows = stamped
    try:
        start = time.perf_counter()
        gen.generate(PROMPT, max_new_tokens=n, temperature=0)
    finally:
        batch.sample_rows = sample
    total = stamps[-1] - start
    return {"name": f"python-ort-{variant}-{'fast' if fast else 'portable'}", "tokens_per_s": round(n / total, 1),
            "decode_tokens_per_s": round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1),
            "prefill_ms": round((stamps[0] - start) * 1e3, 2)}


def browser_run(model_dir: Path, n: int, threads: int, graph: str, variant: str) -> dict:
    from lmforge.web.browser import Chromium

    srv = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "web", str(model_dir), "--port", "0"],
                           stdout=subprocess.PIPE, text=True)
    try:
        url = srv.stdout.readline().split(" at ", 1)[1].split()[0]
        done = "['done','error'].includes(document.body.dataset.state) && document.body.dataset.state"
        with Chromium() as browser:
            results = []
            for tokens in (8, n):  # the first run warms up (wasm compile, session)
                q = urllib.parse.urlencode({"prompt": PROMPT, "n": tokens, "threads": threads, "graph": graph,
                                            "variant": variant, "auto": 1})
                page = browser.open(f"{url}?{q}")
                page.wait_for(done, timeout=600)
                results.append(page.evaluate("window.lmforgeResult"))
    finally:
        srv.terminate()
        srv.wait()
    r = results[-1]
    if "error" in r:
        raise SystemExit(f"error: the page failed: {r['error']}")
    return {"name": f"browser-wasm-{variant}-{r['graph']}", "tokens_per_s": round(len(r["ids"]) / (r["totalMs"] / 1e3), 1),
            "decode_tokens_per_s": round(r["tokensPerSecond"], 1), "prefill_ms": round(r["prefillMs"], 2),
            "threads": r["threads"], "cross_origin_isolated": r["crossOriginIsolated"], "file": r["file"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/web_decode.py", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="an exported model directory (default: the reference shape, random init)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--graph", default="auto", choices=["auto", "portable"])
    p.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else reference_dir(Path(tmp))
        rows = [browser_run(model_dir, args.new_tokens, args.threads, args.graph, args.variant)]
        rows.append(python_run(model_dir, args.new_tokens, args.threads, rows[0]["name"].endswith("fast"), args.variant))
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "new_tokens": args.new_tokens,
              "threads": args.threads, "variant": args.variant, "model": args.model or "reference shape (6x6x384, vocab 8192, ctx 512)",
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"web-decode-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    else:
        print("| name | tokens_per_s | decode_tokens_per_s | prefill_ms |\n| --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['name']} | {r['tokens_per_s']} | {r['decode_tokens_per_s']} | {r['prefill_ms']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
