"""Prompt-lookup speculation (lmforge.runtime.lookahead) on a TRAINED model with real prompts: tokens/s with lookahead
on against off at batch 1, greedy, and how much of the drafts the graph took.

The decode benchmark's reference model (benchmarks/decode.py, random init) repeats one token, so its lookups succeed
nearly always: an upper bound. Here shakespeare-char is trained --train-steps steps through lmforge's own
preparation and train() (benchmarks/decode.py's train_shakespeare), exported, and decoded from --prompts slices of
its val text (each --prompt-chars long), --new-tokens greedy tokens each, through Generator.stream() as an app calls
it, once with lookahead=0 and once with each --lookahead value, per --variants (fp32, int8, int4 speculate). Each round runs every
(variant, lookahead) once, in a fresh random order, each alone with --pause seconds untimed before it (the method of
benchmarks/decode.py: an onnxruntime session's spinning threads would take the CPU from the next one). Also, per
exported variant, how far one verifying call of 9 tokens puts the logits from one step per token as a speculating
row runs them (int8/int4 in pairs of tokens) and with one-token steps (and from the same call with other tokens after
them, and when the row steps beside another row in a batch): why int8/int4 speculate only in pairs and fp16 not at
all, and how far a batch's other rows move a row's logits in each variant; on the trained model and on the
decode benchmark's reference model (6 x 384, random init). Per row: tokens/s (median over rounds, all
prompts of a round timed together), the ratio to lookahead 0 of the same variant (per round; median and min-max),
graph calls per token, draft tokens taken per verifying call and the share of draft tokens taken, and whether the
text equals lookahead 0's (greedy_same; fp32: it must; int8/int4, whose lookahead 0 steps one token per call: but
on a near tie). Then the worst case, the same rounds on a random model of the
decode benchmark's shape whose greedy output varies, so drafts are rare and mostly rejected (--no-varied skips it).

    python benchmarks/lookahead.py [--quick] [--train-steps N] [--rounds N] [--lookahead K ...]
Writes benchmarks/results/lookahead-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import CORPORA, LoadMeter, load_text, md_table, publish, train_shakespeare  # noqa: E402

KEYS = ["variant", "lookahead", "tokens_per_s", "ratio_vs_off", "ratio_min_max", "calls_per_token",
        "accepted_per_verify_call", "draft_acceptance", "greedy_same"]


def prompts_from_val(gen, val: np.ndarray, count: int, chars: int, seed: int = 0) -> list[str]:
    """`count` slices of the val text, `chars` characters each, at random starts (a char tokenizer: one id each)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(val) - chars, count)
    return [gen.tokenizer.decode([int(i) for i in val[s:s + chars]]) for s in starts]


def decode_all(gen, prompts: list[str], n: int, batch: int = 1) -> tuple[float, list[str], dict]:
    """Every prompt through gen.stream(), greedy, n new tokens: (seconds, texts, summed last_stats); batch > 1:
    the prompts `batch` at a time through gen.stream_batch() (a batch of 8 rows speculates together at fp32,
    through the rows graph: KVBuffers.extend_rows)."""
    from lmforge.runtime import RowRequest

    texts, stats = [], {}
    t = time.perf_counter()
    if batch > 1:
        for i in range(0, len(prompts), batch):
            parts = [[] for _ in prompts[i:i + batch]]
            for ev in gen.stream_batch([RowRequest(p, max_new_tokens=n, temperature=0) for p in prompts[i:i + batch]]):
                parts[ev.row].append(ev.text)
            texts += ["".join(x) for x in parts]
            for k, v in (gen.last_stats or {}).items():
                stats[k] = stats.get(k, 0) + v
        return time.perf_counter() - t, texts, stats
    for p in prompts:
        texts.append("".join(gen.stream(p, max_new_tokens=n, temperature=0)))
        for k, v in (gen.last_stats or {}).items():
            stats[k] = stats.get(k, 0) + v
    return time.perf_counter() - t, texts, stats


def measure(model_dir: Path, args, prompts: list[str] | None = None) -> dict:
    """The rounds: every (variant, lookahead) once per round, in a fresh random order, with a pause before each
    (prompts: default --prompts slices of the val text)."""
    from lmforge.runtime import Generator

    gens = {(v, k): Generator(model_dir, variant=v, threads=args.threads, lookahead=k,
                              batch_lookahead=args.batch > 1)
            for v in args.variants for k in (0, *args.lookahead)}
    prompts = prompts or prompts_from_val(next(iter(gens.values())), args.val, args.prompts, args.prompt_chars)
    for gen in gens.values():  # warm up: the first calls' costs
        decode_all(gen, prompts[:args.batch], 8, args.batch)
    rng, meter = random.Random(0), LoadMeter()
    seconds = {key: [] for key in gens}
    texts, stats = {}, {}
    for _ in range(args.rounds):
        order = list(gens)
        rng.shuffle(order)
        for key in order:
            time.sleep(args.pause)
            s, texts[key], stats[key] = decode_all(gens[key], prompts, args.new_tokens, args.batch)
            seconds[key].append(s)
    return {"rows": rows_of(gens, seconds, texts, stats, args), "load": meter.read(), "prompts": prompts}


