"""The onnxruntime-genai files of an exported GPT directory, so `onnxruntime_genai.Model(model_dir)` loads it
directly: genai_config.json, the graph it names (model.genai.onnx, + model.genai.int8.onnx and
model.genai.int4.onnx) and, for every tokenizer onnxruntime-genai's tokenizer reads (bpe, gpt2, and char written as
a BPE by lmforge.export.tokenizer; not word), tokenizer_config.json.

The genai graph is lmforge's fast graph (lmforge.export.fast: GroupQueryAttention over one KV buffer per layer
shared between past and present) with ort-genai's inputs instead of the fast graph's explicit lengths:

  input_ids [B,S] int64, attention_mask [B,T] int64 (T = tokens in the cache after this call),
  position_ids [B,S] int64, past_key_values.{i}.key/value [B,H,M,D] float (M = search.max_length)
  -> logits [B,S,V], present.{i}.key/value [B,H,M,D] (the same buffers: past_present_share_buffer)

and inside the graph, as onnxruntime-genai's own model builder does, seqlens_k = ReduceSum(attention_mask) - 1
and total_sequence_length = attention_mask.shape[1], both int32, feed GroupQueryAttention. Nothing else
changes, so a genai graph made from model.fast.onnx / model.fast.int8.onnx has exactly lmforge's weights; the
int4 graph is made the same way from model.fast.int4.onnx when the directory has one, otherwise it is
onnxruntime's MatMulNBits quantisation (4 bits, block 32, symmetric, int8 compute) of the fp32 genai graph.
lmforge's own Generator refuses these graphs (its portable path left-pads batches).

Recurrent families (lstm, gru) get no genai files: onnxruntime-genai decodes attention models with a
key/value cache only; lmforge.json `genai` says so."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmforge.core.atomic import write_json_atomic
from lmforge.export.tokenizer import UNSEEN_NOTE, WORD_REASON
from lmforge.runtime.names import kv_names

CONFIG = "genai_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENAI_FILES = {"fp32": "model.genai.onnx", "int8": "model.genai.int8.onnx", "int4": "model.genai.int4.onnx"}
# lmforge's own fast graph of each variant: when the directory has it, the genai graph is made from it (same weights)
FAST_SOURCES = {"fp32": "model.fast.onnx", "int8": "model.fast.int8.onnx", "int4": "model.fast.int4.onnx"}
GENAI_INPUTS = ["input_ids", "attention_mask", "position_ids"]
INT4_BLOCK = 32
RNN_REASON = ("onnxruntime-genai decodes attention models with a key/value cache only; it has no recurrent "
              "(LSTM/GRU) decoder, so no genai_config.json is written for this family")


def unsupported(family: str) -> dict:
    """lmforge.json `genai` of a family ort-genai cannot run."""
    return {"supported": False, "reason": RNN_REASON if family in ("lstm", "gru") else
            f"onnxruntime-genai files are written for gpt and hf-gpt2 models, not {family!r}"}


def genai_io_spec(spec: dict) -> dict:
    past, present = kv_names(spec["n_layer"])
    return {"inputs": GENAI_INPUTS, "logits": "logits",
            "state": [{"input": i, "output": o, "kind": "kv-buffer"} for i, o in zip(past, present)]}


def genai_graph(fast: onnx.ModelProto) -> onnx.ModelProto:
    """The fast graph (any variant: fp32, int8, int4) with ort-genai's inputs: attention_mask replaces
    seqlens_k and total_sequence_length, which the graph now computes from it."""
    g = fast.graph
    names = [i.name for i in g.input]
    if "seqlens_k" not in names or "total_sequence_length" not in names:
        raise ValueError("not an lmforge fast graph (no seqlens_k / total_sequence_length inputs)")
    kept = [i for i in g.input if i.name not in ("seqlens_k", "total_sequence_length")]
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence_length"])
    inputs = [kept[0], mask, *kept[1:]]  # input_ids, attention_mask, position_ids, past_key_values.*
    consts = [numpy_helper.from_array(np.array([1], np.int64), "genai_axis_1"),
              numpy_helper.from_array(np.array(1, np.int64), "genai_one"),
              numpy_helper.from_array(np.array(1, np.int64), "genai_dim_1")]
    prologue = [
        helper.make_node("ReduceSum", ["attention_mask", "genai_axis_1"], ["genai_mask_sum"], name="genai_mask_sum",
                         keepdims=0),
        helper.make_node("Sub", ["genai_mask_sum", "genai_one"], ["genai_seqlens_k"], name="genai_seqlens_k"),
        helper.make_node("Cast", ["genai_seqlens_k"], ["seqlens_k"], name="seqlens_k", to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["genai_mask_shape"], name="genai_mask_shape"),
        helper.make_node("Gather", ["genai_mask_shape", "genai_dim_1"], ["genai_total"], name="genai_total", axis=0),
        helper.make_node("Cast", ["genai_total"], ["total_sequence_length"], name="total_sequence_length",
                         to=TensorProto.INT32),
    ]
    graph = helper.make_graph([*prologue, *g.node], "lmforge_gpt_genai", inputs, list(g.output),
                              [*consts, *g.initializer], value_info=list(g.value_info))
    m = helper.make_model(graph, opset_imports=list(fast.opset_import), producer_name="lmforge",
                          ir_version=fast.ir_version)
    onnx.checker.check_model(m)
    return m


def quantize_int4(src: Path, dst: Path) -> Path:
    """MatMulNBits: 4-bit symmetric weights in blocks of 32 along the input axis, int8 compute (accuracy_level
    4), as onnxruntime-genai's builder makes int4 CPU models. Embedding Gathers stay float32."""
    from lmforge.export.variants import quiet_quantization

    with quiet_quantization():  # the quantiser's import configures logging and logs a line per node
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=4)
        q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    onnx.checker.check_model(str(dst))
    return dst


