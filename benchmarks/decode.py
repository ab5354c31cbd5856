"""Decoding speed, side by side in one run: torch without and with a KV cache, transformers' generate,
lmforge.runtime.Generator on the exported directory (fp32, int8 and int4 fast graphs), onnxruntime-genai's own loop
on the genai graphs of the same directory (same weights), and onnxruntime-genai on the model its own builder makes
(`python -m onnxruntime_genai.models.builder`) from a random-init Hugging Face Phi model of the same shape and FLOPs
per token, at fp32, int8 and int4: the model a user of onnxruntime-genai would decode with.

Reference shape: random-init lmforge gpt, 6 layers x 6 heads x 384 wide, vocab 8192, context 512 (~14M params);
16-token prompts, 256 new greedy tokens, 2 threads, batch 1 and batch 8.

Method: the onnxruntime contenders take turns, each turn alone. Each round opens one decoding of the same prompts
per contender (prefill + first token, timed: ttft), then advances them in sweeps of --block decode steps each
(default: the whole generation in one turn), every sweep visiting the contenders in a fresh random order, until
all have made the round's tokens; before each timed turn the benchmark waits --pause seconds, untimed. Why turns
and the pause: an onnxruntime session's intra-op threads spin for a while after each call (allow_spinning, on by
default in every contender, as in an app), so the threads of the contender that ran last take the CPU from the
one that runs next: three sessions taking turns every 4 steps run the fp32 graph at 3.3x its solo ms/step,
whole-generation turns with the pause at its solo speed (`python benchmarks/spinning.py`, docs/decode.md). Sweeps of a few steps (--block 4 --pause 0, the
earlier default) spread a load change over every contender but measure mostly this interference. Per round and
contender: decode ms/step = the median over its sweeps; tokens/s = tokens /
(ttft + (new tokens - 1) x that median). A ratio is computed per round (both contenders from the same sweeps) and
reported as the median over rounds with the min-max beside it. The load is measured over each phase and written
beside every figure: the 1-minute load average, and the CPU time other processes used while it ran
(/proc/stat busy time minus this process's own, as a share of all cores).

Per contender: tokens/s (prefill included), time to first token, decode ms/step (median, p90 of sweep averages),
batch-8 tokens/s, and the share of the weight-bytes bound (this machine's memory bandwidth, measured in the same
run, over the bytes of weights one decode step reads). Greedy tokens: every lmforge row is checked token for token
against its verified graph run through lmforge.runtime.scoring.greedy_ids (the logits path), every ort-genai row
over lmforge's graph against lmforge's row of the same weights.

Quality on trained weights (never random init): shakespeare-char trained here for --train-steps steps through
lmforge's own preparation and training, exported; each quantised variant's greedy agreement with fp32 over 256
tokens (8 prompts x 32), its teacher-forced top-1 agreement over 256 val positions, and its val-loss delta.

    python benchmarks/decode.py [--quick] [--json] [--profile] [--rounds N] [--block N] [--pause S] [--train-steps N]
Writes benchmarks/results/decode-<time>.json and .md and prints the table (or the JSON with --json)."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "vocab_size": 8192, "block_size": 512}
PROMPT_LEN = 16
VARIANTS = ("fp32", "int8", "int4")
CORPORA = Path(os.environ.get("LMFORGE_CORPORA") or Path(__file__).resolve().parents[2] / "shared" / "corpora")


# -- load -------------------------------------------------------------------------------------------------------
class LoadMeter:
    """The load while a phase runs: the 1-minute load average at its start and end, and the CPU time every
    other process used meanwhile (/proc/stat busy jiffies minus this process's own CPU time), as a share of all
    cores. On a machine without /proc/stat only the load average is given."""

    def __init__(self):
        self.t0, self.load0, self.busy0, self.own0 = time.perf_counter(), os.getloadavg()[0], _busy(), _own()

    def read(self) -> dict:
        elapsed = time.perf_counter() - self.t0
        out = {"loadavg_start": round(self.load0, 2), "loadavg_end": round(os.getloadavg()[0], 2),
               "seconds": round(elapsed, 1)}
        busy = _busy()
        if busy is not None and self.busy0 is not None and elapsed > 0:
            others = (busy - self.busy0) - (_own() - self.own0)
            out["background_cpu"] = round(max(0.0, others) / (elapsed * (os.cpu_count() or 1)), 3)
        return out


def _busy() -> float | None:
    """Seconds of CPU time all processes spent (user, nice, system, irq, softirq, steal), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own() -> float:
    t = os.times()
    return t.user + t.system


def md_table(rows: list[dict], keys: list[str] | None = None, fmt=lambda key, value: str(value)) -> list[str]:
    """A markdown table of `rows` (dicts), one column per key (default: the first row's), each cell fmt(key, value)."""
    keys = keys or list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys),
            *("| " + " | ".join(fmt(k, r[k]) for k in keys) + " |" for r in rows)]


def load_text(load: dict) -> str:
    bg = f", others used {100 * load['background_cpu']:.0f}% of the CPUs" if "background_cpu" in load else ""
    return f"load {load['loadavg_start']}-{load['loadavg_end']}{bg}"


