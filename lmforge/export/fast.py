"""The fast decoding graph of a GPT, built node by node with onnx.helper from the trained weights (no tracing):
embeddings Gather, the residual Add + LayerNormalization (the first Add sums the token and position embeddings;
the fp16 graph: one com.microsoft SkipLayerNormalization each, FUSED_NORM_PRECISIONS), MatMul(+Add),
com.microsoft GroupQueryAttention over a fixed-size KV cache shared between past and present (written in place),
FastGelu, tied head: 65 nodes for 6 layers (fp16: 52). The int8
and int4 graphs' MatMuls are com.microsoft.MatMulNBits (BlockQuant: INT8, INT4), whose CPU kernel takes a call's
rows in pairs (ROWS_IN_PAIRS). No greedy ArgMax in the graph: onnxruntime's is slower than numpy's on the bound
logits (benchmarks/decode_options.py).

I/O (written to lmforge.json as io["fast"]):
  input_ids [B,S] int64, position_ids [B,S] int64, seqlens_k [B] int32 (tokens in the cache after this call,
  minus one), total_sequence_length [] int32 (max over rows of seqlens_k + 1), past_key_values.{i}.key/value
  [B,H,M,D] float (M = cache capacity) -> logits [B,S,V], present.{i}.key/value [B,H,M,D] (the same buffers).
Rows of different lengths are right-padded: row b's real tokens are its first seqlens_k[b] + 1 positions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmforge.runtime.names import kv_names, row_name

FAST_INPUTS = ["input_ids", "position_ids", "seqlens_k", "total_sequence_length"]


def fast_io_spec(spec: dict, pairs: tuple[str, ...] = (), rows: int = 0) -> dict:
    """lmforge.json's io["fast"]: the I/O names, `pairs`, the variants written whose every MatMul is MatMulNBits
    (ROWS_IN_PAIRS: the runtime runs a speculating row's calls of them in pairs of tokens, KVBuffers.pairs), and
    `rows_graph` {"rows": R} where model.fast.rows.onnx was written (build_rows_graph)."""
    past, present = kv_names(spec["n_layer"])
    io = {"inputs": FAST_INPUTS, "logits": "logits",
          "state": [{"input": i, "output": o, "kind": "kv-buffer"} for i, o in zip(past, present)],
          "rows_in_pairs": list(pairs)}
    if rows:
        io["rows_graph"] = {"rows": rows}
    return io


# MatMulNBits accuracy_level 4: the CPU kernel quantises activations to int8 and multiplies in int8 (what
# onnxruntime-genai's model builder sets for CPU int4 models; 1.5x the tokens/s of float32 compute here,
# benchmarks/decode.py); the CUDA kernel ignores it
INT4_ACCURACY_LEVEL = 4
PRECISIONS = ("fp32", "fp16", "int8", "int4")
INT4_BLOCK = 32
# The residual add + LayerNorm: an Add and a standard LayerNormalization in the CPU graphs (fp32, int8, int4), whose
# CPU kernels take half the time of com.microsoft.SkipLayerNormalization's for a batch of 8 rows (7.3 against 15.3 us
# a norm; 2.5 against 4.0 at batch 1) and ~2% of a decode step (benchmarks/graph_norms.py; onnxruntime fuses back
# only the last pair, ln_f, whose sum nothing else reads). The fp16 graph, the CUDA provider's, keeps the fused op:
# not measured on a GPU.
FUSED_NORM_PRECISIONS = ("fp16",)
# The variants whose every MatMul is MatMulNBits at accuracy level 4. Its CPU kernel (measured on onnxruntime 1.32,
# benchmarks/int_kernels.py) quantises each row's activations on its own and multiplies the rows of a call two at a
# time; a call with an odd number of rows M = batch x tokens runs its last row through another kernel, and a
# one-token call's attention rounds ~1e-6 apart from a wider call's, which the next int8 activation step can make
# ~3e-2 (384 wide). A row's logits never depend on the row it is paired with. So calls of one row with an even
# number of tokens, two or more, give each position the very same bits whatever the width and the other tokens
# (tests/test_lookahead.py): the runtime runs a speculating row's calls of these graphs so, which is what lets them
# verify drafts exactly (int8 only when built here, export.int8_kernel "blocks").
ROWS_IN_PAIRS = ("int8", "int4")


@dataclass(frozen=True)
class BlockQuant:
    """How the int4 graph stores its MatMul weights (com.microsoft.MatMulNBits): `bits` per weight in blocks of
    `block` inputs, each block with a float32 scale and, unless `symmetric`, a zero point; the LM head (the
    largest single MatMul, and the one every logit comes from) with `head_bits`."""
    bits: int = 4
    block: int = INT4_BLOCK
    symmetric: bool = False
    head_bits: int = 4
    accuracy_level: int = INT4_ACCURACY_LEVEL


# The int4 graph's default, measured (docs/decode.md, "The int4 step"): blocks of 128 read 1.15-1.27x faster
# than blocks of 32 (a float32 scale per 32 weights is a quarter of the 4-bit bytes again) at +0.0017 nats and
# 0.970 top-1 agreement against +0.0008 and 0.975 on a trained char model; zero points cost ~nothing and
# halve the loss cost of symmetric blocks; an int8 head gains 0.01 agreement for 10-15% of the speed, so the
# head stays at 4 bits, the lowest precision that keeps the export's bounds
INT4 = BlockQuant(block=128)
# The int8 graph: MatMulNBits with 8-bit weights in blocks of 128 with zero points, the head too. Before, int8 was
# onnxruntime's quantize_dynamic (DynamicQuantizeMatMul: ONE activation scale for a whole call, so every token of
# a call moves every other's logits and no call of several tokens can be exact). A one-token call runs as fast as
# that graph's and reads 4% more bytes; a call of 8 rows takes 1.2-1.35x as long (benchmarks/int_kernels.py), which
# export.int8_kernel = "dynamic" keeps for servers that batch (docs/decode.md, "Prompt-lookup speculation")
INT8 = BlockQuant(bits=8, block=128, head_bits=8)
QUANTS = {"int8": INT8, "int4": INT4}


def nbits_blocks(weight: np.ndarray, bits: int = 4, block: int = INT4_BLOCK,
                 symmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Block-wise quantisation of a torch Linear weight [N, K] in com.microsoft.MatMulNBits' layout: (packed
    uint8 [N, blocks, block * bits / 8], scales float32 [N * blocks], zero points uint8 or None). Each run of
    `block` input weights of an output has its own scale, and w ~ (q - zero_point) * scale. Asymmetric: q spans
    [min, max] of the block (0 included), zero points stored (4 bits: two per byte, [N * ceil(blocks / 2)];
    8 bits: one per byte). Symmetric: no zero points, the kernel's implicit one is 2^(bits-1), and the block's
    value of largest magnitude maps to -2^(bits-1) exactly (as onnxruntime's own quantiser does)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    N, K = weight.shape
    nb = -(-K // block)
    levels = 2 ** bits - 1
    w = np.zeros((N, nb * block), np.float32)
    w[:, :K] = weight
    w = w.reshape(N, nb, block)
    if symmetric:
        lo, hi = w.min(-1), w.max(-1)
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = (extreme / -(2 ** (bits - 1))).astype(np.float32)
        safe = np.where(scale == 0, 1.0, scale)
        zp = np.full((N, nb), 2 ** (bits - 1), np.uint8)
        q = np.clip(np.round(w / safe[..., None]) + 2 ** (bits - 1), 0, levels).astype(np.uint8)
    else:
        lo, hi = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
        scale = np.where(hi > lo, (hi - lo) / levels, 1.0).astype(np.float32)
        zp = np.clip(np.round(-lo / scale), 0, levels).astype(np.uint8)
        q = np.clip(np.round(w / scale[..., None]) + zp[..., None], 0, levels).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else q
    if symmetric:
        return packed, scale.reshape(-1), None
    if bits == 8:
        return packed, scale.reshape(-1), zp.reshape(-1)
    zpad = np.zeros((N, nb + nb % 2), np.uint8)
    zpad[:, :nb] = zp
    return packed, scale.reshape(-1), (zpad[:, 0::2] | (zpad[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def int4_blocks(weight: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit blocks (nbits_blocks with zero points)."""
    return nbits_blocks(weight, 4, block, symmetric=False)


def build_fast_gpt(model, spec: dict, path: Path, precision: str = "fp32",
                   quant: BlockQuant | None = None,
                   fused_norm: bool | None = None) -> Path:  # one graph, node by node in the forward's order
    """Write the fast graph of lmforge.models.gpt.GPT `model` to `path` and return it. precision: fp32; fp16
    (weights, activations and the KV buffers in float16, for the CUDA EP; logits cast back to float32); int8 and
    int4 (every MatMul as com.microsoft.MatMulNBits, 8- or 4-bit weights in blocks of `quant.block` (default
    QUANTS[precision]: 128) with a scale and zero point each, int8 compute on the CPU; embeddings, norms and
    activations stay float32). fused_norm: each residual add + LayerNorm as one SkipLayerNormalization instead of
    an Add and a LayerNormalization (default: the FUSED_NORM_PRECISIONS, fp16)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    quant = quant or QUANTS.get(precision, INT4)
    fused_norm = precision in FUSED_NORM_PRECISIONS if fused_norm is None else fused_norm
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    H, D, C, V = spec["n_head"], spec["head_dim"], spec["n_embd"], spec["vocab_size"]
    nodes, inits = [], []
    ftype = np.float16 if precision == "fp16" else np.float32
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT

    def init(name: str, array: np.ndarray, dtype=None) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype or ftype), name))
        return name

    def matmul(x: str, weight: np.ndarray, name: str, out: str, bits: int | None = None) -> str:
        """x @ weight.T for a torch-layout weight [N, K]."""
        if precision not in QUANTS:
            return node("MatMul", [x, init(name, weight.T)], out)
        bits = bits or quant.bits
        packed, scales, zp = nbits_blocks(weight, bits, quant.block, quant.symmetric)
        N, K = weight.shape
        inputs = [x, init(f"{name}_q{bits}", packed, np.uint8), init(name + "_scales", scales, np.float32)]
        if zp is not None:
            inputs.append(init(name + "_zp", zp, np.uint8))
        return node("MatMulNBits", inputs, out, domain="com.microsoft", K=K, N=N, bits=bits,
                    block_size=quant.block, accuracy_level=quant.accuracy_level)

    def node(op: str, inputs: list[str], out: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def linear(x: str, prefix: str, out: str) -> str:  # torch Linear: x @ W.T (+ b)
        if prefix + ".bias" not in sd:
            return matmul(x, sd[prefix + ".weight"], prefix + ".weight_t", out)
        y = matmul(x, sd[prefix + ".weight"], prefix + ".weight_t", out + "_mm")
        return node("Add", [y, init(prefix + ".bias", sd[prefix + ".bias"])], out)

    def skip_layernorm(x: str, delta: str, prefix: str, out: str) -> tuple[str, str]:
        """(LayerNorm(x + delta), x + delta): an Add and a LayerNormalization (`fused_norm`: one
        com.microsoft SkipLayerNormalization)."""
        weight = init(prefix + ".weight", sd[prefix + ".weight"])
        bias = init(prefix + ".bias", sd.get(prefix + ".bias", np.zeros(C, np.float32)))
        if fused_norm:
            nodes.append(helper.make_node("SkipLayerNormalization", [x, delta, weight, bias],
                                          [out, "", "", out + "_sum"], name=out, domain="com.microsoft", epsilon=1e-5))
            return out, out + "_sum"
        total = node("Add", [x, delta], out + "_sum")
        return node("LayerNormalization", [total, weight, bias], out, axis=-1, epsilon=1e-5), total

    past, present = kv_names(spec["n_layer"])
    # the residual stream is x + delta, the addition left to the next norm (skip_layernorm): first the token
    # and position embeddings, then each block's attention and MLP outputs
    x = node("Gather", [init("wte", sd["wte.weight"]), "input_ids"], "tok_emb")
    delta = node("Gather", [init("wpe", sd["wpe.weight"]), "position_ids"], "pos_emb")
    for i in range(spec["n_layer"]):
        p = f"blocks.{i}"
        h, x = skip_layernorm(x, delta, f"{p}.ln_1", f"h{i}_ln1")
        qkv = linear(h, f"{p}.attn.c_attn", f"h{i}_qkv")
        nodes.append(helper.make_node("GroupQueryAttention", [qkv, "", "", past[2 * i], past[2 * i + 1], "seqlens_k",
                                                              "total_sequence_length"],
                                      [f"h{i}_att", present[2 * i], present[2 * i + 1]], name=f"h{i}_gqa",
                                      domain="com.microsoft", num_heads=H, kv_num_heads=H))
        h, x = skip_layernorm(x, linear(f"h{i}_att", f"{p}.attn.c_proj", f"h{i}_proj"), f"{p}.ln_2", f"h{i}_ln2")
        act = node("FastGelu", [linear(h, f"{p}.mlp.c_fc", f"h{i}_fc")], f"h{i}_gelu", domain="com.microsoft")
        delta = linear(act, f"{p}.mlp.c_proj", f"h{i}_mlp")
    h = skip_layernorm(x, delta, "ln_f", "hf")[0]
    if precision == "fp16":  # logits leave the graph as float32: sampling and scoring read the same dtype
        node("Cast", [matmul(h, sd["lm_head.weight"], "lm_head_t", "logits16")], "logits", to=TensorProto.FLOAT)
    else:
        matmul(h, sd["lm_head.weight"], "lm_head_t", "logits", bits=quant.head_bits)

    kv_shape = ["batch", H, "capacity", D]
    graph = helper.make_graph(
        nodes, "lmforge_gpt_fast",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
         *[helper.make_tensor_value_info(n, elem, kv_shape) for n in past]],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V]),
         *[helper.make_tensor_value_info(n, elem, kv_shape) for n in present]],
        inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                          producer_name="lmforge", ir_version=9)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


# Rows of the rows graph: runtime.batch.DEFAULT_SLOTS, the batch a server and stream_batch run by default
ROWS = 8


def _per_row_attention(n, rows: int, seq: list[str]) -> list:
    """The nodes that replace GroupQueryAttention `n` in the rows graph: Split its packed QKV along the batch, one
    batch-1 node per row over row_name(cache, r) with the row's seqlens_k and total length, Concat the outputs."""
    qkv, (att, key, value) = n.input[0], n.output
    parts = [f"{qkv}_row{r}" for r in range(rows)]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    return [helper.make_node("Split", [qkv, "rows_split"], parts, name=f"{qkv}_split", axis=0),
            *[helper.make_node("GroupQueryAttention", [parts[r], "", "", row_name(n.input[3], r),
                                                       row_name(n.input[4], r), seq[r], f"total_row{r}"],
                               [f"{att}_row{r}", row_name(key, r), row_name(value, r)], name=f"{n.name}_row{r}",
                               domain="com.microsoft", **attrs) for r in range(rows)],
            helper.make_node("Concat", [f"{att}_row{r}" for r in range(rows)], [att], name=f"{att}_concat", axis=0)]


def build_rows_graph(fast: Path, path: Path, rows: int = ROWS, *, quantized: bool = False) -> Path:
    """Write the rows graph of the fp32 fast graph `fast` to `path`: the same nodes and weights, but each
    GroupQueryAttention split into one node per row (Split the packed QKV [R, S, 3C] along the batch, one
    batch-1 node per row over that row's own cache, Concat the outputs), so that a call of R rows takes several new
    tokens per row with a past. onnxruntime's CPU kernel refuses that at batch > 1 ("batch_size must be 1 when
    sequence_length > 1 and past context is given"); at batch 1 it runs, as KVBuffers.extend does for one row.
    Every MatMul still runs once over all R x S tokens, reading each weight once per call.

    I/O: input_ids, position_ids [R, S] int64, seqlens_k [R] int32 (each row's tokens after the call, minus one;
    each node's total_sequence_length is its row's seqlens_k + 1), and per cache input `c` of the fast graph and
    row r, row_name(c, r) [1, H, M, D] (bound by the runtime to row r's part of the batch's cache, as past and as
    the matching present output) -> logits [R, S, V]. Every row's S tokens are all written: a row with fewer real
    ones is padded and given back after (KVBuffers.truncate). quantized: from an int8/int4 fast graph too (not
    exported; benchmarks/column_graphs.py times them)."""
    g = (m := onnx.load(str(fast))).graph
    if not quantized and any(n.op_type == "MatMulNBits" for n in g.node):
        raise ValueError("the rows graph is built from the fp32 fast graph")
    past = [i.name for i in g.input if i.name.startswith("past_key_values.")]
    present = [o.name for o in g.output if o.name.startswith("present.")]
    kv_type = {i.name: i.type.tensor_type for i in g.input}[past[0]]
    H, D = (d.dim_value for d in (kv_type.shape.dim[1], kv_type.shape.dim[3]))
    g.initializer.extend([numpy_helper.from_array(np.ones(rows, np.int64), "rows_split"),
                          numpy_helper.from_array(np.ones(1, np.int32), "rows_one"),
                          numpy_helper.from_array(np.zeros(0, np.int64), "rows_scalar")])
    seq = [f"seqlens_k_row{r}" for r in range(rows)]
    nodes = [helper.make_node("Split", ["seqlens_k", "rows_split"], seq, name="seqlens_k_split", axis=0)]
    for r in range(rows):  # [1] -> the row's total_sequence_length [] (a scalar, read on the host)
        nodes.append(helper.make_node("Add", [seq[r], "rows_one"], [f"total_row{r}_1"], name=f"total_row{r}_add"))
        nodes.append(helper.make_node("Reshape", [f"total_row{r}_1", "rows_scalar"], [f"total_row{r}"],
                                      name=f"total_row{r}"))
    for n in g.node:
        nodes += _per_row_attention(n, rows, seq) if n.op_type == "GroupQueryAttention" else [n]
    del g.node[:]
    g.node.extend(nodes)
    kv_shape = [1, H, "capacity", D]
    inputs = [i for i in g.input if i.name not in past and i.name != "total_sequence_length"]
    outputs = [o for o in g.output if o.name not in present]
    for i in inputs + outputs:  # [rows, S]
        i.type.tensor_type.shape.dim[0].dim_value = rows
    inputs += [helper.make_tensor_value_info(row_name(c, r), TensorProto.FLOAT, kv_shape) for c in past
               for r in range(rows)]
    outputs += [helper.make_tensor_value_info(row_name(c, r), TensorProto.FLOAT, kv_shape) for c in present
                for r in range(rows)]
    del g.input[:], g.output[:]
    g.input.extend(inputs)
    g.output.extend(outputs)
    g.name = "lmforge_gpt_fast_rows"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def fast_parity(model, spec: dict, path: Path, lengths: tuple[int, ...] = (7, 1, 4), steps: int = 20,
                seed: int = 0) -> tuple[float, bool]:
    """(max |logit difference|, greedy tokens identical) between torch, each prompt run alone with its own
    cache, and the fast graph running all prompts as one right-padded batch: prefill, then `steps` greedy
    decode steps (fewer if the context fills)."""
    import onnxruntime as ort
    import torch

    model = model.to("cpu").eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past, _ = kv_names(spec["n_layer"])
    lengths = tuple(max(1, min(n, spec["block_size"] - 1)) for n in lengths)  # tiny contexts
    B, H, D = len(lengths), spec["n_head"], spec["head_dim"]
    steps = min(steps, spec["block_size"] - max(lengths))
    cap = max(lengths) + steps
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, spec["vocab_size"], (n,), generator=g) for n in lengths]
    lens = np.array(lengths)
    ids, pos = np.zeros((B, lens.max()), np.int64), np.zeros((B, lens.max()), np.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], pos[i, :len(p)] = p.numpy(), np.arange(len(p))
    kv = [np.zeros((B, H, cap, D), np.float32) for _ in past]
    worst, same, states = 0.0, True, [None] * B
    with torch.no_grad():
        for step in range(steps + 1):
            out = sess.run(None, {"input_ids": ids, "position_ids": pos, "seqlens_k": (lens - 1).astype(np.int32),
                                  "total_sequence_length": np.array(lens.max(), np.int32), **dict(zip(past, kv))})
            kv = out[1:]
            nxt = np.zeros((B, 1), np.int64)
            for i in range(B):
                ref, states[i] = model(torch.as_tensor(ids[i:i + 1, :ids.shape[1] if step else lengths[i]]), states[i])
                got = out[0][i, :ref.shape[1]]
                worst = max(worst, float(np.abs(got - ref[0].numpy()).max()))
                same &= int(got[-1].argmax()) == int(ref[0, -1].argmax())
                nxt[i, 0] = int(ref[0, -1].argmax())
            ids, pos = nxt, lens[:, None].astype(np.int64)
            lens = lens + 1
    return worst, same
