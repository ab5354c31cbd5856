"""Training recipes for shakespeare-char side by side (docs/quality.md "Time to quality"): each recipe trains the
preset's model (4 layers x 128, context 64) on lmforge's prepared tinyshakespeare split in the shortest loop
(no evaluation, no checkpoint; seed 1337) and is scored on the whole val split; and what one optimizer step costs
for each optimizer and batch, interleaved in one process.

    python benchmarks/train_recipes.py --recipe "adamw 1000x12 lr=8e-3" --recipe "muon 250x32 lr=8e-3 muon_lr=0.02"
    python benchmarks/train_recipes.py --step-cost [--rounds 20]

A recipe: OPTIMIZER STEPSxBATCH [lr=.. min_lr=.. (default lr/10) warmup=.. muon_lr=.. ns=..]; the schedule is the
preset's (linear warmup, cosine to min_lr). Val losses do not depend on the machine's load (2 threads are
deterministic here); the walls do: the load is written beside them. Writes benchmarks/results/recipes-<time>.json
and .md."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import publish  # noqa: E402  (a sibling benchmark: its report writer)
from quality import CORPORA, prepared  # noqa: E402

from lmforge.core.config import ModelConfig, TrainConfig  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.training.evaluate import evaluate_tokens  # noqa: E402
from lmforge.training.schedule import lr_at  # noqa: E402
from lmforge.training.train import get_batch, make_optimizer  # noqa: E402

MODEL = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64)


def parse(recipe: str) -> tuple[TrainConfig, int]:
    """'muon 250x32 lr=8e-3 muon_lr=0.02' -> (the TrainConfig it names, Newton-Schulz iterations: ns=, 5)."""
    opt, shape, *keys = recipe.split()
    steps, batch = (int(x) for x in shape.split("x"))
    kv = {k: float(v) for k, v in (x.split("=", 1) for x in keys)}
    lr = kv.pop("lr", 8e-3)
    return TrainConfig(optimizer=opt, max_steps=steps, batch_size=batch, lr=lr, min_lr=kv.pop("min_lr", lr / 10),
                       warmup_steps=int(kv.pop("warmup", max(1, steps // 10))),
                       muon_lr=kv.pop("muon_lr", 0.02)), int(kv.pop("ns", 5))


def with_ns(opt, ns: int):
    for g in opt.param_groups:
        if "ns_steps" in g:
            g["ns_steps"] = ns
    return opt


def run_recipe(recipe: str, tr, va, vocab: int) -> dict:
    cfg, ns = parse(recipe)
    torch.manual_seed(1337)
    model = build_model(MODEL, vocab)
    opt = with_ns(make_optimizer(model, cfg, "cpu"), ns)
    gen = torch.Generator().manual_seed(1337)
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, y = get_batch(tr, MODEL.block_size, cfg.batch_size, gen, "cpu")
        logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    wall = time.perf_counter() - t0
    model.eval()
    loss = evaluate_tokens(model, va, MODEL.block_size, 12, 1_000_000)["loss"]
    return {"recipe": recipe, "val_loss": round(loss, 4), "wall_s": round(wall, 1),
            "ms_per_step": round(wall / cfg.max_steps * 1e3, 1), "load": round(os.getloadavg()[0], 2)}


def step_cost(rounds: int, vocab: int = 65) -> list[dict]:
    """ms per optimizer step (forward, backward, clip, step) of AdamW and Muon (5 and 3 iterations) at batch 12, 24
    and 32, interleaved round by round, the median of the rounds after 3 warm-up ones."""
    contenders = {}
    for name, opt, ns in (("adamw", "adamw", 5), ("muon", "muon", 5), ("muon-ns3", "muon", 3)):
        torch.manual_seed(0)
        model = build_model(MODEL, vocab)
        contenders[name] = (model, with_ns(make_optimizer(model, TrainConfig(optimizer=opt), "cpu"), ns))
    batches = {b: torch.randint(0, vocab, (b, MODEL.block_size)) for b in (12, 24, 32)}
    times = {(n, b): [] for n in contenders for b in batches}
    for _ in range(rounds + 3):
        for b, x in batches.items():
            for name, (model, opt) in contenders.items():
                t0 = time.perf_counter()
                logits, _ = model(x)
                torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x.reshape(-1)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                times[name, b].append(time.perf_counter() - t0)
    return [{"optimizer": n, "batch": b, "ms_per_step": round(float(np.median(t[3:])) * 1e3, 2)}
            for (n, b), t in times.items()]


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}` ({report['time']}, load {report['load_start']} -> {report['load_end']}, "
             f"{report['threads']} threads)", ""]
    if report.get("recipes"):
        lines += ["| recipe | val loss | wall (s) | ms/step | load |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['recipe']} | {r['val_loss']} | {r['wall_s']} | {r['ms_per_step']} | {r['load']} |"
                  for r in report["recipes"]]
    if report.get("step_cost"):
        lines += ["", "| optimizer | batch | ms per step (median) |", "| --- | --- | --- |"]
        lines += [f"| {r['optimizer']} | {r['batch']} | {r['ms_per_step']} |" for r in report["step_cost"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", action="append", default=[], help="OPTIMIZER STEPSxBATCH [key=value ...]")
    p.add_argument("--step-cost", action="store_true", help="time one step of each optimizer at batch 12/24/32")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corpora", type=Path, default=CORPORA)
    args = p.parse_args(argv)
    if not args.recipe and not args.step_cost:
        p.error("give --recipe (one or more) and/or --step-cost")
    torch.set_num_threads(args.threads)
    report = {"command": "python benchmarks/train_recipes.py " + " ".join(
        f'"{a}"' if " " in a else a for a in (argv if argv is not None else sys.argv[1:])),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": args.threads, "load_start": round(os.getloadavg()[0], 2)}
    if args.recipe:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            _, meta, tr, va = prepared("shakespeare-char", args.corpora, 0, args.threads, Path(work), [])
            report["recipes"] = [run_recipe(r, tr, va, meta["vocab_size"]) for r in args.recipe]
    if args.step_cost:
        report["step_cost"] = step_cost(args.rounds)
    report["load_end"] = round(os.getloadavg()[0], 2)
    publish(report, "recipes", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
