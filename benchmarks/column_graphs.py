"""Can a batch of 8 on the int8/int4 graphs check drafts exactly, and would it pay? "Column graphs", measured on the
decode benchmark's reference model (benchmarks/decode.py: 6 layers x 384, vocab 8192, random init, seed 0).

A call of several tokens per row through one GroupQueryAttention node rounds ~1e-6 apart from one-token steps, which
MatMulNBits' int8 activation step turns into ~3e-2 (benchmarks/int_kernels.py), so the fp32 rows graph's design
would not give an int8/int4 batch the tokens of its plain steps. A column graph of width W (build_column_graph,
below) keeps every MatMul over all 8 x W tokens but replaces each attention node by a chain of W batched one-token
nodes, node j taking every row's j-th new token after the nodes before it wrote theirs into the same cache buffer
(each node's present outputs are bound to the buffer its past input is, and are the next node's past). Each node is
then the very call a one-token step makes, and MatMulNBits gives a row the same bits in any call of an even number
of rows, so the column call's logits should be the step graph's stepped one token per call, to the bit.

For each precision this checks that (8 rows of unequal lengths, then W random tokens each: the max |logit| gap of
one column call against W one-token steps of the step graph), also for a column graph whose token dimension is left
symbolic (onnxruntime's optimizer then leaves the last norm's Add + LayerNormalization unfused, unlike in the step
graph), and then times a one-token step of the batch and column calls of W = 2 and 3, taking turns call block by
call block (sessions that stop spinning after each run, as sessions taking turns must). A column call gives each
row at most W tokens, so W / (its cost over a step's) bounds what speculation could gain with every draft taken.

Beside them, the int graph's rows graph (lmforge.export.fast.build_rows_graph, as the fp32 batch speculates with:
every MatMul once over 8 x W tokens, one batch-1 attention node per row that takes the row's W tokens at once, so
each row's cache is read once per call, not W times): its gap against one-token steps, its gap against each row
alone in one call of its W tokens (padded to an even count, as a speculating row's calls are), and its cost over a
step at W = 2, 3 and 4.

    python benchmarks/column_graphs.py [--threads N] [--rounds N]
Writes benchmarks/results/column-graphs-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import LoadMeter, load_text, md_table, publish, reference_gpt  # noqa: E402

from lmforge.runtime.names import row_name  # noqa: E402

WIDTHS = (2, 3)
ROW_WIDTHS = (2, 3, 4)
ROWS, CAP, BLOCK = 8, 320, 30  # rows, cache positions per row, calls per timed block
PRECISIONS = ("int8", "int4")


def build_column_graph(fast: Path, path: Path, width: int, fixed: bool = True) -> Path:
    """The column graph of width `width` of the int8/int4 fast graph `fast` (module docstring). I/O: the fast
    graph's (seqlens_k: each row's tokens after the call minus one; total_sequence_length: their max + 1), plus
    `present.*.col{j}` for every column j but the last: bound to the same cache buffer as the layer's past and
    present. fixed: the token dimension of input_ids, position_ids and logits set to `width` (else left symbolic)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(fast))
    g = m.graph
    g.initializer.append(numpy_helper.from_array(np.ones(width, np.int64), "cols_split"))
    nodes, seqlens, totals = [], [], []
    for j in range(width):  # column j's lengths: the call's less the tokens after it
        back = width - 1 - j
        g.initializer.extend([numpy_helper.from_array(np.array([back], np.int32), f"cols_back{j}"),
                              numpy_helper.from_array(np.array(back, np.int32), f"cols_back{j}_total")])
        nodes += [helper.make_node("Sub", ["seqlens_k", f"cols_back{j}"], [f"seqlens_col{j}"]),
                  helper.make_node("Sub", ["total_sequence_length", f"cols_back{j}_total"], [f"total_col{j}"])]
        seqlens.append(f"seqlens_col{j}")
        totals.append(f"total_col{j}")
    chained = []
    for n in g.node:
        if n.op_type != "GroupQueryAttention":
            nodes.append(n)
            continue
        qkv, key_in, value_in = n.input[0], n.input[3], n.input[4]
        att, key, value = n.output
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        parts = [f"{qkv}_col{j}" for j in range(width)]
        nodes.append(helper.make_node("Split", [qkv, "cols_split"], parts, axis=1))
        for j in range(width):
            k_out, v_out = (key, value) if j == width - 1 else (f"{key}.col{j}", f"{value}.col{j}")
            nodes.append(helper.make_node("GroupQueryAttention", [parts[j], "", "", key_in, value_in, seqlens[j],
                                                                  totals[j]], [f"{att}_col{j}", k_out, v_out],
                                          domain="com.microsoft", **attrs))
            key_in, value_in = k_out, v_out
            chained += [k_out, v_out] if j < width - 1 else []
        nodes.append(helper.make_node("Concat", [f"{att}_col{j}" for j in range(width)], [att], axis=1))
    del g.node[:]
    g.node.extend(nodes)
    if fixed:
        for io in (*g.input[:2], g.output[0]):  # input_ids, position_ids, logits
            io.type.tensor_type.shape.dim[1].dim_value = width
    kv_type = {o.name: o.type for o in g.output}
    for name in chained:
        out = g.output.add()
        out.name = name
        out.type.CopyFrom(kv_type[name.rsplit(".col", 1)[0]])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


