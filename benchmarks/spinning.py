"""How onnxruntime sessions that take turns slow each other: three lmforge Generators (the reference model's fp32,
int8 and int4 fast graphs, 2 intra-op threads each) decode greedy in turns of --block steps (or the whole
generation), with or without an untimed pause before each turn, with onnxruntime's intra-op spinning on (its
default), off, or stopped at the end of each run (session.force_spinning_stop, what a generator with
batch_lookahead sets: its step and rows graphs take turns); and fp32 alone; and one batch-8 decoder whose step
and rows graphs alternate. Why `benchmarks/decode.py` runs its contenders in whole-generation turns with a
pause (docs/decode.md, "Method").

    python benchmarks/spinning.py [--new-tokens N] [--repeats N]
Writes benchmarks/results/spinning-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode as D  # noqa: E402  (the reference model, its export and the load meter)

# (label, sessions, block (0: the whole generation), pause s, allow_spinning, force_spinning_stop)
CONDITIONS = [("fp32 alone", ("fp32",), 0, 0.0, "1", "0"),
              ("turns of 4 steps", ("fp32", "int8", "int4"), 4, 0.0, "1", "0"),
              ("turns of 16 steps", ("fp32", "int8", "int4"), 16, 0.0, "1", "0"),
              ("whole generations, no pause", ("fp32", "int8", "int4"), 0, 0.0, "1", "0"),
              ("whole generations, 50 ms untimed before each", ("fp32", "int8", "int4"), 0, 0.05, "1", "0"),
              ("turns of 4 steps, spinning off in every session", ("fp32", "int8", "int4"), 4, 0.0, "0", "0"),
              ("fp32 alone, spinning off", ("fp32",), 0, 0.0, "0", "0"),
              ("turns of 4 steps, spinning stopped at each run's end (as batch_lookahead's sessions)", ("fp32", "int8", "int4"),
               4, 0.0, "1", "1"),
              ("fp32 alone, spinning stopped at each run's end (as batch_lookahead's sessions)", ("fp32",), 0, 0.0, "1", "1")]


def generators(model_dir: Path, variants: tuple[str, ...], spin: str, stop: str) -> list:
    """Generators whose sessions have allow_spinning set to `spin` and force_spinning_stop to `stop` (a generator
    with batch_lookahead: 1, runtime.session)."""
    from lmforge.runtime import Generator
    from lmforge.runtime import session as S

    plain = S._session

    def spinning(path, opts, providers):
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.force_spinning_stop", stop)
        return plain(path, opts, providers)

    S._session = spinning
    try:
        return [Generator(model_dir, variant=v, threads=2, lookahead=0) for v in variants]  # a call per step
    finally:
        S._session = plain


def turns(gens: list, n: int, block: int, pause: float) -> list[float]:
    """ms per step of each generator, decoding `n` greedy tokens in turns of `block` steps."""
    prompt = "".join(chr(0x4E00 + i) for i in range(16))
    streams = [g.stream(prompt, max_new_tokens=n, temperature=0) for g in gens]
    spent, live = [0.0] * len(gens), True
    while live:
        live = False
        for i, s in enumerate(streams):
            time.sleep(pause)
            t = time.perf_counter()
            for _ in range(block or n):
                if next(s, None) is None:
                    break
                live = True
            spent[i] += time.perf_counter() - t
    return [1000 * t / n for t in spent]


def alternation(model_dir: Path, stop: str, repeats: int, calls: int = 20) -> dict:
    """ms per call of one batch-8 decoder on the reference model: its fp32 step alone, a 5-token call of its rows
    graph alone (KVBuffers.extend_rows, batch_lookahead), and the two alternating (a batch that speculates) with
    force_spinning_stop `stop`: median over `repeats` runs of `calls` calls each."""
    from lmforge.runtime import Generator
    from lmforge.runtime import session as S

    plain = S._session

    def stopping(path, opts, providers):
        opts.add_session_config_entry("session.force_spinning_stop", stop)
        return plain(path, opts, providers)

    S._session = stopping
    try:
        gen = Generator(model_dir, threads=2, lookahead=4, batch_lookahead=True)
        dec = gen.decoder(8, 512)
    finally:
        S._session = plain
    rng = np.random.default_rng(0)
    for slot in range(8):
        dec.prefill_slot(slot, rng.integers(4, D.SHAPE["vocab_size"], 100).tolist())
    base, one, five = dec.lengths.copy(), rng.integers(4, 8000, 8), rng.integers(4, 8000, (8, 5))

    def step():
        dec.step(one)
        dec.lengths[:] = base

    def rows():
        dec.extend_rows(five)
        dec.lengths[:] = base

    out = {}
    for name, seq in (("step", [step]), ("rows5", [rows]), ("alternating", [step, rows])):
        for f in seq:
            f()
        runs = []
        for _ in range(repeats):
            time.sleep(0.05)
            t = time.perf_counter()
            for _ in range(calls):
                for f in seq:
                    f()
            runs.append((time.perf_counter() - t) * 1e3 / calls)
        out[name] = round(float(np.median(runs)), 3)
    out["alternating_over_sum"] = round(out["alternating"] / (out["step"] + out["rows5"]), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="runs of each condition (median, min-max reported)")
    args = p.parse_args(argv)
    import torch

    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    rows, meter = [], D.LoadMeter()
    with tempfile.TemporaryDirectory(prefix="lmforge-spinning-") as tmp:
        model_dir = D.export_reference(GPT(GPTConfig(**D.SHAPE)).eval(), Path(tmp))
        for label, variants, block, pause, spin, stop in CONDITIONS:
            gens = generators(model_dir, variants, spin, stop)
            turns(gens, 8, 0, 0.0)  # warm up
            runs = np.array([turns(gens, args.new_tokens, block, pause) for _ in range(args.repeats)])
            rows.append({"condition": label, "block": block or args.new_tokens, "pause_s": pause, "spinning": spin,
                         "force_spinning_stop": stop,
                         **{f"{v}_ms_per_step": [round(float(f(runs[:, i])), 3) for f in (np.median, np.min, np.max)]
                            for i, v in enumerate(variants)}})
            del gens
        alternating = {stop: alternation(model_dir, stop, args.repeats) for stop in ("0", "1")}
    load = D.load_text(meter.read())
    command = "python benchmarks/spinning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command.strip(), "load": load, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "rows": rows, "alternation": alternating}
    lines = [f"`{report['command']}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), {load}; "
             f"{args.new_tokens} greedy tokens, ms per decode step: median (min-max) over {args.repeats} runs", "",
             "| condition | fp32 | int8 | int4 |", "| --- | --- | --- | --- |"]
    for r in rows:
        cells = ["{} ({}-{})".format(*r[f"{v}_ms_per_step"]) if f"{v}_ms_per_step" in r else ""
                 for v in ("fp32", "int8", "int4")]
        lines.append(f"| {r['condition']} | " + " | ".join(cells) + " |")
    lines += ["", "One batch-8 decoder whose step graph and rows graph take turns (a batch that speculates, "
              "batch_lookahead): ms per call, median over the runs:", "",
              "| force_spinning_stop | step alone | 5-token rows call alone | step + rows call alternating | "
              "alternating / (step + rows call) |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {stop} | {a['step']} | {a['rows5']} | {a['alternating']} | {a['alternating_over_sum']} |"
              for stop, a in alternating.items()]
    D.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = D.RESULTS / f"spinning-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {stem}.json, {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