def rows_of(gens: dict, seconds: dict, texts: dict, stats: dict, args) -> list[dict]:
    rows = []
    for (v, k), per_round in seconds.items():
        tps = args.prompts * args.new_tokens / np.array(per_round)
        ratio = np.array(seconds[v, 0]) / np.array(per_round)
        st = stats[v, k]
        rows.append({"variant": v, "lookahead": gens[v, k].lookahead,
                     "tokens_per_s": round(float(np.median(tps)), 1),
                     "ratio_vs_off": round(float(np.median(ratio)), 3),
                     "ratio_min_max": f"{ratio.min():.3f}-{ratio.max():.3f}",
                     "calls_per_token": round((st["calls"] + st["prefills"]) / max(1, st["tokens"]), 3),
                     "accepted_per_verify_call": round(st["accepted"] / max(1, st["verify_calls"]), 3),
                     "draft_acceptance": round(st["accepted"] / max(1, st["drafted"]), 3),
                     "greedy_same": texts[v, k] == texts[v, 0]})
    return rows


def stepped_and_extended(gen, ids: list[int], width: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Through a one-slot decoder of `gen` (its calls in pairs of tokens where gen speculates on int8/int4): the
    greedy tokens after `ids` and the logits of `width` of them one step per token, in one extend() call, and in
    one extend() call whose last 3 tokens are others."""
    dec = gen.decoder(1, gen.block_size)
    tokens, stepped = [int(dec.prefill_slot(0, ids).argmax())], []
    for _ in range(width):
        stepped.append(dec.step(np.array([tokens[-1]]))[0].copy())
        tokens.append(int(stepped[-1].argmax()))
    dec.truncate(0, len(ids))
    extended = dec.extend(0, tokens[:width]).copy()
    dec.truncate(0, len(ids))
    junk = dec.extend(0, tokens[:width - 3] + [3, 5, 7]).copy()
    return tokens, np.array(stepped), extended, junk


def verify_gaps(model_dir: Path, prompts: list[str], width: int = 9) -> list[dict]:
    """Per exported fast variant: how far one verifying call (KVBuffers.extend of `width` greedy tokens) puts each
    position's logits from one step per token (max abs over the prompts' positions), as a speculating row runs them
    (int8/int4: every call in pairs of tokens) and with one-token steps (lookahead 0: why the pairs), and from the
    same call with other tokens after them; and what a batch neighbour changes against the one-token steps."""
    from lmforge.runtime import Generator

    out = []
    for variant in ("fp32", "fp16", "int8", "int4"):
        try:
            gen = Generator(model_dir, variant=variant, lookahead=0)
        except ValueError:  # not exported
            continue
        spec = Generator(model_dir, variant=variant)  # the default lookahead: speculating, where it does
        gap = junk_gap = pair_gap = single_gap = 0.0
        for i, prompt in enumerate(prompts):
            ids = gen.encode(prompt)[-(gen.block_size - width - 4):]
            _, stepped_s, extended_s, junk = stepped_and_extended(spec, ids, width)
            gap = max(gap, float(np.abs(extended_s - stepped_s).max()))
            junk_gap = max(junk_gap, float(np.abs(junk[:width - 3] - extended_s[:width - 3]).max()))
            tokens, stepped, extended, _ = stepped_and_extended(gen, ids, width)
            single_gap = max(single_gap, float(np.abs(extended - stepped).max()))
            # the same row stepped beside another prompt's row, both greedy: what a batch neighbour changes
            pair = gen.decoder(2, gen.block_size)
            other = gen.encode(prompts[(i + 1) % len(prompts)])[-(gen.block_size - width - 4):]
            nxt = np.array([tokens[0], int(pair.prefill_slot(1, other).argmax())])
            pair.prefill_slot(0, ids)
            for j in range(width):
                both = pair.step(nxt)
                pair_gap = max(pair_gap, float(np.abs(both[0] - stepped[j]).max()))
                nxt = np.array([tokens[j + 1], int(both[1].argmax())])
        out.append({"variant": variant, "speculates": spec.speculates,
                    "max_logit_gap_vs_one_call_per_token": f"{gap:.2e}",
                    "the_same_with_one_token_steps": f"{single_gap:.2e}",
                    "max_logit_gap_from_other_tokens_in_the_call": f"{junk_gap:.2e}",
                    "max_logit_gap_from_a_batch_neighbour": f"{pair_gap:.2e}"})
    return out


def reference_model(work: Path) -> tuple[Path, list[str]]:
    """The decode benchmark's reference model itself (its shape, seed 0, random init), every variant exported, with
    4 random 16-character prompts: the gaps of verify_gaps at the width (384) the decode benchmark runs."""
    from decode import SHAPE, export_reference, reference_gpt

    out = export_reference(reference_gpt(), work)
    rng = np.random.default_rng(1)
    return out, ["".join(chr(0x4E00 + int(i)) for i in rng.integers(0, SHAPE["vocab_size"] - 4, 16)) for _ in range(4)]


def varied_model(work: Path, std: float = 0.06, count: int = 4) -> tuple[Path, list[str]]:
    """The decode benchmark's reference shape, random init with larger weights (N(0, std)), so that its greedy
    output varies instead of repeating one token: the lookup finds few drafts and most are rejected, the case
    where speculation can only cost. Every variant exported; 16-character random prompts."""
    import torch

    from decode import SHAPE, export_reference, reference_gpt

    model = reference_gpt()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)
    out = export_reference(model, work)
    rng = np.random.default_rng(0)
    return out, ["".join(chr(0x4E00 + int(i)) for i in rng.integers(0, SHAPE["vocab_size"] - 4, 16))
                 for _ in range(count)]


def markdown(report: dict) -> str:
    out = [f"`python benchmarks/lookahead.py {' '.join(report['argv'])}` ({report['time']}); shakespeare-char "
           f"trained {report['train_steps']} steps (best val loss {report['best_val_loss']}); {report['prompts']} "
           f"val prompts x {report['new_tokens']} greedy tokens, batch {report['batch']}, {report['rounds']} rounds; "
           f"{load_text(report['load'])}.", "", *md_table(report["rows"], KEYS)]
    if report.get("varied"):
        out += ["", "The worst case: a random model of the reference shape whose greedy output varies (drafts rare and "
                f"mostly rejected), the same rounds; {load_text(report['varied']['load'])}:", "",
                *md_table(report["varied"]["rows"], KEYS)]
    if report.get("verify_gaps"):
        out += ["", "One verifying call of 9 tokens against one step per token, as a speculating row runs them (int8/"
                "int4: in pairs of tokens) and with one-token steps; the same call with its last 3 tokens changed; "
                "the row stepped beside another prompt's row (same prompts):", "",
                *md_table(report["verify_gaps"])]
    if report.get("reference_gaps"):
        out += ["", "The same gaps on the decode benchmark's reference model (6 x 384, random init, every variant):", "",
                *md_table(report["reference_gaps"])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/lookahead.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200 training steps, 2 prompts x 64 tokens, 1 round")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-chars", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lookahead", type=int, nargs="+", default=[2, 4, 8], help="draft lengths against 0")
    p.add_argument("--variants", nargs="+", default=["fp32"], help="variants timed (fp32, int8, int4 speculate)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="rows decoded together (8: the rows graph's batch; --prompts "
                                                        "is raised to a multiple of it)")
    p.add_argument("--pause", type=float, default=0.05)
    p.add_argument("--corpora", type=Path, default=CORPORA)
    p.add_argument("--no-varied", action="store_true", help="skip the worst-case phase (a varied random model)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.prompts, args.new_tokens, args.rounds = 200, 2, 64, 1
    args.prompts = -(-args.prompts // args.batch) * args.batch
    if not (args.corpora / "tinyshakespeare.txt").is_file():
        print(f"error: no tinyshakespeare.txt under {args.corpora} (hint: set LMFORGE_CORPORA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        _, out, val, _, result, _ = train_shakespeare(args.train_steps, args.threads, args.corpora, Path(work))
        args.val = np.asarray(val)
        report = {"argv": argv if argv is not None else sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "train_steps": args.train_steps, "best_val_loss": round(float(result.best_val_loss), 4),
                  "new_tokens": args.new_tokens, "rounds": args.rounds, "batch": args.batch,
                  **measure(out, args)}
        report["verify_gaps"] = verify_gaps(out, report["prompts"])
        (Path(work) / "reference").mkdir()
        report["reference_gaps"] = verify_gaps(*reference_model(Path(work) / "reference"))
        if not args.no_varied:
            (Path(work) / "varied").mkdir()
            varied, prompts = varied_model(Path(work) / "varied", count=args.prompts)
            report["varied"] = measure(varied, args, prompts)
            report["varied"]["prompts"] = len(prompts)
    report["prompts"] = len(report["prompts"])
    publish(report, "lookahead", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