# -- torch and transformers (one run each, not interleaved) -----------------------------------------------------
def summary(name: str, stamps: list[float], start: float, batch8_tokens_per_s: float | None) -> dict:
    """stamps: the time each new token became available (batch 1, one call started at `start`)."""
    steps = np.diff(stamps) * 1e3
    return {"name": name, "tokens_per_s": round(len(stamps) / (stamps[-1] - start), 1),
            "ttft_ms": round((stamps[0] - start) * 1e3, 2),
            "step_ms": round(float(np.percentile(steps, 50)), 3),
            "step_p90_ms": round(float(np.percentile(steps, 90)), 3),
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


# -- the model directories ---------------------------------------------------------------------------------------
def reference_gpt():
    """The reference model every decode benchmark measures: lmforge's GPT of SHAPE, random init, torch seed 0."""
    import torch

    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(**SHAPE)).eval()


def export_reference(model, directory: Path, fp32_only: bool = False) -> Path:
    """The model directory for `model`, with a char tokenizer of exactly vocab_size tokens and no EOS (fp32_only:
    no quantised or optimised graphs)."""
    from lmforge.data.tokenize import train_char
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir

    tok = train_char(["".join(chr(0x4E00 + i) for i in range(SHAPE["vocab_size"] - 4))])
    tok.save(str(directory / "tokenizer.json"))
    manifest = {"name": "bench", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    config = (ExportConfig(int8=False, optimize=False, rows_graph=True) if fp32_only
              else ExportConfig(int4=True, rows_graph=True))
    out, _ = export_model_dir(model, directory / "tokenizer.json", directory / "model", manifest, config)
    return out


def peer_hf_model(directory: Path, seed: int = 0) -> Path:
    """A random-init Hugging Face Phi model (PhiForCausalLM, no download) of the reference shape and FLOPs per
    token: 6 layers, 384 wide, 6 heads, MLP 4x (1536) with GELU, LayerNorm, vocab 8192, 512 positions; Phi's
    rotary position embedding (half the head) instead of learned positions, parallel attention and MLP, an
    untied LM head (the same MatMul as lmforge's tied one). Saved with a minimal tokenizer, which the builder
    insists on reading."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = PhiConfig(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["n_embd"], num_hidden_layers=SHAPE["n_layer"],
                    num_attention_heads=SHAPE["n_head"], num_key_value_heads=SHAPE["n_head"],
                    intermediate_size=4 * SHAPE["n_embd"], max_position_embeddings=SHAPE["block_size"],
                    partial_rotary_factor=0.5, hidden_act="gelu_new", tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)
    PhiForCausalLM(cfg).eval().save_pretrained(directory)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(directory)
    return directory


def build_peer(hf_dir: Path, out_dir: Path, precision: str, python: str = sys.executable) -> Path:
    """onnxruntime-genai's model builder, run as its users run it, for the CPU at `precision`, by `python` (an
    interpreter whose transformers the builder accepts: 0.18's imports Qwen3_5 classes, transformers 5)."""
    cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", "cpu", "-c", str(out_dir.parent / "builder-cache")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai's builder failed ({' '.join(cmd)}): {done.stderr[-800:]}")
    return out_dir


# -- contenders: one decoding of one batch of prompts, advanced a block of steps at a time --------------------------
@dataclass
class Lane:
    """One contender's decoding of one batch of prompts; opening it ran the prefill and made the first token."""
    advance: Callable[[int], None]  # make k more tokens per row
    tokens: Callable[[], list[list[int]]]  # the ids made so far, per row


@dataclass
class Contender:
    name: str
    open: Callable[[list[list[int]], int], Lane]  # (prompt ids per row, new tokens) -> a lane
    weight_bytes: int
    group: str  # lmforge | ort-genai (lmforge's graph) | ort-genai builder
    variant: str
    runtime: object = field(default=None, repr=False)
    batch_runtime: object = field(default=None, repr=False)  # what decodes at batch 8, where not `runtime`


def lmforge_contender(name: str, model_dir: Path, variant: str, threads: int, fast: bool | None,  # + lookahead
                      lookahead: int = 0) -> Contender:
    """lmforge.runtime.Generator as an app streams text with it, greedy: stream() at batch 1 (a text piece per
    token, or per verified run with lookahead), stream_batch() at batch 8 (a RowEvent per row and step).
    lookahead: Generator's (0: one graph call per token, the rows that compare loops on the same graph); with it,
    batch_lookahead (at batch 8 the fp32 rows speculate together through the rows graph, where it pays)."""
    from lmforge.runtime import Generator, RowRequest

    gen = Generator(model_dir, variant=variant, threads=threads, fast=fast, lookahead=lookahead)
    # at batch 8 a generator that lets the batch speculate too (fp32, where it pays); its own, since a generator
    # with batch_lookahead stops its sessions' threads spinning after each run, which costs a stream at batch 1
    gen8 = Generator(model_dir, variant=variant, threads=threads, fast=fast, lookahead=lookahead,
                     batch_lookahead=True) if lookahead else gen

    def open_(prompts: list[list[int]], n: int) -> Lane:
        made: list[list[int]] = [[] for _ in prompts]
        texts = [gen.tokenizer.decode(p) for p in prompts]  # char tokenizer: one char per id, and back
        B = len(prompts)
        if B == 1:
            pieces = gen.stream(texts[0], max_new_tokens=n, temperature=0)

            def advance(k: int) -> None:
                want = len(made[0]) + k  # every id of this tokenizer is one whole character (a run: several)
                while len(made[0]) < want:
                    made[0] += [gen.tokenizer.token_to_id(c) for c in next(pieces)]
        else:
            events = gen8.stream_batch([RowRequest(t, max_new_tokens=n, temperature=0) for t in texts])
            target = [0]

            def advance(k: int) -> None:  # until every row has k tokens more (a verified run: several in one event)
                target[0] += k
                while min(map(len, made)) < target[0]:
                    ev = next(events)
                    made[ev.row] += ev.token_ids

        advance(1)
        return Lane(advance, lambda: made)

    file = gen.dir.onnx_path(("fast-" + variant if variant != "fp32" else "fast") if gen.fast else variant)
    return Contender(name, open_, weight_bytes(file), "lmforge", variant, gen, gen8)


