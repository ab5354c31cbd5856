"""Model quality of the seed presets, trained here on the real corpora in ../shared/corpora, each beside its
reference in the same run:
  shakespeare-char  time to quality: lmforge's preset (its own schedule) vs the plain PyTorch loop of nanoGPT's
                    CPU configuration (2,000 steps of batch 12, lr 1e-3), same threads, one after the other in
                    the same run: val loss on nanoGPT's own split, wall time, tokens/s, and the wall ratio
  lebanon-gru       next-character accuracy on the held-out 20% of tweets (target >= 45%)
  tinystories-lstm  val perplexity vs a unigram model counted on the same train split, and a generation
                    through the exported directory from a prompt of unseen words
  imdb-gpt          val loss at every evaluation (the trend) vs the unigram baseline

    python benchmarks/quality.py [--only NAME ...] [--steps N] [--corpora DIR] [--threads N] [--set KEY=VALUE]
Writes benchmarks/results/quality-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.core.config import load_config
from lmforge.data.prepare import prepare_corpus
from lmforge.data.shards import open_shard
from lmforge.training.evaluate import evaluate_tokens
from lmforge.models import build_model
from lmforge.training.train import get_batch, lr_at, train

RESULTS = Path(__file__).resolve().parent / "results"
REF_SCALE = 1.0  # --quick: the reference loop runs this share of nanoGPT's steps
CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
LOCAL = {  # preset -> overrides reading the local copy of its corpus
    "shakespeare-char": {"data.source": "tinyshakespeare.txt"},
    "lebanon-gru": {"data.source": "ArSenTD-LEV.tsv"},
    "tinystories-lstm": {"data.source": "tinystories-sample.txt", "data.separator": ""},
    "imdb-gpt": {"data.source": "imdb-reviews.csv", "data.format": "csv", "data.column": "review",
                 "data.max_documents": 0},
}
UNSEEN_PROMPT = "Zorblax and Quibbit found a"  # two words no story has


def prepared(name: str, corpora: Path, steps: int, threads: int, work: Path, extra: list[str]):
    """The preset with its local corpus (../shared/corpora; the default preset reads its own source) prepared."""
    from lmforge.data.sources import acquire

    overrides = {k: str(corpora / v) if k == "data.source" else v for k, v in LOCAL.get(name, {}).items()}
    if steps:
        overrides["train.max_steps"] = steps
        overrides["train.eval_interval"] = max(1, steps // 4)
    overrides["train.threads"] = threads
    overrides.update(kv.split("=", 1) for kv in extra)
    overrides.setdefault("name", name)  # the rows keep the preset's name (a local data.source would name the run)
    cfg = load_config(name, overrides)
    source = Path(overrides["data.source"]) if "data.source" in overrides else acquire(cfg.data.source, work / "cache")
    data = work / cfg.name / "data"  # cfg.name: the preset's, or named after the data (a local data.source)
    meta = prepare_corpus(source, cfg, data)
    return cfg, meta, open_shard(data, "train"), open_shard(data, "val")


def unigram_loss(train_ids: np.ndarray, val_ids: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) of add-one-smoothed train-split token frequencies on the val split."""
    counts = np.bincount(np.asarray(train_ids, np.int64), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val_ids, np.int64)].mean())


def full_eval(model, cfg, val) -> dict:
    return evaluate_tokens(model, val, cfg.model.block_size, cfg.train.batch_size, 1_000_000)


def train_ours(cfg, meta, tr, va, work: Path):
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, meta["vocab_size"])
    t0 = time.perf_counter()
    result = train(model, tr, va, cfg.model.block_size, cfg.train, work / cfg.name / "ckpt", resume=False)
    return model, result, time.perf_counter() - t0


# nanoGPT's README, "I only have a macbook": python train.py config/train_shakespeare_char.py --device=cpu
# --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
# --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 (val loss ~1.88), with the config file's
# learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, beta2 0.99 and train.py's weight_decay 0.1, grad_clip 1.0.
NANOGPT_CPU = {"model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.block_size": 64,
               "model.dropout": 0.0, "model.bias": False, "train.max_steps": 2000, "train.batch_size": 12,
               "train.grad_accum": 1, "train.lr": 1e-3, "train.min_lr": 1e-4, "train.warmup_steps": 100,
               "train.beta2": 0.99, "train.weight_decay": 0.1, "train.grad_clip": 1.0}


