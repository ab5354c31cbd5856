"""Decode-step options measured side by side (issue 29: a decode step with no Python in the hot path), each on
lmforge's fast graphs of the reference shape (benchmarks/decode.py), batch 1, interleaved in sweeps of --block
steps, medians over rounds with the min-max of the per-round ratio:

1. step + numpy argmax      one session call per token, logits bound in place, greedy in numpy (the runtime's
                            path before the graph had next_token)
2. step + in-graph ArgMax   one call per token, the graph's next_token output read instead (today's graph)
3. Loop of --chunk steps    an ONNX Loop over the step, greedy inside, --chunk tokens per call (what "several
                            decode steps per run" costs: inside a Loop the KV cache is a loop-carried value, so
                            GroupQueryAttention cannot write it in place and copies the past every iteration)
4. sampling: numpy          runtime.sampling.sample_next on one row of logits, per setting
5. sampling: onnxruntime    a sampling graph (below) run as its own session call on the same logits

Greedy tokens of 1-3 are compared token for token. onnxruntime-genai's generation contrib ops (GreedySearch,
BeamSearch, Sampling) are not measured: they take the whole prompt and return all tokens at the end (no
streaming, no past state in or out), so a streaming loop would re-run the prompt every chunk.

    python benchmarks/decode_options.py [--rounds N] [--block N] [--chunk N] [--threads N]
Writes benchmarks/results/decode-options-<time>.json and .md."""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import PROMPT_LEN, SHAPE, LoadMeter, load_text, publish, reference_gpt  # noqa: E402

SAMPLING = [{"temperature": 0.8}, {"temperature": 0.8, "top_k": 40}, {"temperature": 0.8, "top_p": 0.9},
            {"temperature": 0.8, "top_k": 40, "top_p": 0.9}, {"temperature": 0.8, "top_k": 40, "repetition_penalty": 1.3}]


def with_argmax(src: Path, dst: Path) -> Path:
    """The fast graph plus next_token [B,S] int64 = ArgMax(logits) (option 2)."""
    m = onnx.load(str(src))
    m.graph.node.append(helper.make_node("ArgMax", ["logits"], ["next_token"], name="next_token", axis=-1,
                                         keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch", "seq"]))
    onnx.save(m, str(dst))
    return dst


def build_loop(src: Path, dst: Path) -> Path:
    """An ONNX Loop whose body is the fast graph's step, greedy inside: inputs as the fast graph's plus `steps`
    (the trip count); outputs tokens [steps, B, 1] and the present buffers. The weights stay outer-scope
    initializers the body reads."""
    m = onnx.load(str(with_argmax(src, dst)))
    g = m.graph
    past = [i.name for i in g.input if i.name.startswith("past")]
    present = [o.name for o in g.output if o.name.startswith("present")]
    state = ["input_ids", "position_ids", "seqlens_k", "total_sequence_length"]
    inputs = {i.name: i for i in g.input}
    inner = set(state + past + present + ["logits", "next_token"])
    rn = lambda x: "b_" + x if x in inner else x
    body_in = [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
               helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])]
    body_in += [helper.make_tensor_value_info(rn(n), inputs[n].type.tensor_type.elem_type, None) for n in state + past]
    nodes = []
    for n in g.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.input[:] = [rn(x) for x in c.input]
        c.output[:] = [rn(x) for x in c.output]
        nodes.append(c)
    nodes += [helper.make_node("Identity", [rn("next_token")], ["ids_next"]),
              helper.make_node("Add", [rn("position_ids"), "one64"], ["pos_next"]),
              helper.make_node("Add", [rn("seqlens_k"), "one32"], ["sl_next"]),
              helper.make_node("Add", [rn("total_sequence_length"), "one32"], ["tot_next"]),
              helper.make_node("Identity", ["cond_in"], ["cond_out"]),
              helper.make_node("Identity", [rn("next_token")], ["tok_scan"])]
    body_out = [helper.make_tensor_value_info(n, t, None) for n, t in
                [("cond_out", TensorProto.BOOL), ("ids_next", TensorProto.INT64), ("pos_next", TensorProto.INT64),
                 ("sl_next", TensorProto.INT32), ("tot_next", TensorProto.INT32)]]
    body_out += [helper.make_tensor_value_info(rn(p), TensorProto.FLOAT, None) for p in present]
    body_out += [helper.make_tensor_value_info("tok_scan", TensorProto.INT64, None)]
    loop = helper.make_node("Loop", ["steps", "cond"] + state + past, ["o_ids", "o_pos", "o_sl", "o_tot"] + present
                            + ["tokens"], body=helper.make_graph(nodes, "step", body_in, body_out))
    outer = helper.make_graph(
        [loop], "lmforge_gpt_loop", [inputs[n] for n in state + past]
        + [helper.make_tensor_value_info("steps", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, None)] + [o for o in g.output if o.name in present],
        list(g.initializer) + [numpy_helper.from_array(np.array(1, np.int64), "one64"),
                               numpy_helper.from_array(np.array(1, np.int32), "one32"),
                               numpy_helper.from_array(np.array(True), "cond")])
    onnx.save(helper.make_model(outer, opset_imports=list(m.opset_import), ir_version=m.ir_version), str(dst))
    return dst


