"""Decoding speed, side by side in one run: torch without and with a KV cache, transformers' generate,
lmforge.runtime.Generator on the exported directory (fp32, int8 and int4 fast graphs), and onnxruntime-genai on
the genai graphs of the same directory (same weights: fp32, int8, int4).

Reference shape: random-init lmforge gpt, 6 layers x 6 heads x 384 wide, vocab 8192, context 512 (~14M params);
batch 1, 16-token prompt, 256 new greedy tokens, 2 threads. Per contender: tokens/s (prefill included), time to
first token, per-token latency p50/p99 (decode steps), tokens/s for a batch of 8 prompts, and (decode steps at
p50) the share of the weight-bytes bound: this machine's memory bandwidth, measured in the same run, divided by
the bytes of weights one decode step reads.

Quality on trained weights (never random init): shakespeare-char trained here for --train-steps steps through
lmforge's own preparation and training, exported; each quantised variant's greedy agreement with fp32 over 256
tokens (8 prompts x 32), its teacher-forced top-1 agreement over 256 val positions, and its val-loss delta.

    python benchmarks/decode.py [--new-tokens N] [--quick] [--json] [--profile] [--train-steps N] [--rounds N]
Writes benchmarks/results/decode-<time>.json and .md and prints the table (or the JSON with --json)."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
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
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir

    tok = train_char(["".join(chr(0x4E00 + i) for i in range(SHAPE["vocab_size"] - 4))])
    tok.save(str(directory / "tokenizer.json"))
    manifest = {"name": "bench", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, directory / "tokenizer.json", directory / "model", manifest,
                              ExportConfig(int4=True))
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
    """onnxruntime's profiler over `steps` batch-1 decode steps of a fast or genai graph at cache length `past`:
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
    if "attention_mask" in {i.name for i in sess.get_inputs()}:  # a genai graph derives both from the mask
        feeds = {"input_ids": feeds["input_ids"], "attention_mask": np.ones((1, past + 1), np.int64),
                 "position_ids": feeds["position_ids"]}
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


def memory_bandwidth(threads: int, mb: int = 512, repeats: int = 7) -> float:
    """This machine's memory bandwidth in GB/s with `threads` threads (as many as the contenders use): the best
    of `repeats` numpy copies of an `mb` MB float32 array, each thread copying its share (numpy releases the
    GIL while copying); each copy reads and writes every byte, so 2 x mb MB move per copy."""
    import threading

    src = np.ones(mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    edges = np.linspace(0, src.size, threads + 1).astype(int)
    best = float("inf")
    for _ in range(repeats):
        workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in itertools.pairwise(edges)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9


def weight_bytes(onnx_file: Path) -> int:
    """Bytes of weights one batch-1 decode step reads: every initializer, except that a table only Gathered
    (token and position embeddings) is read one row at a time."""
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    users: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            users.setdefault(name, []).append((node.op_type, i))
    total = 0
    for t in graph.initializer:
        n = onnx.numpy_helper.to_array(t).nbytes
        uses = users.get(t.name, [])
        if uses and all(op == "Gather" and i == 0 for op, i in uses):
            n = n // max(t.dims[0], 1)  # one row per token
        total += n
    return total


def bench_genai(model_dir: Path, variant: str, n: int, threads: int) -> tuple[dict, int]:
    """onnxruntime-genai's own loop (Generator, append_tokens, generate_next_token) on the directory's genai
    graph of `variant`, token ids in (the reference tokenizer is a char one, which ort-genai cannot read).
    Returns (row, bytes of weights per decode step)."""
    import onnxruntime_genai as og

    from lmforge.export.genai import GENAI_FILES, select_graph

    cfg = select_graph(model_dir, variant)
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                      "inter_op_num_threads": 1}}}}))
    model = og.Model(cfg)
    rng = np.random.default_rng(0)

    def run(batch: int, stamps: list | None = None) -> float:
        ids = rng.integers(4, SHAPE["vocab_size"], (batch, PROMPT_LEN)).astype(np.int32)
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=batch, max_length=PROMPT_LEN + n,
                                  min_length=PROMPT_LEN + n)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        while not gen.is_done():
            gen.generate_next_token()
            gen.get_next_tokens()
            if stamps is not None:
                stamps.append(time.perf_counter())
        return start

    run(1)  # warm up
    stamps: list[float] = []
    start = run(1, stamps)
    s8 = run(8)
    return summary(f"ort-genai-{variant}", stamps, start, 8 * n / (time.perf_counter() - s8)), \
        weight_bytes(model_dir / GENAI_FILES[variant])


