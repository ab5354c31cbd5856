"""The int4 step against its bound: how the fast graph's 4-bit weights are stored (lmforge.export.fast.BlockQuant:
block size, zero points or symmetric, the LM head at 4 or 8 bits), each choice's speed, its share of its own
weight-bytes bound, and its quality cost.

Speed: the reference shape of benchmarks/decode.py (random-init gpt 6 x 384, vocab 8192), one int4 graph per
choice, batch 1, a 16-token prompt then 256 greedy steps through onnxruntime with the KV buffers bound in place
(the runtime's decode step without its loop), all choices interleaved in sweeps of 8 steps; per round the median
ms/step, reported as the median over rounds and the speed ratio to blocks of 32 with zero points (min-max over
rounds). bound_share = steps/s over (memory bandwidth / weight bytes one step reads), as in decode.py.
Quality: shakespeare-char trained --train-steps steps here, each choice's int4 graph scored through the runtime
against the fp32 fast graph (lmforge.runtime.scoring.stepped_score, as the export's verification does, at
--positions val positions): loss delta, top-1 agreement, and greedy agreement over 16 val prompts x 32 tokens.

    python benchmarks/int4_variants.py [--train-steps 600] [--positions 2048] [--rounds 6] [--threads 2]
Writes benchmarks/results/int4-variants-<time>.json and .md."""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import (CORPORA, PROMPT_LEN, SHAPE, LoadMeter, load_text, memory_bandwidth,  # noqa: E402
                    profile_step, publish, reference_gpt, train_shakespeare, weight_bytes)

from lmforge.export.fast import INT4, BlockQuant  # noqa: E402

CHOICES = {"blocks of 32, zero points, 4-bit head": BlockQuant(block=32),
           "blocks of 32, symmetric, 4-bit head": BlockQuant(block=32, symmetric=True),
           "blocks of 32, zero points, 8-bit head": BlockQuant(block=32, head_bits=8),
           "blocks of 64, zero points, 4-bit head": BlockQuant(block=64),
           "blocks of 128, zero points, 4-bit head": BlockQuant(block=128),
           "blocks of 128, symmetric, 4-bit head": BlockQuant(block=128, symmetric=True),
           "blocks of 128, zero points, 8-bit head": BlockQuant(block=128, head_bits=8)}