def tokenizer_record(exported, tokens: dict) -> tuple[dict | None, dict]:
    """(tokenizer_config.json for onnxruntime-genai's tokenizer or None, lmforge.json's note on the tokenizer)
    for an lmforge.export.tokenizer.ExportedTokenizer."""
    if not exported.genai_readable:
        return None, {"tokenizer": False, "tokenizer_reason": WORD_REASON}
    note = {"tokenizer": True}
    if tokens.get("bos") is not None:  # ort-genai's encode adds it with update_options(add_special_tokens="true")
        note["prepend_bos"] = int(tokens["bos"])
    if exported.form == "char-bpe":
        note["tokenizer_unseen"] = UNSEEN_NOTE
    return exported.config, note


def genai_config(spec: dict, tokens: dict, generation: dict, filename: str) -> dict:
    """genai_config.json: model type "decoder" (ort-genai's generic decoder-only model), the graph's I/O names,
    the cache shape, and lmforge.json's sampling defaults as the search defaults."""
    V = int(spec["vocab_size"])
    eos, pad = tokens.get("eos"), tokens.get("pad")
    temperature = float(generation.get("temperature", 1.0))
    return {
        "model": {
            "type": "decoder", "context_length": int(spec["block_size"]), "vocab_size": V,
            # a model without an end token never stops early; ort-genai needs a token id all the same
            "eos_token_id": int(eos) if eos is not None else V - 1 if pad is None else int(pad),
            "pad_token_id": int(pad) if pad is not None else 0,
            "bos_token_id": int(tokens["bos"]) if tokens.get("bos") is not None else 0,
            "decoder": {
                "filename": filename, "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": int(spec["head_dim"]), "hidden_size": int(spec["n_embd"]),
                "num_attention_heads": int(spec["n_head"]), "num_key_value_heads": int(spec["n_head"]),
                "num_hidden_layers": int(spec["n_layer"]),
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            "max_length": int(spec["block_size"]), "min_length": 0, "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": True, "do_sample": temperature > 0, "temperature": temperature or 1.0,
            "top_k": int(generation.get("top_k", 0) or 0) if temperature > 0 else 1,
            "top_p": float(generation.get("top_p", 1.0)), "repetition_penalty": 1.0, "length_penalty": 1.0,
            "early_stopping": True, "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
        },
    }


def genai_parity(model, spec: dict, path: Path, prompt_len: int = 7, steps: int = 12, seed: int = 0) -> float:
    """Max |logit difference| between torch and the genai graph under onnxruntime, fed as onnxruntime-genai
    feeds it (batch 1: attention_mask of ones over the cache, positions 0.., one buffer per layer bound as both
    past and present): a prefill of `prompt_len` tokens, then `steps` greedy steps."""
    import onnxruntime as ort
    import torch

    model = model.to("cpu").eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past, present = kv_names(spec["n_layer"])
    prompt_len = max(1, min(prompt_len, spec["block_size"] - 1))
    steps = min(steps, spec["block_size"] - prompt_len)
    cap = prompt_len + steps
    binding = sess.io_binding()
    for i, o in zip(past, present):
        buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, spec["n_head"], cap, spec["head_dim"]), np.float32))
        binding.bind_ortvalue_input(i, buf)
        binding.bind_ortvalue_output(o, buf)
    ids = torch.randint(0, spec["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    total, state, worst = 0, None, 0.0
    with torch.no_grad():
        for _ in range(steps + 1):
            T = ids.shape[1]
            ref, state = model(ids, state)
            feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, total + T), np.int64),
                     "position_ids": np.arange(total, total + T, dtype=np.int64)[None]}
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            got = np.zeros((1, T, spec["vocab_size"]), np.float32)
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(got))
            sess.run_with_iobinding(binding)
            worst = max(worst, float(np.abs(got - ref.numpy()).max()))
            total += T
            ids = ref[:, -1:].argmax(-1)
    return worst


