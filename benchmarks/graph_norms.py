"""The fast graph's residual add + LayerNorm, two ways, side by side: one com.microsoft SkipLayerNormalization per
norm (the fast graph before, and the fp16 graph's still) against an Add and a standard LayerNormalization
(lmforge.export.fast.FUSED_NORM_PRECISIONS). Both graphs of each precision (fp32, int8, int4) are built from the
decode benchmark's reference model (benchmarks/decode.py: 6 layers x 384, vocab 8192, random init, seed 0), and one
decode call is timed at batch 1 and at batch 8 (one token per row, position --position, caches and inputs bound
once, as the runtime runs them). The two sessions of a precision take turns call block by call block (--block calls
each, in a fresh random order every round), each created with `session.force_spinning_stop` so that neither's idle
threads spin into the other's turn (benchmarks/spinning.py). Also: the largest logit gap between the two graphs on
the same prompt, and which norm ops onnxruntime's optimizer leaves in each (it fuses an Add + LayerNormalization
back into SkipLayerNormalization only where nothing else reads the sum: the last, ln_f). And the norms alone: a
chain of 13 of each form (what a 6-layer graph has), µs per norm at batch 1 and 8, taking turns the same way.

    python benchmarks/graph_norms.py [--rounds N] [--block N] [--position N] [--threads N]
Writes benchmarks/results/graph-norms-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import SHAPE, LoadMeter, bound_call, load_text, md_table, publish, reference_gpt  # noqa: E402

PRECISIONS = ("fp32", "int8", "int4")
FORMS = {"SkipLayerNormalization": True, "Add + LayerNormalization": False}  # name -> build_fast_gpt(fused_norm=)


def graphs(work: Path) -> dict[tuple[str, str], Path]:
    from lmforge.export.fast import build_fast_gpt
    from lmforge.models import model_spec

    model = reference_gpt()
    spec = model_spec(model)
    return {(p, form): build_fast_gpt(model, spec, work / f"{p}-{fused}.onnx", precision=p, fused_norm=fused)
            for p in PRECISIONS for form, fused in FORMS.items()}


def session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logit_gap(a, b) -> float:
    """Max |logit| gap of the two sessions on one 32-token prompt from position 0."""
    from lmforge.runtime.names import kv_names

    past, _ = kv_names(SHAPE["n_layer"])
    H, D, cap = SHAPE["n_head"], SHAPE["n_embd"] // SHAPE["n_head"], SHAPE["block_size"]
    ids = np.random.default_rng(1).integers(0, SHAPE["vocab_size"], (1, 32))
    feeds = {"input_ids": ids, "position_ids": np.arange(32, dtype=np.int64)[None], "seqlens_k": np.array([31], np.int32),
             "total_sequence_length": np.array(32, np.int32),
             **{n: np.zeros((1, H, cap, D), np.float32) for n in past}}
    return float(np.abs(a.run(["logits"], feeds)[0] - b.run(["logits"], feeds)[0]).max())


def norm_ops(path: Path) -> str:
    import onnx

    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return ", ".join(f"{ops[k]} {k}" for k in ("SkipLayerNormalization", "LayerNormalization") if ops[k])


def measure(paths: dict, work: Path, args) -> list[dict]:
    rows = []
    for p in PRECISIONS:
        sessions = {form: session(paths[(p, form)], args.threads, work / f"opt-{p}-{i}.onnx")
                    for i, form in enumerate(FORMS)}
        gap = logit_gap(*sessions.values())
        for batch in (1, 8):
            calls = {form: bound_call(s, batch, 1, args.position) for form, s in sessions.items()}
            times = collections.defaultdict(list)
            for _ in range(args.rounds):
                order = list(FORMS)
                random.shuffle(order)
                for form in order:
                    binding = calls[form][0]
                    for _ in range(5):
                        sessions[form].run_with_iobinding(binding)
                    t0 = time.perf_counter()
                    for _ in range(args.block):
                        sessions[form].run_with_iobinding(binding)
                    times[form].append((time.perf_counter() - t0) / args.block * 1e3)
            fused, plain = (np.array(times[f]) for f in FORMS)
            ratio = fused / plain  # per round: how many times the plain graph's speed
            rows.append({"precision": p, "batch": batch,
                         **{f"{f} ms/call": round(float(np.median(times[f])), 3) for f in FORMS},
                         "speedup (median, min-max)": f"{np.median(ratio):.3f} ({ratio.min():.3f}-{ratio.max():.3f})",
                         "logit gap": f"{gap:.1e}",
                         "after onnxruntime's optimizer": " / ".join(norm_ops(work / f"opt-{p}-{i}.onnx")
                                                                     for i in range(len(FORMS)))})
    return rows


def norm_chain(fused: bool, n: int = 13) -> bytes:
    """n residual norms in a chain, x_{i+1} = the sum of norm i (its output feeding the next norm's skip), of one
    form: SkipLayerNormalization, or Add + LayerNormalization whose sum two nodes read (as in the graph: the
    optimizer leaves them unfused)."""
    from onnx import TensorProto, helper, numpy_helper

    C = SHAPE["n_embd"]
    inits = [numpy_helper.from_array(np.ones(C, np.float32), "g"), numpy_helper.from_array(np.zeros(C, np.float32), "b")]
    nodes, x, y = [], "x", "s"
    for i in range(n):
        if fused:
            nodes.append(helper.make_node("SkipLayerNormalization", [x, y, "g", "b"], [f"y{i}", "", "", f"x{i}"],
                                          domain="com.microsoft", epsilon=1e-5))
        else:
            nodes += [helper.make_node("Add", [x, y], [f"x{i}"]),
                      helper.make_node("LayerNormalization", [f"x{i}", "g", "b"], [f"y{i}"], axis=-1, epsilon=1e-5)]
        x, y = f"x{i}", f"y{i}"
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", 1, C])  # noqa: E731
    graph = helper.make_graph(nodes, "norms", [io("x"), io("s")], [io(x), io(y)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)]).SerializeToString()


def measure_norms(args) -> list[dict]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    sessions = {form: ort.InferenceSession(norm_chain(fused), opts, providers=["CPUExecutionProvider"])
                for form, fused in FORMS.items()}
    rows = []
    for batch in (1, 8):
        rng = np.random.default_rng(0)
        feeds = {k: rng.standard_normal((batch, 1, SHAPE["n_embd"])).astype(np.float32) for k in ("x", "s")}
        times = collections.defaultdict(list)
        for _ in range(args.rounds):
            order = list(FORMS)
            random.shuffle(order)
            for form in order:
                for _ in range(20):
                    sessions[form].run(None, feeds)
                t0 = time.perf_counter()
                for _ in range(200):
                    sessions[form].run(None, feeds)
                times[form].append((time.perf_counter() - t0) / 200 / 13 * 1e6)
        rows.append({"batch": batch, **{f"{f} µs per norm": round(float(np.median(times[f])), 2) for f in FORMS}})
    return rows


def markdown(report: dict) -> str:
    return "\n".join([
        f"`python benchmarks/graph_norms.py {' '.join(report['argv'])}` ({report['time']}); the decode benchmark's "
        f"reference model, {report['threads']} threads, one token per row at position {report['position']}, "
        f"{report['rounds']} rounds of {report['block']} calls per graph, taking turns; {load_text(report['load'])}. "
        "speedup: SkipLayerNormalization's ms per call / Add + LayerNormalization's, per round.", "",
        *md_table(report["rows"]), "", "A chain of 13 norms alone (µs per norm, the session run's own cost "
        "spread over them; medians over the same rounds of 200 runs):", "", *md_table(report["norms"])])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/graph_norms.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--block", type=int, default=50)
    p.add_argument("--position", type=int, default=144, help="tokens already cached (default 144: the middle of "
                   "the decode benchmark's 16-token prompts + 256 new tokens)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        paths = graphs(Path(work))
        load = LoadMeter()
        rows = measure(paths, Path(work), args)
        norms = measure_norms(args)
    report = {"argv": argv if argv is not None else sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              **{k: getattr(args, k) for k in ("threads", "rounds", "block", "position")}, "load": load.read(),
              "rows": rows, "norms": norms}
    publish(report, "graph-norms", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