def plain_torch_loop(cfg, meta: dict, tr) -> tuple[torch.nn.Module, float, float]:
    """The reference: cfg's model, batch, AdamW and schedule in the shortest loop PyTorch allows (no
    evaluation, no checkpoints). Returns (model, wall seconds, tokens/s)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, meta["vocab_size"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.train.lr, betas=(0.9, cfg.train.beta2))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.train.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.train)
        x, y = get_batch(tr, cfg.model.block_size, cfg.train.batch_size, gen, "cpu")
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - t0
    model.eval()
    return model, wall, cfg.train.max_steps * cfg.train.batch_size * cfg.model.block_size / wall


def row(preset, metric, reference, ours, wall=None, tps=None) -> dict:
    return {"preset": preset, "metric": metric, "reference": reference, "ours": ours,
            "wall_s": None if wall is None else round(wall, 1), "tokens_per_s": None if tps is None else round(tps)}


def nanogpt_split(text: str) -> tuple[np.ndarray, np.ndarray, int, str]:
    """nanoGPT's data/shakespeare_char/prepare.py, as it is: the raw file's sorted characters as the vocabulary,
    train = the first int(0.9 * n) characters, val = the rest. Returns (train ids, val ids, vocab, val text)."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    return ids[:int(n * 0.9)], ids[int(n * 0.9):], len(chars), text[int(n * 0.9):]


def same_text(a: str, b: str) -> float:
    """The share of characters two texts have in common, aligned (difflib)."""
    import difflib

    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return sum(m.size for m in matcher.get_matching_blocks()) / max(len(a), len(b))


def bench_shakespeare(cfg, meta, tr, va, work) -> list[dict]:
    """Time to quality: the plain PyTorch loop of nanoGPT's CPU configuration on nanoGPT's own prepare of the raw
    file, then lmforge (its prepared contiguous split, its train(), the preset's settings), in one run with the
    same threads; each scored on its own val split (the same text, see the last row), and lmforge's wall time
    as a share of the loop's. The preset's defaults are what reaches the loop's loss soonest (docs/quality.md)."""
    from tokenizers import Tokenizer

    raw = Path(cfg.data.source).read_text(encoding="utf-8")
    n_tr, n_va, n_vocab, n_val_text = nanogpt_split(raw)
    steps = max(1, int(NANOGPT_CPU["train.max_steps"] * REF_SCALE))  # --quick: a tenth of each side's steps
    ref_cfg = load_config("shakespeare-char", {**NANOGPT_CPU, "train.threads": cfg.train.threads,
                                               "train.max_steps": steps,
                                               "train.warmup_steps": max(1, int(100 * REF_SCALE))})
    ref_model, ref_wall, ref_tps = plain_torch_loop(ref_cfg, {"vocab_size": n_vocab}, n_tr)
    ref = full_eval(ref_model, ref_cfg, n_va)
    model, result, wall = train_ours(cfg, meta, tr, va, work)
    ours = full_eval(model, cfg, va)
    tok = Tokenizer.from_file(str(work / cfg.name / "data" / "tokenizer.json"))
    our_val_text = tok.decode(np.asarray(va[:-1]).tolist())  # without the closing <eos>
    overlap = same_text(our_val_text, n_val_text)
    t = cfg.train
    recipe = (f"{t.max_steps} steps x batch {t.batch_size}, lr {t.lr:g} -> {t.min_lr:g}, warmup {t.warmup_steps}"
              + (f", Muon at {t.muon_lr:g} on the blocks' matrices" if t.optimizer == "muon" else ""))
    return [row(cfg.name, "val loss (nats/char): nanoGPT's CPU config (2000 x 12, lr 1e-3), its split, a plain "
                "PyTorch loop", "nanoGPT README ~1.88", round(ref["loss"], 4), ref_wall, ref_tps),
            row(cfg.name, f"val loss (nats/char): lmforge train(), preset ({recipe}), its contiguous split",
                round(ref["loss"], 4), round(ours["loss"], 4), wall, result.tokens_per_s),
            row(cfg.name, "time to quality: lmforge wall / plain loop wall (goal <= 0.5 at a val loss <= the "
                "loop's)", "-", f"{wall / ref_wall:.3f} at {ours['loss'] - ref['loss']:+.4f} nats/char"),
            row(cfg.name, "val texts: characters (nanoGPT / lmforge), share in common", "-",
                f"{len(n_val_text)} / {len(our_val_text)}, {overlap:.5f}")]