def genai_contender(name: str, config, weights: int, group: str, variant: str, threads: int) -> Contender:
    """onnxruntime-genai's own loop as its streaming users run it: append_tokens, then generate_next_token and
    get_next_tokens per token, greedy, exactly `n` new tokens (min_length = max_length)."""
    import onnxruntime_genai as og

    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                                         "inter_op_num_threads": 1}}}}))
    model = og.Model(config)

    def open_(prompts: list[list[int]], n: int) -> Lane:
        ids = np.array(prompts, np.int32)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=len(prompts), max_length=ids.shape[1] + n,
                                  min_length=ids.shape[1] + n)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        made: list[list[int]] = [[] for _ in prompts]

        def advance(k: int) -> None:
            for _ in range(k):
                gen.generate_next_token()
                for row, t in zip(made, gen.get_next_tokens()):
                    row.append(int(t))

        advance(1)
        return Lane(advance, lambda: made)

    return Contender(name, open_, weights, group, variant, model)


# -- the interleaved measurement --------------------------------------------------------------------------------------
def interleave(contenders: list[Contender], batch: int, n: int, rounds: int, block: int, seed: int,  # + pause
               pause: float = 0.05) -> dict:
    """Decode `rounds` rounds of `batch` prompts x `n` new tokens with every contender, interleaved sweep by
    sweep (module docstring). Returns per contender its per-round ttft (s) and per-sweep ms/step, the tokens of
    round 0, and the load over the phase."""
    rng = random.Random(seed)
    ids_rng = np.random.default_rng(seed)
    meter = LoadMeter()
    for c in contenders:  # warm up: sessions, allocators, the first-call costs
        c.open([[5] * PROMPT_LEN] * batch, 4).advance(2)
    ttft = {c.name: [] for c in contenders}
    steps = {c.name: [] for c in contenders}  # [round][sweep] ms per step
    tokens = {}
    for r in range(rounds):
        prompts = ids_rng.integers(4, SHAPE["vocab_size"], (batch, PROMPT_LEN)).tolist()
        order = list(contenders)
        rng.shuffle(order)
        lanes = {}
        for c in order:
            time.sleep(pause)  # the last contender's spinning threads go idle (module docstring)
            t = time.perf_counter()
            lanes[c.name] = c.open(prompts, n)
            ttft[c.name].append(time.perf_counter() - t)
            steps[c.name].append([])
        left = n - 1
        while left > 0:
            k = min(block or left, left)
            rng.shuffle(order)
            for c in order:
                time.sleep(pause)
                t = time.perf_counter()
                lanes[c.name].advance(k)
                steps[c.name][-1].append((time.perf_counter() - t) * 1e3 / k)
            left -= k
        if r == 0:
            tokens = {name: lane.tokens() for name, lane in lanes.items()}
    return {"ttft": ttft, "steps": steps, "tokens": tokens, "load": meter.read(), "batch": batch, "n": n,
            "rounds": rounds, "block": block or n - 1, "pause": pause}


def call_stats(contenders: list[Contender], batch: int = 1) -> dict[str, dict]:
    """Per lmforge contender, from its Generator's last finished session (the phase's last round, last lane):
    graph calls (decode calls + prefills) per token and draft tokens taken per verifying call."""
    out = {}
    for c in contenders:
        st = getattr(c.batch_runtime if batch > 1 and c.batch_runtime else c.runtime, "last_stats", None)
        if st and st["tokens"]:
            out[c.name] = {"calls_per_token": round((st["calls"] + st["prefills"]) / st["tokens"], 3),
                           "accepted_per_verify": round(st["accepted"] / max(1, st["verify_calls"]), 2)}
    return out


def rows_of(phase: dict) -> dict[str, dict]:
    """Per contender: medians over rounds of ttft, decode ms/step (each round's median over its sweeps), p90 of
    the sweep averages, and tokens/s; plus per-round tokens/s for the paired ratios."""
    out = {}
    B, n = phase["batch"], phase["n"]
    for name, per_round in phase["steps"].items():
        step = np.array([np.median(s) for s in per_round])  # ms per step, per round
        ttft = np.array(phase["ttft"][name]) * 1e3
        tps = B * n / ((ttft + (n - 1) * step) / 1e3)
        out[name] = {"tokens_per_s": round(float(np.median(tps)), 1), "ttft_ms": round(float(np.median(ttft)), 2),
                     "step_ms": round(float(np.median(step)), 3),
                     "step_p90_ms": round(float(np.percentile(np.concatenate(per_round), 90)), 3),
                     "per_round_tokens_per_s": [round(float(x), 1) for x in tps]}
    return out


def ratio(rows: dict, a: str, b: str) -> dict:
    """tokens/s of a over b, per round (both from the same sweeps): the median and the min-max over rounds."""
    r = np.array(rows[a]["per_round_tokens_per_s"]) / np.array(rows[b]["per_round_tokens_per_s"])
    return {"a": a, "b": b, "ratio": round(float(np.median(r)), 3), "min": round(float(r.min()), 3),
            "max": round(float(r.max()), 3), "rounds": len(r)}