def genai_window_scores(path: Path, spec: dict, val: np.ndarray, starts: np.ndarray, threads: int):
    """(mean next-token loss, argmax predictions [windows, T]) of a genai graph on whole val windows, run by
    onnxruntime as ort-genai feeds a prompt (attention_mask of ones, positions 0.., an empty cache buffer)."""
    import onnxruntime as ort

    from lmforge.runtime.names import kv_names
    from lmforge.runtime.scoring import token_nll

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    T = int(spec["block_size"])
    total, count, preds = 0.0, 0, []
    for i in range(0, len(starts), 8):
        xy = np.stack([val[s:s + T + 1].astype(np.int64) for s in starts[i:i + 8]])
        x, y = xy[:, :-1], xy[:, 1:]
        B = len(x)
        feeds = {"input_ids": x, "attention_mask": np.ones((B, T), np.int64),
                 "position_ids": np.tile(np.arange(T, dtype=np.int64), (B, 1)),
                 **{n: np.zeros((B, spec["n_head"], T, spec["head_dim"]), np.float32)
                    for n in kv_names(spec["n_layer"])[0]}}
        logits = sess.run(["logits"], feeds)[0]
        total += float(token_nll(logits, y).sum())
        count += y.size
        preds.append(logits.argmax(-1))
    return total / count, np.concatenate(preds)


def genai_greedy(model_dir: Path, variant: str, prompts: list[list[int]], n: int, threads: int) -> list[list[int]]:
    import onnxruntime_genai as og

    from lmforge.export.genai import genai_greedy as greedy
    from lmforge.export.genai import select_graph

    cfg = select_graph(model_dir, variant)
    cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(cfg)
    return [greedy(model, ids, n) for ids in prompts]