def write_genai(model, spec: dict, directory: Path, exported_tokenizer, *, tokens: dict, generation: dict,
                int8: bool = True, int4: bool = True, parity_tolerance: float = 1e-3) -> tuple[dict, dict, dict]:
    """Write the genai files into `directory` (the model directory being built, which may already hold
    lmforge's fast graphs; exported_tokenizer is the lmforge.export.tokenizer.ExportedTokenizer written there as
    tokenizer.json). Returns (lmforge.json `files` entries, lmforge.json `genai`, export metrics)."""
    from lmforge.core.errors import LmforgeError
    from lmforge.export.fast import build_fast_gpt
    from lmforge.export.variants import quantize_int8

    directory = Path(directory)
    fast = directory / FAST_SOURCES["fp32"]
    scratch = None
    if not fast.is_file():  # hf-gpt2 gets no fast graph of its own: build one just to derive the genai graph
        scratch = fast = build_fast_gpt(model, spec, directory / ".genai-source.onnx")
    try:
        fp32 = directory / GENAI_FILES["fp32"]
        onnx.save(genai_graph(onnx.load(str(fast))), str(fp32))
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    err = genai_parity(model, spec, fp32)
    if not err <= parity_tolerance:
        raise LmforgeError(f"onnxruntime-genai graph differs from torch by {err:.2e} (> {parity_tolerance:g})",
                           hint="report this model configuration; raise export.parity_tolerance to inspect")
    files = {"genai": GENAI_FILES["fp32"]}
    graphs = {"fp32": GENAI_FILES["fp32"]}
    metrics = {"onnx_genai_parity_max_abs": err}
    for variant, wanted in (("int8", int8), ("int4", int4)):
        if not wanted:
            continue
        dst = directory / GENAI_FILES[variant]
        source = directory / FAST_SOURCES[variant]
        if source.is_file():  # lmforge's own quantised fast graph: the very same weights
            onnx.save(genai_graph(onnx.load(str(source))), str(dst))
        elif variant == "int8":
            quantize_int8(fp32, dst)
        else:
            quantize_int4(fp32, dst)
        files[f"genai-{variant}"] = graphs[variant] = GENAI_FILES[variant]
        metrics[f"onnx_genai_{variant}_bytes"] = dst.stat().st_size
    tok_config, tok_note = tokenizer_record(exported_tokenizer, tokens)
    record = {"supported": True, "config": CONFIG, "graphs": graphs, "io": genai_io_spec(spec), **tok_note}
    if tok_config is not None:
        write_json_atomic(directory / TOKENIZER_CONFIG, tok_config)
        record["tokenizer_config"] = TOKENIZER_CONFIG
    write_json_atomic(directory / CONFIG, genai_config(spec, tokens, generation, GENAI_FILES["fp32"]))
    return files, record, metrics


def select_graph(config_or_dir, variant: str):
    """An onnxruntime_genai.Config of an exported directory whose decoder is the genai graph of `variant`
    (fp32, int8, int4): `onnxruntime_genai.Model(select_graph(dir, "int4"))`."""
    import onnxruntime_genai as og

    cfg = og.Config(str(config_or_dir)) if not isinstance(config_or_dir, og.Config) else config_or_dir
    cfg.overlay(json.dumps({"model": {"decoder": {"filename": GENAI_FILES[variant]}}}))
    return cfg


def genai_greedy(model, ids: list[int], n: int) -> list[int]:
    """onnxruntime-genai's own loop on an onnxruntime_genai.Model: Generator, append_tokens, generate_next_token
    until n new greedy tokens; their ids."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def export_genai_files(model, spec: dict, directory: Path, exported_tokenizer, manifest: dict,
                       e) -> tuple[dict, dict, dict]:
    """export_model_dir's step for onnxruntime-genai, with the `[export]` config `e` (int8, parity_tolerance):
    the genai files of a gpt / hf-gpt2 model. Returns (lmforge.json `files` entries written, lmforge.json
    `genai`, export metrics); for another family, no files and `genai` says why."""
    family = spec.get("family", "gpt")
    if family not in ("gpt", "hf-gpt2"):
        return {}, unsupported(family), {}
    return write_genai(model, spec, directory, exported_tokenizer, tokens=manifest.get("tokens", {}),
                       generation=manifest.get("generation", {}), int8=e.int8, parity_tolerance=e.parity_tolerance)