def same_tokens(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two runs made the same id (rows compared up to the shorter)."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return round(sum(x == y for x, y in pairs) / max(1, len(pairs)), 4)


# -- what each loop costs per token, robust to load ---------------------------------------------------------------------
def loop_cost(directory: Path, n: int = 256, rounds: int = 7, batches: tuple[int, ...] = (1, 8)) -> dict:
    """CPU microseconds per token of the calling thread (time.thread_time, which a busy machine does not inflate the
    way it does wall time) on a 1-layer, 64-wide model with the reference vocabulary and one intra-op thread, so
    the graph's own run is short and every loop's own cost shows, at each batch size (per step: `batch` tokens):
    the graph alone (the decode state's step with its inputs updated in place, numpy argmax: the floor),
    lmforge's Generator.stream (text pieces; batch 1) or stream_batch (a RowEvent per row and step), and
    onnxruntime-genai's loop over the same directory's genai graph (ids). Minimum over `rounds` runs of `n` tokens;
    the loops run in turn within each round, so a load change lands on all of them."""
    from lmforge.runtime import Generator, RowRequest

    global SHAPE
    saved, SHAPE = SHAPE, {**SHAPE, "n_layer": 1, "n_head": 2, "n_embd": 64}
    try:
        model_dir = export_reference(reference_gpt(), directory)
    finally:
        SHAPE = saved
    gen = Generator(model_dir, threads=1, lookahead=0)  # a graph call per token: the loops compared call for call
    rng = np.random.default_rng(0)
    prompts = lambda b: rng.integers(4, SHAPE["vocab_size"], (b, PROMPT_LEN)).tolist()  # noqa: E731

    def graph(b: int) -> float:
        dec = gen.decoder(b, PROMPT_LEN + n)
        logits = dec.prefill(prompts(b))
        t = time.thread_time()
        for _ in range(n - 1):
            logits = dec.step(logits.argmax(-1))
        return time.thread_time() - t

    def lmforge(b: int) -> float:
        texts = [gen.tokenizer.decode(p) for p in prompts(b)]
        if b == 1:
            events = gen.stream(texts[0], max_new_tokens=n, temperature=0)
        else:
            events = gen.stream_batch([RowRequest(x, max_new_tokens=n, temperature=0) for x in texts])
        for _ in range(b):  # the first token (prefill)
            next(events)
        t = time.thread_time()
        for _ in events:
            pass
        return time.thread_time() - t

    loops = {"graph + numpy argmax (the floor)": graph,
             "lmforge Generator.stream / stream_batch": lmforge}
    try:
        import onnxruntime_genai as og

        from lmforge.export.genai import select_graph

        cfg = select_graph(model_dir, "fp32")
        cfg.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": 1,
                                                                          "inter_op_num_threads": 1}}}}))
        model = og.Model(cfg)

        def genai(b: int) -> float:
            params = og.GeneratorParams(model)
            params.set_search_options(do_sample=False, batch_size=b, max_length=PROMPT_LEN + n,
                                      min_length=PROMPT_LEN + n)
            g = og.Generator(model, params)
            g.append_tokens(np.array(prompts(b), np.int32))
            g.generate_next_token()
            t = time.thread_time()
            while not g.is_done():
                g.generate_next_token()
                g.get_next_tokens()
            return time.thread_time() - t

        loops["onnxruntime-genai loop (genai graph)"] = genai
    except ImportError:
        pass
    meter = LoadMeter()
    best = {(k, b): float("inf") for b in batches for k in loops}
    for _ in range(rounds):
        for b in batches:
            for k, f in loops.items():
                best[k, b] = min(best[k, b], f(b))
    rows = []
    for b in batches:
        floor = best["graph + numpy argmax (the floor)", b] / (n - 1) * 1e6
        for k in loops:
            us = best[k, b] / (n - 1) * 1e6
            rows.append({"loop": k, "batch": b, "cpu_us_per_step": round(us, 1),
                         "over_floor_us": round(us - floor, 1), "over_floor_us_per_row": round((us - floor) / b, 2)})
    return {"load": meter.read(), "shape": "gpt 1 layer x 64, vocab 8192, 1 thread", "rounds": rounds,
            "new_tokens": n, "rows": rows}


# -- onnxruntime's profiler, the weight-bytes bound -------------------------------------------------------------------
def bound_call(sess, batch: int = 1, width: int = 1, past: int = 0) -> tuple:
    """(IO binding, what it points into) of one decode call of `sess`, a fast, genai or builder graph: `batch` rows
    of `width` tokens each after `past` cached positions, its caches [batch, heads, past + width, head_dim] zeroed
    and bound as both past and present, the logits [batch, width, vocab] bound to an array once (as the runtimes
    bind them), any other output allocated by onnxruntime. Keep the second item alive while the binding runs: the
    bound OrtValues only point into those arrays."""
    import onnxruntime as ort

    binding, keep = sess.io_binding(), []
    inputs = {i.name: i for i in sess.get_inputs()}
    total = past + width
    feeds = {"input_ids": np.zeros((batch, width), np.int64),
             "position_ids": np.tile(np.arange(past, total, dtype=np.int64), (batch, 1)),
             "seqlens_k": np.full(batch, total - 1, np.int32), "total_sequence_length": np.array(total, np.int32),
             "attention_mask": np.ones((batch, total), np.int64)}
    for name, value in feeds.items():
        if name in inputs:
            keep.append(ort.OrtValue.ortvalue_from_numpy(value))
            binding.bind_ortvalue_input(name, keep[-1])
    for name, meta in inputs.items():
        if name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in meta.type else np.float32
            keep.append(ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, meta.shape[1], total, meta.shape[3]), dtype)))
            binding.bind_ortvalue_input(name, keep[-1])
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), keep[-1])
    for out in sess.get_outputs():
        if out.name == "logits":
            keep.append(ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, width, out.shape[-1]), np.float32)))
            binding.bind_ortvalue_output(out.name, keep[-1])
        elif not out.name.startswith("present"):
            binding.bind_output(out.name)
    return binding, keep