@torch.no_grad()
def continuation_accuracy(model, val: np.ndarray, bos: int, eos: int, min_len: int = 60, target: int = 30) -> float:
    """Seed 003's task on the held-out tweets: given the first half of each tweet of at least `min_len`
    characters, the share of the next `target` characters predicted right (teacher-forced argmax)."""
    ids = np.asarray(val, np.int64)
    starts, ends = np.flatnonzero(ids == bos) + 1, np.flatnonzero(ids == eos)
    correct = total = 0
    for a, b in zip(starts, ends):
        doc = ids[a:b]
        if len(doc) < min_len:
            continue
        half = len(doc) // 2
        x = torch.from_numpy(np.concatenate([[bos], doc[:half + target - 1]]))[None]
        logits, _ = model(x)
        pred = logits[0, half:half + target].argmax(-1).numpy()
        correct += int((pred == doc[half:half + target]).sum())
        total += target
    return correct / max(total, 1)


def bench_lebanon(cfg, meta, tr, va, work) -> list[dict]:
    model, result, wall = train_ours(cfg, meta, tr, va, work)
    ev = full_eval(model, cfg, va)
    ids = meta["special_ids"]
    seed_task = continuation_accuracy(model.eval(), va, ids["bos"], ids["eos"])
    return [row(cfg.name, "next-char accuracy, held-out 20% of tweets (every position)", ">= 0.45",
                round(ev["accuracy"], 4), wall, result.tokens_per_s),
            row(cfg.name, "next-char accuracy on the 30 chars after each held-out tweet's first half (seed 003's "
                "task; seed 003: 0.1822)", ">= 0.45", round(seed_task, 4)),
            row(cfg.name, "val loss (nats/char)", "-", round(ev["loss"], 4))]


def bench_tinystories(cfg, meta, tr, va, work) -> list[dict]:
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.runtime import Generator

    model, result, wall = train_ours(cfg, meta, tr, va, work)
    ev = full_eval(model, cfg, va)
    uni = unigram_loss(tr, va, meta["vocab_size"])
    manifest = {"name": cfg.name, "tokenizer": {"kind": "word", "file": "tokenizer.json"},
                "tokens": meta["special_ids"], "generation": {"temperature": 0.8, "top_k": 40}}
    out, _ = export_model_dir(model, work / cfg.name / "data" / "tokenizer.json", work / cfg.name / "model", manifest,
                              ExportConfig(int8=False))
    text = Generator(out).generate(UNSEEN_PROMPT, max_new_tokens=30, seed=0)
    return [row(cfg.name, "val perplexity (words), unigram baseline from the train split", "-",
                round(math.exp(uni), 1)),
            row(cfg.name, "val perplexity (words), LSTM", round(math.exp(uni), 1), round(ev["perplexity"], 1),
                wall, result.tokens_per_s),
            row(cfg.name, f"generation from unseen words {UNSEEN_PROMPT!r}", "-", UNSEEN_PROMPT + text)]


def bench_imdb(cfg, meta, tr, va, work) -> list[dict]:
    model, result, wall = train_ours(cfg, meta, tr, va, work)
    trend = [round(h["val_loss"], 3) for h in result.history]
    uni = unigram_loss(tr, va, meta["vocab_size"])
    falling = all(b <= a for a, b in zip(trend, trend[1:]))
    return [row(cfg.name, "val loss (nats/token) at each evaluation" + (" (falling)" if falling else ""),
                f"unigram {uni:.3f}", " > ".join(map(str, trend)), wall, result.tokens_per_s)]


def english_share(text: str, vocabulary: set[str]) -> tuple[float, int]:
    """The share of the words in `text` (letters and apostrophes, lower-cased) found in `vocabulary`, and their
    number."""
    import re

    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text) if w.strip("'")]
    return (sum(w in vocabulary for w in words) / len(words) if words else 0.0), len(words)


