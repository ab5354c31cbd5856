"""Why the int8 and int4 fast graphs cannot verify drafts exactly: onnxruntime's CPU kernels, measured on the decode
benchmark's reference model (benchmarks/decode.py: 6 layers x 384, vocab 8192, random init, seed 0).

Graphs: lmforge's int8 (quantize_dynamic of the fp32 fast graph: DynamicQuantizeMatMul, one activation scale per
call), its int4 (MatMulNBits, 4-bit blocks of 128, accuracy level 4), and a candidate int8 built as MatMulNBits with
8-bit blocks of 128 (accuracy level 4: int8 compute). For each: a prompt of 32 random tokens is prefilled, then its
next 32 tokens are run in calls of `width` tokens each (width 1, 2, 3, 4, 5, 6, 8, 16); the max |logit| gap of every
width against width 2 and against width 1 says which calls agree. Then the time of one call of 1, 2, 3 and 5 tokens
at position 100 (median of --rounds x 50 calls), since speculation only pays where a wider call costs little more.

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
from decode import SHAPE, LoadMeter, load_text, md_table, write_report  # noqa: E402

WIDTHS = (1, 2, 3, 4, 5, 6, 8, 16)
CALL_TOKENS = (1, 2, 3, 5)


def graphs(work: Path) -> dict[str, Path]:
    import torch

    from lmforge.export.fast import INT4, BlockQuant, build_fast_gpt
    from lmforge.export.variants import quantize_int8
    from lmforge.models import model_spec
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE)).eval()
    spec = model_spec(model)
    fp32 = build_fast_gpt(model, spec, work / "fp32.onnx")
    out = {"fp32 (MatMul)": fp32, "int8 (DynamicQuantizeMatMul)": quantize_int8(fp32, work / "int8.onnx"),
           "int4 (MatMulNBits 4-bit)": build_fast_gpt(model, spec, work / "int4.onnx", precision="int4", quant=INT4)}
    nb8 = BlockQuant(bits=8, block=128, head_bits=8)
    out["int8 candidate (MatMulNBits 8-bit)"] = build_fast_gpt(model, spec, work / "nb8.onnx", precision="int4",
                                                               quant=nb8)
    return out


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
    for n in CALL_TOKENS:
        kv = [np.zeros((1, H, cap, D), np.float32) for _ in past]
        f = feeds(np.zeros((1, n), np.int64), 100, kv)
        for _ in range(20):
            sess.run(None, f)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(50):
                sess.run(None, f)
            times.append((time.perf_counter() - t0) / 50 * 1e3)
        row[f"call_ms_{n}_tokens"] = round(float(np.median(times)), 3)
    return row


def markdown(report: dict) -> str:
    def fmt(key: str, value) -> str:
        return f"{value:.2e}" if key.startswith("gap") else str(value)
    return "\n".join([f"`python benchmarks/int_kernels.py {' '.join(report['argv'])}` ({report['time']}); the decode "
                      f"benchmark's reference model, batch 1, {report['threads']} threads, {report['rounds']} rounds; "
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
    stem = write_report(report, "int-kernels", markdown)
    print(markdown(report))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
