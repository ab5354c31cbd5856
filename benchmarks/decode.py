"""Decoding speed, side by side in one run: torch without and with a KV cache, transformers' generate, and
lmforge.runtime.Generator on the exported directory (fp32 and int8).

Reference shape: random-init lmforge gpt, 6 layers x 6 heads x 384 wide, vocab 8192, context 512 (~14M params);
batch 1, 16-token prompt, 256 new greedy tokens, 2 threads. Per contender: tokens/s (prefill included), time to
first token, per-token latency p50/p99 (decode steps), and tokens/s for a batch of 8 prompts.

    python benchmarks/decode.py [--new-tokens N] [--quick] [--json]
Writes benchmarks/results/decode-<time>.json and .md and prints the table (or the JSON with --json)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "vocab_size": 8192, "block_size": 512}
PROMPT_LEN = 16


def summary(name: str, stamps: list[float], start: float, batch8_tokens_per_s: float | None) -> dict:
    """stamps: the time each new token became available (batch 1, one call started at `start`)."""
    steps = np.diff(stamps) * 1e3
    return {"name": name, "tokens_per_s": round(len(stamps) / (stamps[-1] - start), 1),
            "ttft_ms": round((stamps[0] - start) * 1e3, 2),
            "p50_ms": round(float(np.percentile(steps, 50)), 3), "p99_ms": round(float(np.percentile(steps, 99)), 3),
            "batch8_tokens_per_s": None if batch8_tokens_per_s is None else round(batch8_tokens_per_s, 1)}


def torch_run(model, prompt, n: int, cache: bool) -> tuple[float, list[float]]:
    import torch

    stamps, ids, state = [], prompt, None
    start = time.perf_counter()
    with torch.no_grad():
        x = ids
        for _ in range(n):
            logits, present = model(x, state if cache else None)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.perf_counter())
            ids = torch.cat([ids, nxt], 1)
            x, state = (nxt, present) if cache else (ids, None)
    return start, stamps


def bench_torch(model, n: int, cache: bool) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    run = lambda b: torch_run(model, torch.randint(0, SHAPE["vocab_size"], (b, PROMPT_LEN), generator=g), n, cache)
    torch_run(model, torch.randint(0, SHAPE["vocab_size"], (1, PROMPT_LEN)), 8, cache)  # warm up
    start, stamps = run(1)
    if not cache:  # batch 8 without a cache costs ~8x the batch-1 run (quadratic); not measured
        return summary("torch-nocache", stamps, start, None)
    s8, st8 = run(8)
    return summary("torch-cache", stamps, start, 8 * n / (st8[-1] - s8))


def bench_hf(n: int) -> dict | None:
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.generation.streamers import BaseStreamer
    except ImportError:
        return None
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"],
                     vocab_size=SHAPE["vocab_size"], n_positions=SHAPE["block_size"])
    model = GPT2LMHeadModel(cfg).eval()

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first put is the prompt
                self.times.append(time.perf_counter())

        def end(self):
            pass

    def run(b: int, streamer=None) -> float:
        ids = torch.randint(0, SHAPE["vocab_size"], (b, PROMPT_LEN))
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None, streamer=streamer)
        return start

    run(1)
    s = Stamps()
    start = run(1, s)
    s8 = run(8)
    return summary("hf-generate", s.times, start, 8 * n / (time.perf_counter() - s8))


def export_reference(model, directory: Path) -> Path:
    """The model directory for `model`, with a char tokenizer of exactly vocab_size tokens and no EOS."""
    from lmforge.data.tokenize import train_char
    from lmforge.export import export_model_dir
    from lmforge.models import model_spec

    tok = train_char(["".join(chr(0x4E00 + i) for i in range(SHAPE["vocab_size"] - 4))])
    tok.save(str(directory / "tokenizer.json"))
    manifest = {"name": "bench", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, model_spec(model), directory / "tokenizer.json", directory / "model", manifest)
    return out


def bench_ort(model_dir: Path, variant: str, n: int, threads: int, fast: bool | None) -> tuple[dict, object]:
    from lmforge.runtime import Generator

    gen = Generator(model_dir, variant=variant, threads=threads, fast=fast)
    rng = np.random.default_rng(0)
    prompt = lambda: "".join(chr(0x4E00 + int(i)) for i in rng.integers(0, SHAPE["vocab_size"] - 4, PROMPT_LEN))
    gen.generate(prompt(), max_new_tokens=n, temperature=0)  # warm up
    start, stamps = time.perf_counter(), []
    for _ in gen.stream(prompt(), max_new_tokens=n, temperature=0):  # one char = one token = one piece
        stamps.append(time.perf_counter())
    prompts = [prompt() for _ in range(8)]
    s8 = time.perf_counter()
    gen.generate(prompts, max_new_tokens=n, temperature=0)
    name = f"ort-{variant}" + ("" if gen.fast else "-portable")
    return {**summary(name, stamps, start, 8 * n / (time.perf_counter() - s8))}, gen


def profile_step(model_dir: Path, file: str, threads: int, past: int = 200, steps: int = 100) -> dict:
    """onnxruntime's profiler over `steps` batch-1 decode steps of the fast graph at cache length `past`:
    {op type: share of kernel time}, plus the wall time per step in ms."""
    import json as _json

    import onnxruntime as ort

    from lmforge.runtime.modeldir import read_model_dir

    md = read_model_dir(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_profiling = threads, 1, True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "lmforge-decode-profile")
    sess = ort.InferenceSession(str(md.path / file), opts, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    feeds = {"input_ids": np.zeros((1, 1), np.int64), "position_ids": np.full((1, 1), past, np.int64),
             "seqlens_k": np.full(1, past, np.int32), "total_sequence_length": np.array(past + 1, np.int32)}
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for s in md.io["fast"]["state"]:
        buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, SHAPE["n_head"], past + 1, SHAPE["n_embd"] // SHAPE["n_head"]),
                                                        np.float32))
        binding.bind_ortvalue_input(s["input"], buf)
        binding.bind_ortvalue_output(s["output"], buf)
    binding.bind_output("logits")
    for _ in range(10):
        sess.run_with_iobinding(binding)
    start = time.perf_counter()
    for _ in range(steps):
        sess.run_with_iobinding(binding)
    ms = (time.perf_counter() - start) / steps * 1e3
    events = _json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0) + e["dur"]
    total = sum(by_op.values())
    shares = {k: f"{100 * v / total:.1f}%" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]}
    return {"file": file, "past": past, "ms_per_step": round(ms, 3), "kernel_time": shares}


def greedy_agreement(a, b, steps: int = 64) -> float:
    """Share of greedy tokens (batch 1, fixed prompt) on which two generators agree, over `steps` steps."""
    prompt = "".join(chr(0x4E00 + i * 37 % 8000) for i in range(PROMPT_LEN))
    x, y = a.generate(prompt, max_new_tokens=steps, temperature=0), b.generate(prompt, max_new_tokens=steps, temperature=0)
    return sum(p == q for p, q in zip(x, y)) / steps


def markdown(report: dict) -> str:
    keys = ["name", "tokens_per_s", "ttft_ms", "p50_ms", "p99_ms", "batch8_tokens_per_s"]
    rows = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    rows += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in report["results"]]
    extra = [f"- profile {p['file']} at cache length {p['past']}: {p['ms_per_step']} ms/step, kernel time "
             + ", ".join(f"{k} {v}" for k, v in p["kernel_time"].items()) for p in report.get("profile") or []]
    return "\n".join(rows + ["", *(f"- {k}: {v}" for k, v in report["summary"].items()), *extra])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge bench decode", description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="32 new tokens, skip torch-nocache and the portable graph")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--profile", action="store_true", help="add an onnxruntime profile of one decode step")
    args = p.parse_args(argv)
    n = 32 if args.quick and args.new_tokens == 256 else args.new_tokens
    if n < 2:
        p.error("--new-tokens must be >= 2")
    import onnxruntime as ort
    import torch

    from lmforge.models.gpt import GPT, GPTConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE)).eval()
    results = []
    if not args.quick:
        results.append(bench_torch(model, n, cache=False))
    results.append(bench_torch(model, n, cache=True))
    hf = bench_hf(n)
    if hf:
        results.append(hf)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_reference(model, Path(tmp))
        fp32, gen32 = bench_ort(model_dir, "fp32", n, args.threads, None)
        int8, gen8 = bench_ort(model_dir, "int8", n, args.threads, None)
        results += [fp32, int8]
        if not args.quick:
            results.append(bench_ort(model_dir, "fp32", n, args.threads, False)[0])
            results.append(bench_ort(model_dir, "int8", n, args.threads, False)[0])
        agree = greedy_agreement(gen32, gen8)
        profile = [profile_step(model_dir, f, args.threads) for f in ("model.fast.onnx", "model.fast.int8.onnx")] \
            if args.profile else None
    by = {r["name"]: r["tokens_per_s"] for r in results}
    summ = {"ort-fp32 / hf-generate": round(by["ort-fp32"] / by["hf-generate"], 2) if hf else None,
            "ort-int8 / ort-fp32": round(by["ort-int8"] / by["ort-fp32"], 2),
            "int8 vs fp32 greedy token agreement (64 steps)": agree,
            "shape": f"gpt {SHAPE}, batch 1, prompt {PROMPT_LEN}, {n} new tokens greedy, {args.threads} threads"}
    report = {"results": results, "summary": summ,
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
                         f"python {platform.python_version()}, onnxruntime {ort.__version__}, torch {torch.__version__}",
              "provider": gen32.provider}
    if profile:
        report["profile"] = profile
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("decode-%Y%m%d-%H%M%S")
    for suffix, text in ((".json", json.dumps(report, indent=2)), (".md", markdown(report) + "\n")):
        tmp = stem.with_name(f".{stem.name}{suffix}.tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