def build_sampler(path: Path) -> Path:
    """The sampling graph: logits [B,V], uniform [B], temperature [], top_k [], top_p [], penalty [], seen [B,V]
    -> token [B]: runtime.sampling's arithmetic (repetition penalty, greedy at temperature 0, else exp((x - max) /
    temperature) over the top_k largest, then the top_p prefix, and the first candidate whose cumulative mass
    passes uniform x the total), as onnxruntime ops behind two If nodes."""
    consts = {"zero_f": np.array(0, np.float32), "one_f": np.array(1, np.float32), "zero_i": np.array(0, np.int64),
              "one_i": np.array(1, np.int64), "axis1": np.array([1], np.int64), "vdim": np.array([1], np.int64),
              "first": np.array([0], np.int64), "end": np.array([1], np.int64)}
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    mk = helper.make_node

    def graph(name: str, nodes: list, outputs: list[str]):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.INT64, None)
                                                   for o in outputs])

    def pick(prefix: str, cdf: str, out: str, candidates: str | None) -> list:
        """The first candidate whose cumulative mass exceeds uniform x total (never past the last candidate)."""
        nodes = [mk("ReduceMax", [cdf, "axis1"], [f"{prefix}_total"], keepdims=1),
                 mk("Mul", [f"{prefix}_total", "uniform_col"], [f"{prefix}_target"]),
                 mk("LessOrEqual", [cdf, f"{prefix}_target"], [f"{prefix}_below"]),
                 mk("Cast", [f"{prefix}_below"], [f"{prefix}_below_i"], to=TensorProto.INT64),
                 mk("ReduceSum", [f"{prefix}_below_i", "axis1"], [f"{prefix}_count"], keepdims=1),
                 mk("Shape", [cdf], [f"{prefix}_cdf_shape"]),
                 mk("Gather", [f"{prefix}_cdf_shape", "one_i"], [f"{prefix}_n"], axis=0),
                 mk("Sub", [f"{prefix}_n", "one_i"], [f"{prefix}_maxcol"]),
                 mk("Min", [f"{prefix}_count", f"{prefix}_maxcol"], [f"{prefix}_col"])]
        if candidates is None:
            return nodes + [mk("Squeeze", [f"{prefix}_col", "axis1"], [out])]
        return nodes + [mk("GatherElements", [candidates, f"{prefix}_col"], [f"{prefix}_tok"], axis=1),
                        mk("Squeeze", [f"{prefix}_tok", "axis1"], [out])]

    # candidates in vocabulary order: temperature only
    plain = graph("plain", [
        mk("ReduceMax", ["x", "axis1"], ["p_max"], keepdims=1),
        mk("Sub", ["x", "p_max"], ["p_shift"]),
        mk("Div", ["p_shift", "temperature"], ["p_scaled"]),
        mk("Exp", ["p_scaled"], ["p_probs"]),
        mk("CumSum", ["p_probs", "one_i"], ["p_cdf"]),
        *pick("p", "p_cdf", "plain_token", None)], ["plain_token"])
    # candidates in descending order: the top_k largest (all when top_k is 0), then the top_p prefix
    ranked = graph("ranked", [
        mk("Shape", ["x"], ["r_shape"]),
        mk("Gather", ["r_shape", "vdim"], ["r_vocab"], axis=0),
        mk("Greater", ["top_k", "zero_i"], ["r_has_k"]),
        mk("Unsqueeze", ["top_k", "first"], ["r_k1"]),
        mk("Min", ["r_k1", "r_vocab"], ["r_kmin"]),
        mk("Where", ["r_has_k", "r_kmin", "r_vocab"], ["r_k"]),
        mk("TopK", ["x", "r_k"], ["r_vals", "r_ids"], axis=1, largest=1, sorted=1),
        mk("Slice", ["r_vals", "first", "end", "axis1"], ["r_top"]),
        mk("Sub", ["r_vals", "r_top"], ["r_shift"]),
        mk("Div", ["r_shift", "temperature"], ["r_scaled"]),
        mk("Exp", ["r_scaled"], ["r_probs"]),
        # top_p: keep a candidate while the mass before it is below top_p x the total (the first always stays)
        mk("CumSum", ["r_probs", "one_i"], ["r_cum"]),
        mk("Sub", ["r_cum", "r_probs"], ["r_before"]),
        mk("ReduceMax", ["r_cum", "axis1"], ["r_sum"], keepdims=1),
        mk("Mul", ["r_sum", "top_p"], ["r_mass"]),
        mk("Less", ["r_before", "r_mass"], ["r_keep"]),
        mk("Where", ["r_keep", "r_probs", "zero_f"], ["r_kept"]),
        mk("CumSum", ["r_kept", "one_i"], ["r_cdf"]),
        *pick("r", "r_cdf", "ranked_token", "r_ids")], ["ranked_token"])
    sample = graph("sample", [
        mk("Greater", ["top_k", "zero_i"], ["s_k_on"]),
        mk("Less", ["top_p", "one_f"], ["s_p_on"]),
        mk("Or", ["s_k_on", "s_p_on"], ["s_ranked"]),
        mk("If", ["s_ranked"], ["sample_token"], then_branch=ranked, else_branch=plain)], ["sample_token"])
    greedy = graph("greedy", [mk("ArgMax", ["x"], ["greedy_token"], axis=1, keepdims=0)], ["greedy_token"])
    # the repetition penalty, only when it is on
    penalized = helper.make_graph([
        mk("Greater", ["logits", "zero_f"], ["pen_pos"]),
        mk("Div", ["logits", "penalty"], ["pen_div"]),
        mk("Mul", ["logits", "penalty"], ["pen_mul"]),
        mk("Where", ["pen_pos", "pen_div", "pen_mul"], ["pen_new"]),
        mk("Where", ["seen", "pen_new", "logits"], ["pen_x"])], "penalized", [],
        [helper.make_tensor_value_info("pen_x", TensorProto.FLOAT, None)])
    unpenalized = helper.make_graph([mk("Identity", ["logits"], ["raw_x"])], "unpenalized", [],
                                    [helper.make_tensor_value_info("raw_x", TensorProto.FLOAT, None)])
    nodes = [
        mk("Equal", ["penalty", "one_f"], ["pen_off"]),
        mk("Not", ["pen_off"], ["pen_on"]),
        mk("If", ["pen_on"], ["x"], then_branch=penalized, else_branch=unpenalized),
        mk("Unsqueeze", ["uniform", "axis1"], ["uniform_col"]),
        mk("Greater", ["temperature", "zero_f"], ["sampling"]),
        mk("If", ["sampling"], ["token"], then_branch=sample, else_branch=greedy),
    ]
    g = helper.make_graph(
        nodes, "lmforge_sampler",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "vocab"]),
         helper.make_tensor_value_info("uniform", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("temperature", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("top_k", TensorProto.INT64, []),
         helper.make_tensor_value_info("top_p", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("penalty", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("seen", TensorProto.BOOL, ["batch", "vocab"])],
        [helper.make_tensor_value_info("token", TensorProto.INT64, ["batch"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="lmforge", ir_version=9)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return path


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class StepLane:
    """One prompt on the fast graph, a session call per token (the runtime's KVBuffers, reduced to batch 1):
    the cache buffers and step inputs bound once; greedy from the logits in numpy, or the graph's next_token."""

    def __init__(self, sess: ort.InferenceSession, ids: list[int], n: int, in_graph: bool):
        self.sess, self.in_graph = sess, in_graph
        self.b = b = sess.io_binding()
        self.kv = {}
        for i in sess.get_inputs():
            if i.name.startswith("past_key_values"):
                buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, SHAPE["n_head"], len(ids) + n,
                                                                 SHAPE["n_embd"] // SHAPE["n_head"]), np.float32))
                self.kv[i.name] = buf
                b.bind_ortvalue_input(i.name, buf)
                b.bind_ortvalue_output(i.name.replace("past_key_values", "present"), buf)
        P = len(ids)
        first = np.zeros((1, P), np.int64)
        for name, value in (("input_ids", np.array([ids], np.int64)), ("position_ids", np.arange(P)[None]),
                            ("seqlens_k", np.array([P - 1], np.int32)),
                            ("total_sequence_length", np.array(P, np.int32))):
            b.bind_cpu_input(name, np.asarray(value))
        b.bind_output("logits")
        b.bind_ortvalue_output("next_token", ort.OrtValue.ortvalue_from_numpy(first))
        sess.run_with_iobinding(b)
        self.length, self.tokens = P, [int(first[0, -1])]
        self.ids, self.pos = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64)
        self.seqlens, self.total = np.zeros(1, np.int32), np.zeros((), np.int32)
        self.logits, self.next = np.zeros((1, 1, SHAPE["vocab_size"]), np.float32), np.zeros((1, 1), np.int64)
        for name, a in (("input_ids", self.ids), ("position_ids", self.pos), ("seqlens_k", self.seqlens),
                        ("total_sequence_length", self.total)):
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(a))
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self.logits))
        b.bind_ortvalue_output("next_token", ort.OrtValue.ortvalue_from_numpy(self.next))

    def advance(self, k: int) -> None:
        for _ in range(k):
            self.ids[0, 0], self.pos[0, 0], self.seqlens[0] = self.tokens[-1], self.length, self.length
            self.total[...] = self.length + 1
            self.sess.run_with_iobinding(self.b)
            self.length += 1
            self.tokens.append(int(self.next[0, 0]) if self.in_graph else int(self.logits[0, 0].argmax()))


class LoopLane(StepLane):
    """The same prompt, prefilled by the step graph, then `k` tokens per call of the Loop graph."""

    def __init__(self, step: ort.InferenceSession, loop: ort.InferenceSession, ids: list[int], n: int):
        super().__init__(step, ids, n, True)
        self.loop = loop
        self.lb = loop.io_binding()
        for name, buf in self.kv.items():
            self.lb.bind_ortvalue_input(name, buf)
            self.lb.bind_ortvalue_output(name.replace("past_key_values", "present"), buf)

    def advance(self, k: int) -> None:
        b = self.lb
        for name, value in (("input_ids", np.array([[self.tokens[-1]]], np.int64)),
                            ("position_ids", np.array([[self.length]], np.int64)),
                            ("seqlens_k", np.array([self.length], np.int32)),
                            ("total_sequence_length", np.array(self.length + 1, np.int32)),
                            ("steps", np.array(k, np.int64))):
            b.bind_cpu_input(name, value)
        b.bind_output("tokens")
        self.loop.run_with_iobinding(b)
        self.tokens += b.get_outputs()[-1].numpy().reshape(-1).tolist()
        self.length += k


def greedy_options(files: dict[str, Path], loops: dict[str, Path], threads: int, n: int, rounds: int,
                   block: int, chunk: int) -> dict:
    """Per precision: the three greedy options interleaved (module docstring); ms per token and speed ratios."""
    out = {}
    for precision, path in files.items():
        step = session(with_argmax(path, path.with_suffix(".argmax.onnx")), threads)
        loop = session(loops[precision], threads)
        kinds = {"step + numpy argmax": lambda ids: StepLane(step, ids, n, False),
                 "step + in-graph ArgMax": lambda ids: StepLane(step, ids, n, True),
                 f"Loop of {chunk} steps": lambda ids: LoopLane(step, loop, ids, n)}
        rng, meter = random.Random(0), LoadMeter()
        per = {k: [] for k in kinds}
        same = True
        for r in range(rounds):
            ids = np.random.default_rng(r).integers(4, SHAPE["vocab_size"], PROMPT_LEN).tolist()
            lanes = {k: make(ids) for k, make in kinds.items()}
            times = {k: [] for k in kinds}
            left = n - 1
            while left > 0:
                order = list(kinds)
                rng.shuffle(order)
                for k in order:  # the Loop lane always makes whole chunks; the others `block` tokens a turn
                    steps = min(chunk, left) if k.startswith("Loop") else None
                    t = time.perf_counter()
                    if steps:
                        lanes[k].advance(steps)
                    else:
                        for _ in range(min(chunk, left) // block or 1):
                            lanes[k].advance(min(block, left))
                    times[k].append((time.perf_counter() - t) * 1e3 / min(chunk, left))
                left -= min(chunk, left)
            toks = [lane.tokens[:n] for lane in lanes.values()]
            same &= all(t == toks[0] for t in toks)
            for k in kinds:
                per[k].append(float(np.median(times[k])))
        base = np.array(per["step + numpy argmax"])
        out[precision] = {"load": meter.read(), "same_tokens": same, "rows": [
            {"option": k, "ms_per_token": round(float(np.median(v)), 4),
             "speed_vs_numpy_argmax": round(float(np.median(base / np.array(v))), 3),
             "min": round(float((base / np.array(v)).min()), 3), "max": round(float((base / np.array(v)).max()), 3)}
            for k, v in per.items()]}
    return out


def sampling_options(sampler: Path, threads: int, repeats: int = 2000) -> dict:
    """us per call, median over `repeats` interleaved calls, numpy sample_next vs the sampling graph on the same
    [1, V] logits, per setting; and whether both picked the same token for the same uniforms."""
    from lmforge.runtime.sampling import SamplingParams, sample_next

    sess = session(sampler, 1)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (1, SHAPE["vocab_size"])).astype(np.float32)
    seen = np.zeros_like(x, bool)
    seen[0, rng.integers(0, SHAPE["vocab_size"], 64)] = True
    meter, rows = LoadMeter(), []
    for setting in SAMPLING:
        params = SamplingParams(**setting)
        b = sess.io_binding()
        u = np.zeros(1, np.float32)
        tok = np.zeros(1, np.int64)
        feeds = {"logits": x, "uniform": u, "temperature": np.array(params.temperature, np.float32),
                 "top_k": np.array(params.top_k, np.int64), "top_p": np.array(params.top_p, np.float32),
                 "penalty": np.array(params.repetition_penalty, np.float32), "seen": seen}
        for name, value in feeds.items():
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
        b.bind_ortvalue_output("token", ort.OrtValue.ortvalue_from_numpy(tok))
        t_np, t_ort, agree = [], [], 0
        for i in range(repeats):
            draw = np.random.default_rng(i)
            t = time.perf_counter()
            a = int(sample_next(x, params, draw, seen)[0])
            t_np.append(time.perf_counter() - t)
            u[0] = np.random.default_rng(i).random()
            t = time.perf_counter()
            sess.run_with_iobinding(b)
            t_ort.append(time.perf_counter() - t)
            agree += a == int(tok[0])
        rows.append({"setting": setting, "numpy_us": round(float(np.median(t_np)) * 1e6, 1),
                     "onnxruntime_us": round(float(np.median(t_ort)) * 1e6, 1),
                     "same_token_share": round(agree / repeats, 4)})
    return {"load": meter.read(), "rows": rows}


def markdown(report: dict) -> str:
    out = []
    for precision, res in report["greedy"].items():
        out += [f"Greedy, {precision} fast graph, batch 1 ({load_text(res['load'])}; same tokens: "
                f"{res['same_tokens']}):", "", "| option | ms per token | speed vs step + numpy argmax | min-max |",
                "| --- | --- | --- | --- |"]
        out += [f"| {r['option']} | {r['ms_per_token']} | {r['speed_vs_numpy_argmax']} | {r['min']}-{r['max']} |"
                for r in res["rows"]] + [""]
    s = report["sampling"]
    out += [f"Sampling one row of {SHAPE['vocab_size']} logits ({load_text(s['load'])}):", "",
            "| setting | numpy us | onnxruntime graph us | same token (same uniform) |", "| --- | --- | --- | --- |"]
    out += [f"| {r['setting']} | {r['numpy_us']} | {r['onnxruntime_us']} | {r['same_token_share']} |"
            for r in s["rows"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    from lmforge.export.fast import build_fast_gpt
    from lmforge.export.variants import quantize_int8
    from lmforge.models import model_spec

    model = reference_gpt()
    spec = model_spec(model)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = {"fp32": build_fast_gpt(model, spec, d / "fast.onnx")}
        files["int8"] = quantize_int8(files["fp32"], d / "fast.int8.onnx")
        files["int4"] = build_fast_gpt(model, spec, d / "fast.int4.onnx", precision="int4")
        loops = {k: build_loop(f, d / f"loop.{k}.onnx") for k, f in files.items()}
        report = {"greedy": greedy_options(files, loops, args.threads, args.new_tokens, args.rounds, args.block,
                                           args.chunk),
                  "sampling": sampling_options(build_sampler(d / "sampler.onnx"), args.threads),
                  "argv": sys.argv[1:] if argv is None else list(argv), "onnxruntime": ort.__version__}
    publish(report, "decode-options", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