def bench_default(cfg, meta, tr, va, work) -> list[dict]:
    """The default preset (`make run`): val bits per character, and samples at the exported temperature and
    top-k from each eval prompt: how many of their words are words of the training text, and none empty."""
    import re

    from tokenizers import Tokenizer

    from lmforge.training.evaluate import sample_text

    model, result, wall = train_ours(cfg, meta, tr, va, work)
    ev = full_eval(model, cfg, va)
    tok = Tokenizer.from_file(str(work / cfg.name / "data" / "tokenizer.json"))
    vocabulary = {w.lower() for w in re.findall(r"[A-Za-z']+", tok.decode(np.asarray(tr).tolist()))}
    ids, samples = meta["special_ids"], []
    for i, prompt in enumerate(cfg.eval.prompts * 4):
        start = [ids["bos"]] + tok.encode(prompt, add_special_tokens=False).ids
        out = sample_text(model, start, cfg.export.max_new_tokens, cfg.model.block_size,
                          temperature=cfg.export.temperature, top_k=cfg.export.top_k, seed=i, eos=ids["eos"])
        samples.append(prompt + tok.decode(out))
    share, words = english_share(" ".join(samples), vocabulary)
    return [row(cfg.name, "val bits per character", "-", round(ev["loss"] / math.log(2), 4), wall,
                result.tokens_per_s),
            row(cfg.name, f"share of the {words} words of {len(samples)} samples (T={cfg.export.temperature}, top-k "
                f"{cfg.export.top_k}) found in the training text", "-", round(share, 4)),
            row(cfg.name, "empty samples", "0", sum(not s.strip() for s in samples)),
            *[row(cfg.name, f"sample {i}", "-", s) for i, s in enumerate(samples[:4])]]


BENCHES = {"jokes-char": bench_default, "shakespeare-char": bench_shakespeare, "lebanon-gru": bench_lebanon,
           "tinystories-lstm": bench_tinystories, "imdb-gpt": bench_imdb}


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| preset | metric | reference | ours | wall time (s) | tokens/s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [r["preset"], r["metric"], r["reference"], r["ours"], r["wall_s"], r["tokens_per_s"]]
        lines.append("| " + " | ".join("-" if c is None else str(c).replace("|", "/").replace("\n", " ")
                                       for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these presets")
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead of the preset's")
    ap.add_argument("--corpora", type=Path, default=CORPORA)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every contender")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra preset override")
    ap.add_argument("--quick", action="store_true", help="a smoke run: jokes-char and shakespeare-char, each side "
                    "(the reference loop too) at a tenth of its steps")
    args = ap.parse_args(argv)
    if args.quick:
        global REF_SCALE
        REF_SCALE = 0.1
        args.only = args.only or ["jokes-char", "shakespeare-char"]
    torch.set_num_threads(args.threads)
    rows, started = [], time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="lmforge-quality-") as tmp:
        for name in args.only or list(BENCHES):
            steps = args.steps or (max(10, load_config(name).train.max_steps // 10) if args.quick else 0)
            cfg, meta, tr, va = prepared(name, args.corpora, steps, args.threads, Path(tmp), args.set)
            print(f"{name}: {meta['train']['tokens']} train / {meta['val']['tokens']} val tokens, "
                  f"vocabulary {meta['vocab_size']}, {cfg.train.max_steps} steps", file=sys.stderr)
            rows += BENCHES[name](cfg, meta, tr, va, Path(tmp))
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else ["-"]
    header = (f"# quality {started}\n\n`{command.strip()}` on {platform.processor() or platform.machine()}, "
              f"{args.threads} torch threads, torch {torch.__version__}, load average at the end {' '.join(load)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality-{started}"
    for suffix, text in ((".json", json.dumps({"command": command.strip(), "threads": args.threads, "rows": rows},
                                               indent=2, ensure_ascii=False)), (".md", markdown(rows, header))):
        tmp_file = out.with_name(out.name + suffix + ".tmp")
        tmp_file.write_text(text, encoding="utf-8")
        tmp_file.replace(out.with_name(out.name + suffix))
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