def profile_step(path: Path, threads: int, past: int = 200, steps: int = 100, top_nodes: int = 0) -> dict:
    """onnxruntime's profiler over `steps` batch-1 decode steps of a fast, genai or builder graph at cache length
    `past`: {op type: share of kernel time} (and the `top_nodes` costliest nodes), plus wall ms per step."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.enable_profiling = threads, 1, True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "lmforge-decode-profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    binding, _keep = bound_call(sess, 1, 1, past)
    for _ in range(10):
        sess.run_with_iobinding(binding)
    start = time.perf_counter()
    for _ in range(steps):
        sess.run_with_iobinding(binding)
    ms = (time.perf_counter() - start) / steps * 1e3
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0) + e["dur"]
            by_node[e["name"][:-len("_kernel_time")]] = by_node.get(e["name"][:-len("_kernel_time")], 0) + e["dur"]
    total = sum(by_op.values())
    out = {"file": str(path.name), "past": past, "ms_per_step": round(ms, 3), "nodes": len(by_node),
           "kernel_ms_per_step": round(total / 1e3 / (steps + 10), 3),
           "kernel_time": {k: f"{100 * v / total:.1f}%" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}
    if top_nodes:
        out["top_nodes"] = {k: f"{100 * v / total:.1f}%"
                            for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:top_nodes]}
    return out


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
    (token and position embeddings) is read one row at a time, and rotary cos/sin caches one row."""
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
        if uses and all(op == "Gather" and i == 0 for op, i in uses) or t.name in ("cos_cache", "sin_cache"):
            n = n // max(t.dims[0], 1)  # one row per token
        total += n
    return total


# -- quality on trained weights ----------------------------------------------------------------------------------------
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


def train_shakespeare(steps: int, threads: int, corpora: Path, work: Path):
    """shakespeare-char trained `steps` steps through lmforge's preparation and train() in `work`, exported (every
    fast variant, int4 included) to work/model: (model, model directory, val tokens, config, train result, s)."""
    import torch

    from lmforge.core.config import load_config
    from lmforge.data.prepare import prepare_corpus
    from lmforge.data.shards import open_shard
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models import build_model, model_spec
    from lmforge.training.train import train

    source = corpora / "tinyshakespeare.txt"
    cfg = load_config("shakespeare-char", {"data.source": str(source), "train.max_steps": steps,
                                           "train.eval_interval": max(1, steps // 2), "train.threads": threads,
                                           "train.device": "cpu"})
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
                              ExportConfig(optimize=False, int4=True, rows_graph=True))
    return model, out, va, cfg, result, train_s


def trained_quality(steps: int, threads: int, corpora: Path) -> dict:
    """shakespeare-char trained `steps` steps through lmforge's preparation and train(), exported with its genai
    graphs: per quantised variant, greedy agreement with fp32 over 8 prompts x 32 tokens (each runtime's own
    loop), teacher-forced top-1 agreement over 256 val positions, and val-loss delta on 32 val windows."""
    from lmforge.export.genai import GENAI_FILES
    from lmforge.models import model_spec
    from lmforge.runtime import Generator
    from lmforge.runtime.scoring import greedy_ids, val_loss, windows

    if not (corpora / "tinyshakespeare.txt").is_file():
        return {"skipped": f"{corpora / 'tinyshakespeare.txt'} not found"}
    with tempfile.TemporaryDirectory() as tmp:
        model, out, va, cfg, result, train_s = train_shakespeare(steps, threads, corpora, Path(tmp))
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


# -- the report ---------------------------------------------------------------------------------------------------------
ROW_KEYS = ["name", "tokens_per_s", "ttft_ms", "step_ms", "step_p90_ms", "batch8_tokens_per_s", "calls_per_token",
            "accepted_per_verify", "batch8_calls_per_token", "weight_mb",
            "bound_share", "greedy_same", "batch8_greedy_same", "quality"]


def markdown(report: dict) -> str:
    out = [f"`lmforge bench decode {' '.join(report.get('argv', []))}` ({report.get('time', '')}). "
           f"Load: batch 1 phase {load_text(report['load']['batch1'])}; batch 8 phase "
           f"{load_text(report['load']['batch8'])}.", "",
           "| " + " | ".join(ROW_KEYS) + " |", "|" + " --- |" * len(ROW_KEYS)]
    out += ["| " + " | ".join(str(r.get(k, "—") if r.get(k) is not None else "—") for k in ROW_KEYS) + " |"
            for r in report["results"]]
    out += ["", "| ratio (tokens/s) | batch | median over rounds | min-max | rounds | load |",
            "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r['label']} | {r['batch']} | {r['ratio']} | {r['min']}-{r['max']} | {r['rounds']} | "
            f"{load_text(report['load']['batch1' if r['batch'] == 1 else 'batch8'])} |" for r in report["ratios"]]
    out += loop_cost_table(report.get("loop_cost"))
    out += ["", *(f"- {k}: {v}" for k, v in report["summary"].items())]
    for p in report.get("profile") or []:
        out.append(f"- profile {p['file']} at cache length {p['past']}: {p['ms_per_step']} ms/step, {p['nodes']} "
                   "nodes, kernel time " + ", ".join(f"{k} {v}" for k, v in list(p["kernel_time"].items())[:6]))
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


