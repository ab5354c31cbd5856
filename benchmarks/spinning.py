"""How onnxruntime sessions that take turns slow each other: three lmforge Generators (the reference model's fp32,
int8 and int4 fast graphs, 2 intra-op threads each) decode greedy in turns of --block steps (or the whole
generation), with or without an untimed pause before each turn, with onnxruntime's intra-op spinning on (its
default) or off; and fp32 alone. Why `benchmarks/decode.py` runs its contenders in whole-generation turns with a
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

# (label, sessions, block (0: the whole generation), pause s, spinning)
CONDITIONS = [("fp32 alone", ("fp32",), 0, 0.0, "1"),
              ("turns of 4 steps", ("fp32", "int8", "int4"), 4, 0.0, "1"),
              ("turns of 16 steps", ("fp32", "int8", "int4"), 16, 0.0, "1"),
              ("whole generations, no pause", ("fp32", "int8", "int4"), 0, 0.0, "1"),
              ("whole generations, 50 ms untimed before each", ("fp32", "int8", "int4"), 0, 0.05, "1"),
              ("turns of 4 steps, spinning off in every session", ("fp32", "int8", "int4"), 4, 0.0, "0"),
              ("fp32 alone, spinning off", ("fp32",), 0, 0.0, "0")]


def generators(model_dir: Path, variants: tuple[str, ...], spin: str) -> list:
    """Generators whose sessions have allow_spinning set to `spin`."""
    from lmforge.runtime import Generator
    from lmforge.runtime import session as S

    plain = S._session

    def spinning(path, opts, providers):
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
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
        for label, variants, block, pause, spin in CONDITIONS:
            gens = generators(model_dir, variants, spin)
            turns(gens, 8, 0, 0.0)  # warm up
            runs = np.array([turns(gens, args.new_tokens, block, pause) for _ in range(args.repeats)])
            rows.append({"condition": label, "block": block or args.new_tokens, "pause_s": pause, "spinning": spin,
                         **{f"{v}_ms_per_step": [round(float(f(runs[:, i])), 3) for f in (np.median, np.min, np.max)]
                            for i, v in enumerate(variants)}})
            del gens
    load = D.load_text(meter.read())
    command = "python benchmarks/spinning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command.strip(), "load": load, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "rows": rows}
    lines = [f"`{report['command']}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), {load}; "
             f"{args.new_tokens} greedy tokens, ms per decode step: median (min-max) over {args.repeats} runs", "",
             "| condition | fp32 | int8 | int4 |", "| --- | --- | --- | --- |"]
    for r in rows:
        cells = ["{} ({}-{})".format(*r[f"{v}_ms_per_step"]) if f"{v}_ms_per_step" in r else ""
                 for v in ("fp32", "int8", "int4")]
        lines.append(f"| {r['condition']} | " + " | ".join(cells) + " |")
    D.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = D.RESULTS / f"spinning-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {stem}.json, {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