def trained_quality(steps: int, threads: int, corpora: Path) -> dict:
    """shakespeare-char trained `steps` steps through lmforge's preparation and train(), exported with its genai
    graphs: per quantised variant, greedy agreement with fp32 over 8 prompts x 32 tokens (each runtime's own
    loop), teacher-forced top-1 agreement over 256 val positions, and val-loss delta on 32 val windows."""
    import torch

    from lmforge.core.config import load_config
    from lmforge.data.prepare import prepare_corpus
    from lmforge.data.shards import open_shard
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.export.genai import GENAI_FILES
    from lmforge.models import build_model, model_spec
    from lmforge.runtime import Generator
    from lmforge.runtime.scoring import greedy_ids, val_loss, windows
    from lmforge.training.train import train

    source = corpora / "tinyshakespeare.txt"
    if not source.is_file():
        return {"skipped": f"{source} not found"}
    cfg = load_config("shakespeare-char", {"data.source": str(source), "train.max_steps": steps,
                                           "train.eval_interval": max(1, steps // 2), "train.threads": threads,
                                           "train.device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        meta = prepare_corpus(source, cfg, work / "data")
        tr, va = open_shard(work / "data", "train"), open_shard(work / "data", "val")
        model = build_model(cfg.model, meta["vocab_size"], seed=cfg.train.seed)
        t0 = time.perf_counter()
        result = train(model, tr, va, cfg.model.block_size, cfg.train, work / "ckpt", resume=False)
        train_s = time.perf_counter() - t0
        torch.set_num_threads(threads)
        manifest = {"name": cfg.name, "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                    "tokens": meta["special_ids"], "generation": {"temperature": 0.0}}
        out, _ = export_model_dir(model, work / "data" / "tokenizer.json", work / "model", manifest,
                                  ExportConfig(optimize=False, int4=True))
        spec = model_spec(model)
        T = cfg.model.block_size
        starts = windows(len(va), T, 32)
        scores = {v: genai_window_scores(out / f, spec, va, starts, threads) for v, f in GENAI_FILES.items()}
        val_text = np.asarray(va, np.int64)
        fp32 = Generator(out, device="cpu", threads=threads)
        offsets = np.linspace(0, len(val_text) - 64, 8).astype(int)
        prompts = [[fp32.bos] + val_text[o:o + 15].tolist() if fp32.bos is not None else val_text[o:o + 16].tolist()
                   for o in offsets]
        n = 32
        ref = [greedy_ids(fp32, p, n) for p in prompts]
        runs = {}
        for v in ("int8", "int4"):  # lmforge's fast graphs; the genai graphs of the same variant hold the same weights
            gen = Generator(out, variant=v, device="cpu", threads=threads)
            runs[f"lmforge {v} (model.fast.{v}.onnx)"] = [greedy_ids(gen, p, n) for p in prompts]
        runs.update({f"ort-genai {v}": genai_greedy(out, v, prompts, n, threads) for v in GENAI_FILES})
        agree = lambda outs: round(sum(a == b for o, r in zip(outs, ref) for a, b in zip(o, r)) / (n * len(ref)), 4)
        tf = lambda v: round(float((scores[v][1][:4] == scores["fp32"][1][:4]).mean()), 4)
        variant = lambda name: name.split()[-1] if name.startswith("ort-genai") else name.split()[1]
        rows = [{"variant": name, "greedy_agreement_256": agree(outs), "teacher_forced_top1_256": tf(variant(name)),
                 "val_loss_delta": round(scores[variant(name)][0] - scores["fp32"][0], 5)}
                for name, outs in runs.items()]
        return {"preset": cfg.name, "steps": steps, "train_s": round(train_s, 1),
                "best_val_loss_torch": round(result.best_val_loss, 4),
                "onnx_fp32_val_loss_lmforge": round(val_loss(out, va, max_windows=32), 5),
                "onnx_fp32_val_loss_genai_graph": round(scores["fp32"][0], 5), "rows": rows}


def markdown(report: dict) -> str:
    keys = ["name", "tokens_per_s", "ttft_ms", "p50_ms", "p99_ms", "batch8_tokens_per_s", "weight_mb",
            "bound_share"]
    rows = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    rows += ["| " + " | ".join(str(r.get(k, "—")) for k in keys) + " |" for r in report["results"]]
    extra = [f"- profile {p['file']} at cache length {p['past']}: {p['ms_per_step']} ms/step, kernel time "
             + ", ".join(f"{k} {v}" for k, v in p["kernel_time"].items()) for p in report.get("profile") or []]
    out = rows + ["", *(f"- {k}: {v}" for k, v in report["summary"].items()), *extra]
    q = report.get("quality") or {}
    if q.get("rows"):
        qkeys = ["variant", "greedy_agreement_256", "teacher_forced_top1_256", "val_loss_delta"]
        out += ["", (f"Quality on trained weights: {q['preset']} trained {q['steps']} steps here "
                    f"({q['train_s']} s; best val loss {q['best_val_loss_torch']}; onnx fp32 val loss "
                    f"{q['onnx_fp32_val_loss_lmforge']} lmforge graph, {q['onnx_fp32_val_loss_genai_graph']} "
                    f"genai graph); agreement and deltas against fp32:"), "",
                "| " + " | ".join(qkeys) + " |", "|" + " --- |" * len(qkeys),
                *("| " + " | ".join(str(r[k]) for k in qkeys) + " |" for r in q["rows"])]
    elif q:
        out += ["", f"- quality: {q}"]
    return "\n".join(out)


def median_row(rows: list[dict]) -> dict:
    """One contender's rows from several rounds: the median of each figure, and how many rounds."""
    out = {"name": rows[0]["name"], "rounds": len(rows)}
    for k, v in rows[0].items():
        if k != "name":
            out[k] = None if v is None else round(float(np.median([r[k] for r in rows])), 3)
    return out


LMFORGE_FILES = {"ort-fp32": "model.fast.onnx", "ort-int8": "model.fast.int8.onnx", "ort-int4": "model.fast.int4.onnx",
                 "ort-fp32-portable": "model.onnx", "ort-int8-portable": "model.int8.onnx"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge bench decode", description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="32 new tokens, skip torch-nocache and the portable graph")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--profile", action="store_true", help="add an onnxruntime profile of one decode step")
    p.add_argument("--train-steps", type=int, default=300,
                   help="steps of shakespeare-char training for the quality rows (0: skip them)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of the onnxruntime contenders, medians reported (default 3; 1 with --quick)")
    p.add_argument("--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora")
    args = p.parse_args(argv)
    n = 32 if args.quick and args.new_tokens == 256 else args.new_tokens
    args.rounds = args.rounds or (1 if args.quick else 3)
    if n < 2:
        p.error("--new-tokens must be >= 2")
    import onnxruntime as ort
    import torch

    from lmforge.models.gpt import GPT, GPTConfig

    try:
        import onnxruntime_genai as og
    except ImportError:
        og = None
    torch.set_num_threads(args.threads)
    bandwidth = memory_bandwidth(args.threads)
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
        fp32_bytes = weight_bytes(model_dir / "model.fast.onnx")
        sizes = {r["name"]: fp32_bytes for r in results}  # torch and transformers read fp32 weights
        # the onnxruntime contenders (lmforge's Generator, ort-genai) in `rounds` rounds, each round in its own
        # shuffled order, so a load change on a shared machine does not land on one contender; medians reported
        runs = [("ort-fp32", lambda: bench_ort(model_dir, "fp32", n, args.threads, None)),
                ("ort-int8", lambda: bench_ort(model_dir, "int8", n, args.threads, None)),
                ("ort-int4", lambda: bench_ort(model_dir, "int4", n, args.threads, None))]
        if not args.quick:
            runs += [("ort-fp32-portable", lambda: bench_ort(model_dir, "fp32", n, args.threads, False)),
                     ("ort-int8-portable", lambda: bench_ort(model_dir, "int8", n, args.threads, False))]
        if og is not None:
            runs += [(f"ort-genai-{v}", lambda v=v: bench_genai(model_dir, v, n, args.threads))
                     for v in ("fp32", "int8", "int4")]
        rounds: dict[str, list[dict]] = {name: [] for name, _ in runs}
        gens = {}
        for r in range(args.rounds):
            order = list(runs)
            random.Random(r).shuffle(order)
            for name, fn in order:
                row, extra = fn()
                rounds[name].append(row)
                if isinstance(extra, int):
                    sizes[name] = extra
                else:
                    gens[name] = extra
        results += [median_row(rows) for rows in rounds.values()]
        gen32 = gens["ort-fp32"]
        sizes.update({name: weight_bytes(model_dir / f) for name, f in LMFORGE_FILES.items()})
        files = ["model.fast.onnx", "model.fast.int8.onnx", "model.fast.int4.onnx"] + (
            ["model.genai.int4.onnx"] if og else [])
        profile = [profile_step(model_dir, f, args.threads) for f in files] if args.profile else None
    for r in results:  # decode steps at p50 against bandwidth / weight bytes per step
        if r["name"] in sizes:
            r["weight_mb"] = round(sizes[r["name"]] / 1e6, 1)
            r["bound_share"] = round((1e3 / r["p50_ms"]) / (bandwidth * 1e9 / sizes[r["name"]]), 2)
    by = {r["name"]: r["tokens_per_s"] for r in results}
    by8 = {r["name"]: r["batch8_tokens_per_s"] for r in results}
    lm = {k: v for k, v in by.items() if k.startswith("ort-") and not k.startswith("ort-genai")}
    ga = {k: v for k, v in by.items() if k.startswith("ort-genai")}
    summ = {"ort-fp32 / hf-generate": round(by["ort-fp32"] / by["hf-generate"], 2) if hf else None,
            "ort-int8 / ort-fp32": round(by["ort-int8"] / by["ort-fp32"], 2),
            "ort-int4 / ort-fp32": round(by["ort-int4"] / by["ort-fp32"], 2)}
    if ga:
        fast_lm, fast_ga = max(lm, key=lm.get), max(ga, key=ga.get)
        summ.update({
            "lmforge fp32 / ort-genai fp32 (batch 1 tokens/s)": round(by["ort-fp32"] / by["ort-genai-fp32"], 2),
            "lmforge fp32 / ort-genai fp32 (batch 8 tokens/s)": round(by8["ort-fp32"] / by8["ort-genai-fp32"], 2),
            "lmforge int8 / ort-genai int8 (batch 1 tokens/s)": round(by["ort-int8"] / by["ort-genai-int8"], 2),
            f"lmforge fastest ({fast_lm}) / ort-genai fastest ({fast_ga}) (batch 1)": round(lm[fast_lm] / ga[fast_ga], 2),
        })
    else:
        summ["ort-genai"] = "not installed (pip install onnxruntime-genai): no ort-genai rows"
    summ[f"memory bandwidth ({args.threads}-thread numpy copy of 512 MB, read + write, GB/s)"] = round(bandwidth, 1)
    summ["bound_share"] = "(1000 / p50_ms) / (bandwidth / weight bytes per decode step), batch 1"
    summ["shape"] = f"gpt {SHAPE}, batch 1, prompt {PROMPT_LEN}, {n} new tokens greedy, {args.threads} threads"
    summ["rounds"] = (f"onnxruntime rows: median of {args.rounds} rounds, each in a shuffled order; "
                      "torch / transformers rows: one run")
    quality = trained_quality(args.train_steps, args.threads, args.corpora) if args.train_steps and og else None
    report = {"results": results, "summary": summ,
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
                         f"python {platform.python_version()}, onnxruntime {ort.__version__}, "
                         f"onnxruntime-genai {og.__version__ if og else None}, torch {torch.__version__}",
              "load_average": os.getloadavg(), "provider": gen32.provider}
    if quality:
        report["quality"] = quality
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