def loop_cost_table(lc: dict | None) -> list[str]:
    if not lc:
        return []
    return ["", f"What each loop costs per decode step ({lc['shape']}; CPU time of the calling thread, minimum of "
                f"{lc.get('rounds', 5)} runs of {lc.get('new_tokens', 256)} tokens; {load_text(lc['load'])}):", "",
            "| loop | batch | CPU us/step | over the floor | over the floor, per row |", "| --- | --- | --- | --- | --- |",
            *(f"| {r['loop']} | {r.get('batch', 1)} | {r.get('cpu_us_per_step', r.get('cpu_us_per_token'))} | "
              f"{r['over_floor_us']} | {r.get('over_floor_us_per_row', r['over_floor_us'])} |" for r in lc["rows"])]


def write_report(report: dict, prefix: str = "decode", render: Callable[[dict], str] | None = None) -> Path:
    """benchmarks/results/<prefix>-<time>.json and .md, each written whole or not at all."""
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    for suffix, text in ((".json", json.dumps(report, indent=2)), (".md", (render or markdown)(report) + "\n")):
        tmp = stem.with_name(f".{stem.name}{suffix}.tmp")
        tmp.write_text(text)
        os.replace(tmp, stem.with_suffix(suffix))
    return stem


def publish(report: dict, prefix: str, render: Callable[[dict], str], shown: str | None = None) -> Path:
    """write_report, then the report on stdout (`shown`, else its markdown) and where it went on stderr."""
    stem = write_report(report, prefix, render)
    print(shown if shown is not None else render(report))
    print(f"\nwritten: {stem}.json, {stem}.md", file=sys.stderr)
    return stem


