"""Which calls of the int8 and int4 fast graphs agree to the bit, and what a wider call costs: onnxruntime's CPU
kernels, measured on the decode benchmark's reference model (benchmarks/decode.py: 6 layers x 384, vocab 8192, random
init, seed 0). Why the runtime runs a speculating row's int8/int4 calls in pairs of tokens (KVBuffers.pairs).

Graphs: fp32; lmforge's int8 (MatMulNBits, 8-bit blocks of 128, accuracy level 4: int8 compute; export.int8_kernel
"blocks", the default); int8 "dynamic" (quantize_dynamic of the fp32 graph: DynamicQuantizeMatMul, one activation
scale per call); int4 (MatMulNBits, 4-bit blocks of 128). For each: a prompt of 32 random tokens is prefilled, then
its next 32 tokens are run in calls of `width` tokens each (width 1, 2, 3, 4, 5, 6, 8, 16); the max |logit| gap of
every width against width 2 and against width 1 says which calls agree. Then the time of one call of 1, 2, 3, 4,
6, 8, 16 and 40 tokens at batch 1, and of one token per row at batch 8, at position 100 (caches and inputs bound
once, as the runtime runs them; median of --rounds x 50 calls), since speculation only pays where a wider call
costs little more.

    python benchmarks/int_kernels.py [--threads N] [--rounds N]
Writes benchmarks/results/int-kernels-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import SHAPE, LoadMeter, bound_call, load_text, md_table, publish, reference_gpt  # noqa: E402

WIDTHS = (1, 2, 3, 4, 5, 6, 8, 16)
# (batch, tokens per row) of the timed calls; 8, 16 and 40 tokens at batch 1: what a call of 8 rows x 1, 2 and 5
# tokens costs in its MatMuls (a batch of 8 verifying drafts of 1 and 4)
CALL_SHAPES = ((1, 1), (1, 2), (1, 3), (1, 4), (1, 6), (1, 8), (1, 16), (1, 40), (8, 1))


def graphs(work: Path) -> dict[str, Path]:
    from lmforge.export.fast import build_fast_gpt
    from lmforge.export.variants import quantize_int8
    from lmforge.models import model_spec

    model = reference_gpt()
    spec = model_spec(model)
    fp32 = build_fast_gpt(model, spec, work / "fp32.onnx")
    return {"fp32 (MatMul)": fp32,
            "int8 (MatMulNBits 8-bit, the default)": build_fast_gpt(model, spec, work / "int8.onnx", precision="int8"),
            "int8 dynamic (DynamicQuantizeMatMul)": quantize_int8(fp32, work / "int8-dynamic.onnx"),
            "int4 (MatMulNBits 4-bit)": build_fast_gpt(model, spec, work / "int4.onnx", precision="int4")}


def measure(path: Path, threads: int, rounds: int) -> dict:
    import onnxruntime as ort

    from lmforge.runtime.names import kv_names

    past, _ = kv_names(SHAPE["n_layer"])
    H, D, cap = SHAPE["n_head"], SHAPE["n_embd"] // SHAPE["n_head"], SHAPE["block_size"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def feeds(ids: np.ndarray, start: int, kv: list) -> dict:
        S = ids.shape[1]
        return {"input_ids": ids, "position_ids": np.arange(start, start + S, dtype=np.int64)[None],
                "seqlens_k": np.array([start + S - 1], np.int32),
                "total_sequence_length": np.array(start + S, np.int32), **dict(zip(past, kv))}

    prompt = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (1, 64))
    kv0 = sess.run(None, feeds(prompt[:, :32], 0, [np.zeros((1, H, cap, D), np.float32) for _ in past]))[1:]
    logits = {}
    for w in WIDTHS:
        kv, parts, t = [a.copy() for a in kv0], [], 32
        while t < 64:
            n = min(w, 64 - t)
            out = sess.run(None, feeds(prompt[:, t:t + n], t, kv))
            kv, t = out[1:], t + n
            parts.append(out[0][0])
        logits[w] = np.concatenate(parts)
    row = {f"gap_w{w}_vs_w2": float(np.abs(logits[w] - logits[2]).max()) for w in WIDTHS if w != 2}
    row["gap_w2_vs_w1"] = float(np.abs(logits[2] - logits[1]).max())
    for B, n in CALL_SHAPES:
        binding, _keep = bound_call(sess, B, n, 100)
        for _ in range(20):
            sess.run_with_iobinding(binding)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(50):
                sess.run_with_iobinding(binding)
            times.append((time.perf_counter() - t0) / 50 * 1e3)
        row[f"call_ms_b{B}x{n}"] = round(float(np.median(times)), 3)
    return row


def markdown(report: dict) -> str:
    def fmt(key: str, value) -> str:
        return f"{value:.2e}" if key.startswith("gap") else str(value)
    return "\n".join([f"`python benchmarks/int_kernels.py {' '.join(report['argv'])}` ({report['time']}); the decode "
                      f"benchmark's reference model, {report['threads']} threads, {report['rounds']} rounds; "
                      f"{load_text(report['load'])}.", "", *md_table(report["rows"], fmt=fmt)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/int_kernels.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        paths = graphs(Path(work))
        load = LoadMeter()
        rows = [{"graph": name, **measure(path, args.threads, args.rounds)} for name, path in paths.items()]
    report = {"argv": argv if argv is not None else sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "threads": args.threads, "rounds": args.rounds, "load": load.read(), "rows": rows}
    publish(report, "int-kernels", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