def step_times(files: dict[str, Path], threads: int, rounds: int, n: int = 256, block: int = 8) -> dict:
    """{name: [median ms/step per round]} of greedy batch-1 decoding, the graphs interleaved sweep by sweep."""
    import onnxruntime as ort

    def session(path: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    sessions = {k: session(f) for k, f in files.items()}

    class Lane:
        def __init__(self, sess, ids: list[int]):
            self.sess, self.b = sess, sess.io_binding()
            P, cap = len(ids), len(ids) + n
            for i in sess.get_inputs():
                if i.name.startswith("past_key_values"):
                    buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, SHAPE["n_head"], cap,
                                                                     SHAPE["n_embd"] // SHAPE["n_head"]), np.float32))
                    self.b.bind_ortvalue_input(i.name, buf)
                    self.b.bind_ortvalue_output(i.name.replace("past_key_values", "present"), buf)
            prefill = np.zeros((1, P, SHAPE["vocab_size"]), np.float32)
            for name, value in (("input_ids", np.array([ids], np.int64)), ("position_ids", np.arange(P)[None]),
                                ("seqlens_k", np.array([P - 1], np.int32)),
                                ("total_sequence_length", np.array(P, np.int32))):
                self.b.bind_cpu_input(name, np.asarray(value))
            self.b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(prefill))
            sess.run_with_iobinding(self.b)
            self.length, self.token = P, int(prefill[0, -1].argmax())
            self.ids, self.pos = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
            self.seqlens, self.total = np.zeros(1, np.int32), np.zeros((), np.int32)
            self.logits = np.zeros((1, 1, SHAPE["vocab_size"]), np.float32)
            for name, a in (("input_ids", self.ids), ("position_ids", self.pos), ("seqlens_k", self.seqlens),
                            ("total_sequence_length", self.total)):
                self.b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a))
            self.b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))

        def advance(self, k: int) -> None:
            for _ in range(k):
                self.ids[0, 0], self.pos[0, 0], self.seqlens[0] = self.token, self.length, self.length
                self.total[...] = self.length + 1
                self.sess.run_with_iobinding(self.b)
                self.length += 1
                self.token = int(self.logits[0, 0].argmax())

    for sess in sessions.values():  # warm up
        Lane(sess, [5] * PROMPT_LEN).advance(4)
    rng, out = random.Random(0), {k: [] for k in files}
    for r in range(rounds):
        ids = np.random.default_rng(r).integers(4, SHAPE["vocab_size"], PROMPT_LEN).tolist()
        lanes = {k: Lane(s, ids) for k, s in sessions.items()}
        per = {k: [] for k in files}
        for _ in range((n - 1) // block):
            order = list(files)
            rng.shuffle(order)
            for k in order:
                t = time.perf_counter()
                lanes[k].advance(block)
                per[k].append((time.perf_counter() - t) * 1e3 / block)
        for k in files:
            out[k].append(float(np.median(per[k])))
    return out


def quality(choices: dict[str, BlockQuant], steps: int, positions: int, threads: int, corpora: Path) -> dict:
    from lmforge.export.fast import build_fast_gpt
    from lmforge.models import model_spec
    from lmforge.runtime import Generator
    from lmforge.runtime.scoring import greedy_ids, stepped_score, val_rows

    with tempfile.TemporaryDirectory() as tmp:
        model, out, va, cfg, result, train_s = train_shakespeare(steps, threads, corpora, Path(tmp))
        spec = model_spec(model)
        rows = val_rows(va, spec["block_size"], positions)
        fp32 = Generator(out, threads=threads)
        ref = stepped_score(fp32, rows, positions)
        offsets = np.linspace(0, len(va) - 64, 16).astype(int)
        prompts = [np.asarray(va[o:o + 16], np.int64).tolist() for o in offsets]
        greedy_ref = [greedy_ids(fp32, p, 32) for p in prompts]
        res = {}
        for name, q in choices.items():
            build_fast_gpt(model, spec, out / "model.fast.int4.onnx", precision="int4", quant=q)
            gen = Generator(out, variant="int4", threads=threads)
            loss, top = stepped_score(gen, rows, positions)
            got = [greedy_ids(gen, p, 32) for p in prompts]
            res[name] = {"loss_delta": round(loss - ref[0], 5), "top1_agreement": round(float((top == ref[1]).mean()), 4),
                         "greedy_agreement": round(sum(a == b for x, y in zip(got, greedy_ref) for a, b in zip(x, y))
                                                   / (32 * len(prompts)), 4)}
        return {"preset": cfg.name, "steps": steps, "train_s": round(train_s, 1),
                "best_val_loss": round(result.best_val_loss, 4), "fp32_loss": round(ref[0], 4),
                "positions": positions, "choices": res}


def markdown(report: dict) -> str:
    q = report.get("quality") or {}
    out = [f"Speed: reference shape, batch 1, {report['rounds']} rounds interleaved, {report['threads']} threads "
           f"({load_text(report['load'])}); memory bandwidth {report['bandwidth_gb_s']} GB/s. Quality: "
           + (f"{q['preset']} trained {q['steps']} steps (best val loss {q['best_val_loss']}), {q['positions']} val "
              f"positions against the fp32 fast graph (loss {q['fp32_loss']})." if q.get("choices") else "not run."),
           "", "| int4 weights | ms/step | speed vs blocks of 32 | min-max | weight MB | bound share | loss delta "
           "| top-1 | greedy |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        c = (q.get("choices") or {}).get(r["choice"], {})
        mark = " (default)" if r["default"] else ""
        out.append(f"| {r['choice']}{mark} | {r['ms_per_step']} | {r['speed']} | {r['min']}-{r['max']} | "
                   f"{r['weight_mb']} | {r['bound_share']} | {c.get('loss_delta', '—')} | "
                   f"{c.get('top1_agreement', '—')} | {c.get('greedy_agreement', '—')} |")
    for p in report.get("profile") or []:
        out.append(f"- profile {p['file']} at cache length {p['past']}: {p['ms_per_step']} ms/step, kernel time "
                   + ", ".join(f"{k} {v}" for k, v in list(p["kernel_time"].items())[:6]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--train-steps", type=int, default=600, help="0: speed only")
    p.add_argument("--positions", type=int, default=2048)
    p.add_argument("--corpora", type=Path, default=CORPORA)
    args = p.parse_args(argv)
    import torch

    from lmforge.export.fast import build_fast_gpt
    from lmforge.models import model_spec
    torch.set_num_threads(args.threads)
    bandwidth = memory_bandwidth(args.threads)
    model = reference_gpt()
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: build_fast_gpt(model, model_spec(model), Path(tmp) / f"int4-{i}.onnx", "int4", q)
                 for i, (name, q) in enumerate(CHOICES.items())}
        meter = LoadMeter()
        times = step_times(files, args.threads, args.rounds)
        load = meter.read()
        base = np.array(times[next(iter(CHOICES))])
        rows = []
        for name, ts in times.items():
            r = base / np.array(ts)
            wb = weight_bytes(files[name])
            ms = float(np.median(ts))
            rows.append({"choice": name, "default": CHOICES[name] == INT4, "ms_per_step": round(ms, 3),
                         "speed": round(float(np.median(r)), 3), "min": round(float(r.min()), 3),
                         "max": round(float(r.max()), 3), "weight_mb": round(wb / 1e6, 2),
                         "bound_share": round((1e3 / ms) / (bandwidth * 1e9 / wb), 2)})
        default = next(n for n, q in CHOICES.items() if q == INT4)
        profile = [profile_step(files[n], args.threads) for n in (next(iter(CHOICES)), default)]
        for pr, n in zip(profile, (next(iter(CHOICES)), default)):
            pr["file"] = n
    report = {"rows": rows, "load": load, "rounds": args.rounds, "threads": args.threads,
              "bandwidth_gb_s": round(bandwidth, 1), "profile": profile}
    if args.train_steps:
        report["quality"] = quality(CHOICES, args.train_steps, args.positions, args.threads, args.corpora)
    publish(report, "int4-variants", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