def quality_note(name: str, quality: dict) -> str | None:
    """The trained-model quality figures of the variant a speed row runs (the same graphs, trained weights)."""
    rows = {r["variant"]: r for r in (quality or {}).get("rows", [])}
    c = name.split("-")
    if name.startswith("lmforge-") and c[1] in ("int8", "int4"):
        r = rows.get(f"lmforge {c[1]} (model.fast.{c[1]}.onnx)")
    elif name.startswith("ort-genai-lmforge-"):
        r = rows.get(f"ort-genai {c[-1]}")
    else:
        return "fp32 reference" if name.startswith(("lmforge-fp32", "ort-genai-lmforge-fp32")) else None
    return None if r is None else (f"loss {r['val_loss_delta']:+.5f}, top-1 {r['teacher_forced_top1_256']}, "
                                   f"greedy {r['greedy_agreement_256']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lmforge bench decode", description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="64 new tokens, 5 rounds, no torch/transformers/portable rows (the same quality rows)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--profile", action="store_true", help="add onnxruntime's per-node profile of one decode step")
    p.add_argument("--train-steps", type=int, default=300,
                   help="steps of shakespeare-char training for the quality rows (0: skip them)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per batch size (default 7; 5 --quick)")
    p.add_argument("--block", type=int, default=0, help="decode steps a contender makes per turn in a sweep "
                   "(default 0: the whole generation in one turn)")
    p.add_argument("--pause", type=float, default=0.05, help="seconds waited, untimed, before each timed turn "
                   "(onnxruntime's spinning threads of the last contender go idle)")
    p.add_argument("--no-builder", action="store_true", help="skip onnxruntime-genai's builder models")
    p.add_argument("--builder-python", default=os.environ.get("LMFORGE_BUILDER_PYTHON", sys.executable),
                   help="the Python that runs onnxruntime-genai's builder (default $LMFORGE_BUILDER_PYTHON, else "
                        "this one); 0.18's builder needs transformers 5")
    p.add_argument("--corpora", type=Path, default=CORPORA, help="where tinyshakespeare.txt is (default "
                   "$LMFORGE_CORPORA, else ../shared/corpora beside the repository)")
    p.add_argument("--loop-cost", action="store_true",
                   help="only the loop-cost phase (CPU time per decode step of each loop on a 1-layer model, batch 1 "
                        "and 8; about a minute); writes decode-loop-<time>.json/.md")
    args = p.parse_args(argv)
    if args.loop_cost:
        return main_loop_cost(args)
    n = 64 if args.quick and args.new_tokens == 256 else args.new_tokens
    args.rounds = args.rounds or (5 if args.quick else 7)
    if n < 2:
        p.error("--new-tokens must be >= 2")
    if args.block < 0 or args.rounds < 1 or args.pause < 0:
        p.error("--block and --pause must be >= 0, --rounds >= 1")
    import onnxruntime as ort
    import torch

    try:
        import onnxruntime_genai as og
    except ImportError:
        og = None
    torch.set_num_threads(args.threads)
    bandwidth = memory_bandwidth(args.threads)
    model = reference_gpt()
    results = []
    meter = LoadMeter()
    if not args.quick:
        results += [bench_torch(model, n, cache=False), bench_torch(model, n, cache=True)]
        hf = bench_hf(n)
        if hf:
            results.append(hf)
    torch_load = meter.read()
    fp32_torch_bytes = None
    summ: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_reference(model, Path(tmp))
        fp32_torch_bytes = weight_bytes(model_dir / "model.fast.onnx")
        contenders = [lmforge_contender(f"lmforge-{v}", model_dir, v, args.threads, None) for v in VARIANTS]
        # prompt-lookup speculation (runtime.lookahead: fp32, and int8/int4 in pairs of tokens), its default K
        from lmforge.runtime.lookahead import DEFAULT_LOOKAHEAD  # (int4 speculates only when asked: asked here)

        contenders += [lmforge_contender(f"lmforge-{v}-lookup", model_dir, v, args.threads, None, DEFAULT_LOOKAHEAD)
                       for v in VARIANTS]
        if not args.quick:
            contenders += [lmforge_contender(f"lmforge-{v}-portable", model_dir, v, args.threads, False)
                           for v in ("fp32", "int8")]
        if og is not None:
            from lmforge.export.genai import GENAI_FILES, select_graph

            contenders += [genai_contender(f"ort-genai-lmforge-{v}", select_graph(model_dir, v),
                                           weight_bytes(model_dir / GENAI_FILES[v]), "ort-genai (lmforge graph)",
                                           v, args.threads) for v in VARIANTS]
            if not args.no_builder:
                hf_dir = peer_hf_model(Path(tmp) / "hf-phi")
                try:
                    for v in VARIANTS:
                        built = build_peer(hf_dir, Path(tmp) / f"builder-{v}", v, args.builder_python)
                        contenders.append(genai_contender(f"ort-genai-builder-{v}", og.Config(str(built)),
                                                          weight_bytes(built / "model.onnx"),
                                                          "ort-genai builder (phi)", v, args.threads))
                except RuntimeError as exc:  # e.g. a transformers the builder cannot import: rows left out, said why
                    contenders = [c for c in contenders if not c.name.startswith("ort-genai-builder")]
                    summ["ort-genai builder"] = f"left out: {str(exc)[-300:]} (hint: --builder-python PYTHON)"
        phases = {"batch1": interleave(contenders, 1, n, args.rounds, args.block, seed=1, pause=args.pause)}
        calls1 = call_stats(contenders)
        phases["batch8"] = interleave(contenders, 8, n, args.rounds, args.block, seed=8, pause=args.pause)
        calls8 = call_stats(contenders, 8)
        rows1, rows8 = rows_of(phases["batch1"]), rows_of(phases["batch8"])
        # greedy tokens: each lmforge row against its verified graph through the logits path; ort-genai over
        # lmforge's graph against lmforge's row of the same weights
        from lmforge.runtime.scoring import greedy_ids

        prompt0 = np.random.default_rng(1).integers(4, SHAPE["vocab_size"], (1, PROMPT_LEN)).tolist()[0]
        same = {}
        for c in contenders:
            got = phases["batch1"]["tokens"][c.name]
            if c.group == "lmforge":
                same[c.name] = same_tokens(got, [greedy_ids(c.runtime, prompt0, n)])
            elif c.group.startswith("ort-genai (lmforge"):
                same[c.name] = same_tokens(got, phases["batch1"]["tokens"][f"lmforge-{c.variant}"])
        same8 = {}  # batch 8: each lmforge-*-lookup row and each ort-genai row over lmforge's graph against the
        for c in contenders:  # lmforge row of the same graph that calls it once per token
            if not (c.name.endswith("-lookup") or c.group.startswith("ort-genai (lmforge")):  # (same graph)
                continue
            if f"lmforge-{c.variant}" in phases["batch8"]["tokens"]:
                same8[c.name] = same_tokens(phases["batch8"]["tokens"][c.name],
                                            phases["batch8"]["tokens"][f"lmforge-{c.variant}"])
        for c in contenders:
            r1, r8 = rows1[c.name], rows8[c.name]
            results.append({"name": c.name, **{k: v for k, v in r1.items() if k != "per_round_tokens_per_s"},
                            "batch8_tokens_per_s": r8["tokens_per_s"], "weight_bytes": c.weight_bytes,
                            "greedy_same": same.get(c.name), "batch8_greedy_same": same8.get(c.name),
                            **calls1.get(c.name, {}),
                            **{f"batch8_{k}": v for k, v in calls8.get(c.name, {}).items()}})
        ratios = []
        by_name = {c.name: c for c in contenders}
        for batch, rows in ((1, rows1), (8, rows8)):
            for v in VARIANTS:
                for lm in (f"lmforge-{v}-lookup", f"lmforge-{v}"):
                    for peer in (f"ort-genai-lmforge-{v}", f"ort-genai-builder-{v}"):
                        if peer in rows:
                            ratios.append({"label": f"{lm} / {peer}", "batch": batch, **ratio(rows, lm, peer)})
            lm = max((c for c in by_name if by_name[c].group == "lmforge"), key=lambda k: rows[k]["tokens_per_s"])
            for group in ("ort-genai (lmforge graph)", "ort-genai builder (phi)"):
                peers = [c for c in by_name if by_name[c].group == group]
                if peers:
                    best = max(peers, key=lambda k: rows[k]["tokens_per_s"])
                    ratios.append({"label": f"fastest: {lm} / {best}", "batch": batch, **ratio(rows, lm, best)})
            ratios.append({"label": "lmforge-int4 / lmforge-fp32", "batch": batch,
                           **ratio(rows, "lmforge-int4", "lmforge-fp32")})
            for v in VARIANTS:
                ratios.append({"label": f"lmforge-{v}-lookup / lmforge-{v}", "batch": batch,
                               **ratio(rows, f"lmforge-{v}-lookup", f"lmforge-{v}")})
        profile = None
        if args.profile:
            files = [model_dir / f for f in ("model.fast.onnx", "model.fast.int8.onnx", "model.fast.int4.onnx",
                                             "model.genai.int4.onnx")]
            if og is not None and not args.no_builder:
                files += [Path(tmp) / f"builder-{v}" / "model.onnx" for v in ("int8", "int4")]
            profile = [profile_step(f, args.threads, top_nodes=12) for f in files]
            for pr, f in zip(profile, files):
                pr["file"] = f"{f.parent.name}/{f.name}" if f.parent.name.startswith("builder") else f.name
        provider = contenders[0].runtime.provider
        (Path(tmp) / "loop-cost").mkdir()
        cost = loop_cost(Path(tmp) / "loop-cost")
    for r in results:  # decode steps at the median against bandwidth / weight bytes per step
        wb = r.pop("weight_bytes", None) or fp32_torch_bytes
        r["weight_mb"] = round(wb / 1e6, 1)
        r["bound_share"] = round((1e3 / r["step_ms"]) / (bandwidth * 1e9 / wb), 2)
    quality = trained_quality(args.train_steps, args.threads, args.corpora) if args.train_steps and og else None
    for r in results:
        r["quality"] = quality_note(r["name"], quality)
    summ[f"memory bandwidth ({args.threads}-thread numpy copy of 512 MB, read + write, GB/s)"] = round(bandwidth, 1)
    summ["bound_share"] = "(1000 / step_ms) / (bandwidth / weight bytes per decode step), batch 1"
    summ["shape"] = (f"gpt {SHAPE}, prompts of {PROMPT_LEN} tokens, {n} new tokens greedy, {args.threads} threads; "
                     "ort-genai-builder-*: onnxruntime-genai's builder on a random-init HF Phi of the same shape")
    summ["method"] = (f"onnxruntime rows take turns: {args.rounds} rounds per batch size, turns of "
                      f"{args.block or 'all the'} steps per contender in a fresh random order, {args.pause} s "
                      "untimed before each turn; figures are medians over rounds, ratios "
                      "per round then median (min-max); torch / transformers rows: one run each "
                      f"({load_text(torch_load)})")
    summ["greedy_same"] = ("lmforge-*: share of batch-1 tokens equal to its verified graph's greedy ids "
                           "(runtime.scoring.greedy_ids); ort-genai-lmforge-*: equal to lmforge's row of the same "
                           "weights; batch8_greedy_same: each lmforge-*-lookup and ort-genai-lmforge-* row's batch-8 "
                           "tokens against lmforge-* (one call per token) on the same graph")
    summ["lookup"] = ("lmforge-*-lookup: Generator's prompt-lookup speculation at lookahead 4, the default (asked "
                      "for on int4; runtime.lookahead; int8/int4: the row's every call an even number of tokens, "
                      "docs/decode.md); lmforge-{fp32,int8,int4}: lookahead 0, a graph call per token (one token "
                      "each); calls_per_token = decode graph "
                      "calls (+ prefills) per token, accepted_per_verify = draft tokens taken per verifying call, "
                      "of the last round (batch8_*: at batch 8, where fp32 rows speculate together through the rows "
                      "graph, KVBuffers.extend_rows, and an int8/int4 row only while it runs alone). "
                      "This random-init model's greedy output repeats one token: the lookup's upper bound; "
                      "benchmarks/lookahead.py measures a trained model")
    if og is None:
        summ["ort-genai"] = "not installed (pip install onnxruntime-genai): no ort-genai rows"
    report = {"results": results, "ratios": ratios, "summary": summ,
              "load": {"batch1": phases["batch1"]["load"], "batch8": phases["batch8"]["load"], "torch": torch_load},
              "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, "
                         f"python {platform.python_version()}, onnxruntime {ort.__version__}, "
                         f"onnxruntime-genai {og.__version__ if og else None}, torch {torch.__version__}",
              "provider": provider, "argv": sys.argv[1:] if argv is None else list(argv),
              "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "raw": {k: {"ttft_s": v["ttft"], "step_ms": v["steps"]} for k, v in phases.items()}}
    report["loop_cost"] = cost
    if quality:
        report["quality"] = quality
    if profile:
        report["profile"] = profile
    publish(report, "decode", markdown,
            json.dumps({k: v for k, v in report.items() if k != "raw"}, indent=2) if args.json else None)
    return 0


def main_loop_cost(args) -> int:
    """`--loop-cost`: the loop-cost phase alone, reported as its own file."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        cost = loop_cost(Path(tmp), rounds=args.rounds or 7)
    report = {"loop_cost": cost, "argv": sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
                         f"onnxruntime {ort.__version__}"}
    render = lambda r: "\n".join([f"`lmforge bench decode {' '.join(r['argv'])}` ({r['time']}, {r['machine']})",  # noqa: E731
                                   *loop_cost_table(r["loop_cost"])])
    publish(report, "decode-loop", render, json.dumps(report, indent=2) if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