class Batch:
    """One session over 8 rows' caches [8, H, M, D] (numpy, bound by memory as past, present and every column's
    present): run(tokens [8, W]) appends W tokens per row in one call (W = 1: a step of the step graph)."""

    def __init__(self, sess, kv: dict[str, np.ndarray], lengths: np.ndarray, vocab: int):
        self.sess, self.kv, self.lengths, self.vocab = sess, kv, lengths, vocab
        self.outs = [o.name for o in sess.get_outputs()]

    def bind(self, tokens: np.ndarray):
        import onnxruntime as ort

        W = tokens.shape[1]
        b = self.sess.io_binding()
        keep = {"input_ids": tokens.astype(np.int64),
                "position_ids": (self.lengths[:, None] + np.arange(W)).astype(np.int64),
                "seqlens_k": (self.lengths + W - 1).astype(np.int32),
                "total_sequence_length": np.array(self.lengths.max() + W, np.int32),
                "logits": np.zeros((len(tokens), W, self.vocab), np.float32)}
        values = {k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in keep.items()}
        inputs = {i.name for i in self.sess.get_inputs()}
        for k, v in values.items():
            if k == "logits":
                b.bind_ortvalue_output(k, v)
            elif k in inputs:  # (the rows graph has no total_sequence_length)
                b.bind_ortvalue_input(k, v)
        if row_name(next(iter(self.kv)), 0) in inputs:  # the rows graph: row r's [1, H, M, D] part of each cache
            for name, a in self.kv.items():
                present = name.replace("past_key_values", "present")
                for r in range(len(a)):
                    values[row_name(name, r)] = v = ort.OrtValue.ortvalue_from_numpy(a[r:r + 1])
                    b.bind_ortvalue_input(row_name(name, r), v)
                    b.bind_ortvalue_output(row_name(present, r), v)
            return b, keep, values
        for name, a in self.kv.items():
            v = ort.OrtValue.ortvalue_from_numpy(a)
            values[name] = v
            b.bind_ortvalue_input(name, v)
            present = name.replace("past_key_values", "present")
            for out in self.outs:
                if out == present or out.startswith(present + ".col"):
                    b.bind_ortvalue_output(out, v)
        return b, keep, values

    def run(self, tokens: np.ndarray) -> np.ndarray:
        b, keep, _values = self.bind(tokens)
        self.sess.run_with_iobinding(b)
        self.lengths += tokens.shape[1]
        return keep["logits"]


def session(path: Path, threads: int):
    """A CPU session as the runtime makes one for sessions that take turns (threads stop spinning after a run)."""
    from lmforge.runtime.session import create_session

    return create_session(str(path), "cpu", threads, stop_spinning=True)[0]


def prefilled(step, spec: dict, lengths: np.ndarray, capacity: int, rng: np.random.Generator) -> dict:
    """Caches [rows, H, capacity, D] of rows of `lengths` random tokens, run through the step graph as one
    right-padded batch."""
    from lmforge.runtime.names import kv_names

    past, _ = kv_names(spec["n_layer"])
    kv = {n: np.zeros((len(lengths), spec["n_head"], capacity, spec["head_dim"]), np.float32) for n in past}
    ids = np.zeros((len(lengths), lengths.max()), np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(0, spec["vocab_size"], n)
    b, keep, _values = Batch(step, kv, np.zeros(len(lengths), np.int64), spec["vocab_size"]).bind(ids)
    keep["position_ids"][:] = np.where(np.arange(ids.shape[1]) < lengths[:, None], np.arange(ids.shape[1]), 0)
    keep["seqlens_k"][:] = lengths - 1
    step.run_with_iobinding(b)
    return kv


def column_gap(step, column, spec: dict, kv: dict, lengths: np.ndarray, width: int,
               rng: np.random.Generator) -> tuple[float, bool]:
    """(max |logit gap|, logits and caches equal to the bit) between one call of the column graph session
    `column` (`width` random tokens per row after the caches `kv` of rows of `lengths`) and the step graph session
    `step` run one token per call."""
    tokens = rng.integers(0, spec["vocab_size"], (len(lengths), width))
    want_kv, got_kv = ({n: a.copy() for n, a in kv.items()} for _ in range(2))
    stepped = Batch(step, want_kv, lengths.copy(), spec["vocab_size"])
    want = np.concatenate([stepped.run(tokens[:, j:j + 1]) for j in range(width)], axis=1)
    got = Batch(column, got_kv, lengths.copy(), spec["vocab_size"]).run(tokens)
    return float(np.abs(got - want).max()), bool(np.array_equal(got, want) and all(
        np.array_equal(got_kv[n], want_kv[n]) for n in kv))


def alone_gap(step, rows, spec: dict, kv: dict, lengths: np.ndarray, width: int,
              rng: np.random.Generator) -> tuple[float, bool]:
    """(max |logit gap|, logits and written caches equal to the bit) between one call of the rows graph session
    `rows` (`width` random tokens per row after the caches `kv` of rows of `lengths`) and each row alone through the
    step graph session `step`, in one call of its `width` tokens padded with one more to an even count (the pads'
    logits and cache position left out)."""
    tokens = rng.integers(0, spec["vocab_size"], (len(lengths), width + width % 2))
    got_kv = {n: a.copy() for n, a in kv.items()}
    got = Batch(rows, got_kv, lengths.copy(), spec["vocab_size"]).run(tokens[:, :width])
    worst, equal = 0.0, True
    for r, n in enumerate(lengths):
        want_kv = {name: a[r:r + 1].copy() for name, a in kv.items()}
        want = Batch(step, want_kv, lengths[r:r + 1].copy(), spec["vocab_size"]).run(tokens[r:r + 1])[0, :width]
        worst = max(worst, float(np.abs(got[r] - want).max()))
        equal = equal and np.array_equal(got[r], want) and all(
            np.array_equal(got_kv[name][r, :, :n + width], want_kv[name][0, :, :n + width]) for name in kv)
    return worst, bool(equal)


def measure(fast: Path, columns: dict, spec: dict, threads: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    step = session(fast, threads)
    lengths = rng.integers(40, 110, ROWS)
    kv = prefilled(step, spec, lengths, CAP, rng)
    row: dict = {}
    loaded = {path: session(path, threads) for path in set(columns.values())}  # one per graph: rows{W} share theirs
    sessions = {label: loaded[path] for label, path in columns.items()}
    for label, sess in sessions.items():
        row[f"gap_{label}"], row[f"bits_equal_{label}"] = column_gap(step, sess, spec, kv, lengths, int(label[4]),
                                                                       rng)
        if label.startswith("rows"):
            row[f"gap_alone_{label}"], row[f"bits_equal_alone_{label}"] = alone_gap(step, sess, spec, kv, lengths,
                                                                                    int(label[4]), rng)
    # timing: the step and each graph of a fixed width, taking turns block by block, from the same prefilled caches
    timed = {"step": step, **{k: s for k, s in sessions.items() if "symbolic" not in k}}
    calls = {}
    for label, sess in timed.items():
        W = 1 if label == "step" else int(label[4])
        calls[label] = Batch(sess, {n: a.copy() for n, a in kv.items()}, lengths.copy(), spec["vocab_size"]).bind(
            rng.integers(0, spec["vocab_size"], (ROWS, W)))
    times = {label: [] for label in timed}
    for r in range(rounds + 1):
        for label in (list(timed) if r % 2 else list(timed)[::-1]):
            sess, (b, _keep, _values) = timed[label], calls[label]
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                sess.run_with_iobinding(b)
            if r:  # (round 0: warm-up)
                times[label].append((time.perf_counter() - t0) / BLOCK * 1e3)
    step_ms = np.array(times["step"])
    row["step_ms"] = round(float(np.median(step_ms)), 3)
    for label in timed:
        if label == "step":
            continue
        W = int(label[4])
        ratio = np.array(times[label]) / step_ms
        row[f"{label}_ms"] = round(float(np.median(times[label])), 3)
        row[f"{label}_over_step"] = f"{np.median(ratio):.2f} ({ratio.min():.2f}-{ratio.max():.2f})"
        row[f"{label}_best_gain"] = round(float(W / np.median(ratio)), 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/column_graphs.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args(argv)
    from lmforge.export.fast import build_fast_gpt, build_rows_graph
    from lmforge.models import model_spec

    model = reference_gpt()
    spec = model_spec(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        load = LoadMeter()
        for precision in PRECISIONS:
            fast = build_fast_gpt(model, spec, work / f"{precision}.onnx", precision=precision)
            columns = {f"cols{w}": build_column_graph(fast, work / f"{precision}-cols{w}.onnx", w) for w in WIDTHS}
            columns["cols3-symbolic"] = build_column_graph(fast, work / f"{precision}-cols3-symbolic.onnx", 3,
                                                           fixed=False)
            rows_graph = build_rows_graph(fast, work / f"{precision}-rows.onnx", ROWS, quantized=True)
            columns.update({f"rows{w}": rows_graph for w in ROW_WIDTHS})
            rows.append({"graph": precision, **measure(fast, columns, spec, args.threads, args.rounds)})
    report = {"argv": argv if argv is not None else sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "threads": args.threads, "rounds": args.rounds, "load": load.read(), "rows": rows}

    def markdown(report: dict) -> str:
        def fmt(key: str, value) -> str:
            return f"{value:.2e}" if key.startswith("gap") and isinstance(value, float) else str(value)
        table = []  # one line per graph and contender
        for r in report["rows"]:
            table.append({"graph": r["graph"], "call": "step (8 x 1)", "ms": r["step_ms"], "gap_vs_steps": "-",
                          "bits_equal_steps": "-", "gap_vs_alone_even": "-", "bits_equal_alone": "-",
                          "over_step": "1", "best_gain": "1"})
            for label in [k[4:] for k in r if k.startswith("gap_") and not k.startswith("gap_alone_")]:
                table.append({"graph": r["graph"], "call": label, "ms": r.get(f"{label}_ms", "-"),
                              "gap_vs_steps": r[f"gap_{label}"], "bits_equal_steps": r[f"bits_equal_{label}"],
                              "gap_vs_alone_even": r.get(f"gap_alone_{label}", "-"),
                              "bits_equal_alone": r.get(f"bits_equal_alone_{label}", "-"),
                              "over_step": r.get(f"{label}_over_step", "-"),
                              "best_gain": r.get(f"{label}_best_gain", "-")})
        return "\n".join([f"`python benchmarks/column_graphs.py {' '.join(report['argv'])}` ({report['time']}); the "
                          f"decode benchmark's reference model, batch {ROWS}, {report['threads']} threads, "
                          f"{report['rounds']} rounds of {BLOCK} calls each; {load_text(report['load'])}. over_step: "
                          "a call's ms over the step's, median over rounds (min-max); best_gain: W / that median.",
                          "", *md_table(table, fmt=fmt)])

    publish(report, "column-graphs", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
