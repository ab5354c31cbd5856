"""torch -> ONNX with decoding state: export, onnx.checker, parity against torch, int8 quantisation, and the
exported model directory written atomically (model.onnx, model.int8.onnx, model.opt.onnx, model.fp16.onnx,
tokenizer.json, lmforge.json)."""
from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from lmforge.core.config import ExportConfig
from lmforge.core.errors import LmforgeError
from lmforge.models import model_spec
from lmforge.runtime.modeldir import VARIANT_FILES, write_manifest
from lmforge.export.genai import export_genai_files
from lmforge.export.tokenizer import export_tokenizer
from lmforge.export.variants import convert_fp16, optimize_graph, quantize_int8
from lmforge.runtime.names import kv_names, rnn_names
from lmforge.data.shards import open_shard


class GPTStep(torch.nn.Module):
    """ONNX signature: (input_ids, position_ids, attention_mask, past_key_values.*) -> (logits, present.*)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, *past):
        state = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, present = self.model(input_ids, state, position_ids, attention_mask)
        return (logits, *[t for kv in present for t in kv])


def io_spec(spec: dict) -> dict:
    if spec["family"] in RNN_FAMILIES:
        return rnn_io_spec(spec)
    past, present = kv_names(spec["n_layer"])
    return {"inputs": ["input_ids", "position_ids", "attention_mask"], "logits": "logits",
            "state": [{"input": i, "output": o, "kind": "kv"} for i, o in zip(past, present)]}


def export_onnx(model: torch.nn.Module, spec: dict, path: Path, opset: int = 17) -> Path:
    """Trace with batch 2, sequence 4, past 3 (0 and 1 would be specialised) and mark every axis dynamic."""
    if spec["family"] in RNN_FAMILIES:
        return export_rnn_onnx(model, spec, path, opset)
    model = model.to("cpu").eval()
    B, T, P, H, D = 2, 4, 3, spec["n_head"], spec["head_dim"]
    ids = torch.randint(0, spec["vocab_size"], (B, T))
    pos = torch.arange(P, P + T).unsqueeze(0).expand(B, T).contiguous()
    mask = torch.ones(B, P + T, dtype=torch.int64)
    past = [torch.zeros(B, H, P, D) for _ in range(2 * spec["n_layer"])]
    past_names, present_names = kv_names(spec["n_layer"])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"},
            "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch", 2: "past"} for n in past_names}, **{n: {0: "batch", 2: "total"} for n in present_names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(GPTStep(model), (ids, pos, mask, *past), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids", "position_ids", "attention_mask", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
    onnx.checker.check_model(str(path))
    return path


def parity(model: torch.nn.Module, spec: dict, onnx_path: Path, steps: int = 8, seed: int = 0) -> float:
    """Max |logit difference| between torch and onnxruntime over a prefill of 7 tokens (batch 2) and `steps`
    greedy cached decode steps."""
    if spec["family"] in RNN_FAMILIES:
        return rnn_parity(model, spec, onnx_path, steps, seed)
    import onnxruntime as ort

    model = model.to("cpu").eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    past_names, present_names = kv_names(spec["n_layer"])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec["vocab_size"], (2, 7), generator=g)
    H, D = spec["n_head"], spec["head_dim"]
    state_np = [np.zeros((2, H, 0, D), np.float32) for _ in past_names]
    state_t = None
    total, worst = 0, 0.0
    with torch.no_grad():
        for _ in range(steps + 1):
            T = ids.shape[1]
            pos = torch.arange(total, total + T).unsqueeze(0).expand(2, T)
            mask = torch.ones(2, total + T, dtype=torch.int64)
            ref, state_t = model(ids, state_t, pos, mask)
            out = sess.run(None, {"input_ids": ids.numpy(), "position_ids": pos.numpy().copy(),
                                  "attention_mask": mask.numpy(), **dict(zip(past_names, state_np))})
            worst = max(worst, float(np.abs(out[0] - ref.numpy()).max()))
            state_np = out[1:]
            total += T
            ids = ref[:, -1:].argmax(-1)
            if total + 1 > spec["block_size"]:
                break
    return worst


RNN_FAMILIES = ("lstm", "gru")


class RNNStep(torch.nn.Module):
    """ONNX signature: (input_ids, state.h[, state.c]) -> (logits, new_state.h[, new_state.c])."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, *state):
        logits, new_state = self.model(input_ids, state)
        return (logits, *new_state)


def rnn_io_spec(spec: dict) -> dict:
    """Fixed-shape recurrent state [n_layer, batch, n_hidden]: zeros before the prompt, fed back every step."""
    inputs, outputs = rnn_names(spec)
    shape = [spec["n_layer"], "batch", spec["n_hidden"]]
    return {"inputs": ["input_ids"], "logits": "logits",
            "state": [{"input": i, "output": o, "kind": "rnn", "shape": shape} for i, o in zip(inputs, outputs)]}


def export_rnn_onnx(model: torch.nn.Module, spec: dict, path: Path, opset: int = 17) -> Path:
    model = model.to("cpu").eval()
    B, T, L, H = 2, 4, spec["n_layer"], spec["n_hidden"]
    ids = torch.randint(0, spec["vocab_size"], (B, T))
    state = [torch.zeros(L, B, H) for _ in spec["state"]]
    inputs, outputs = rnn_names(spec)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
            **{n: {1: "batch"} for n in inputs + outputs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(RNNStep(model), (ids, *state), str(path), dynamo=False, opset_version=opset,
                          input_names=["input_ids", *inputs], output_names=["logits", *outputs], dynamic_axes=axes)
    onnx.checker.check_model(str(path))
    return path


def rnn_parity(model: torch.nn.Module, spec: dict, onnx_path: Path, steps: int = 8, seed: int = 0) -> float:
    """Max |logit difference| between torch and onnxruntime: a 7-token prefill (batch 2) from zero state,
    then `steps` greedy decode steps feeding the state back."""
    import onnxruntime as ort

    model = model.to("cpu").eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs, _ = rnn_names(spec)
    ids = torch.randint(0, spec["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(seed))
    state_np = [np.zeros((spec["n_layer"], 2, spec["n_hidden"]), np.float32) for _ in inputs]
    state_t, worst = None, 0.0
    with torch.no_grad():
        for _ in range(steps + 1):
            ref, state_t = model(ids, state_t)
            out = sess.run(None, {"input_ids": ids.numpy(), **dict(zip(inputs, state_np))})
            worst = max(worst, float(np.abs(out[0] - ref.numpy()).max()))
            state_np = out[1:]
            ids = ref[:, -1:].argmax(-1)
    return worst


def export_fast_variants(model, spec: dict, tmp: Path, e: ExportConfig) -> tuple[dict, dict]:
    """model.fast.onnx (+ model.fast.rows.onnx, model.fast.int8.onnx, model.fast.int4.onnx, model.fast.fp16.onnx as
    `e` asks):
    (lmforge.json `files` entries written, the fast graph's I/O spec). They are checked with the others by
    lmforge.export.verify, through the runtime."""
    from lmforge.export.fast import ROWS, build_fast_gpt, build_rows_graph, fast_io_spec

    build_fast_gpt(model, spec, tmp / VARIANT_FILES["fast"])
    files = {"fast": VARIANT_FILES["fast"]}
    if e.rows_graph:  # the fp32 graph with attention per row: a batch's greedy rows verify drafts in one call
        build_rows_graph(tmp / VARIANT_FILES["fast"], tmp / VARIANT_FILES["fast-rows"], ROWS)
        files["fast-rows"] = VARIANT_FILES["fast-rows"]
    pairs = []  # the variants whose MatMuls are all MatMulNBits (lmforge.export.fast.ROWS_IN_PAIRS)
    if e.int8 and e.int8_kernel == "dynamic":  # DynamicQuantizeMatMul: faster batches, never speculates
        quantize_int8(tmp / VARIANT_FILES["fast"], tmp / VARIANT_FILES["fast-int8"])
    elif e.int8:
        build_fast_gpt(model, spec, tmp / VARIANT_FILES["fast-int8"], precision="int8")
        pairs.append("int8")
    if e.int8:
        files["fast-int8"] = VARIANT_FILES["fast-int8"]
    if e.int4:
        build_fast_gpt(model, spec, tmp / VARIANT_FILES["fast-int4"], precision="int4")
        files["fast-int4"] = VARIANT_FILES["fast-int4"]
        pairs.append("int4")
    if e.fp16:
        build_fast_gpt(model, spec, tmp / VARIANT_FILES["fast-fp16"], precision="fp16")
        files["fast-fp16"] = VARIANT_FILES["fast-fp16"]
    return files, fast_io_spec(spec, tuple(pairs), ROWS if e.rows_graph else 0)


def export_portable_variants(model, spec: dict, tmp: Path, e: ExportConfig) -> tuple[dict, dict]:
    """model.onnx, parity-checked against torch (export.parity_tolerance), and the portable variants `e` asks for
    (int8, optimized, fp16): (lmforge.json `files` entries written, export metrics)."""
    fp32 = export_onnx(model, spec, tmp / VARIANT_FILES["fp32"], e.opset)
    err = parity(model, spec, fp32)
    if not err <= e.parity_tolerance:
        raise LmforgeError(f"ONNX export differs from torch by {err:.2e} (> {e.parity_tolerance:g})",
                           hint="report this model configuration; raise export.parity_tolerance to inspect")
    files = {"fp32": VARIANT_FILES["fp32"]}
    metrics = {"onnx_parity_max_abs": err, "onnx_fp32_bytes": fp32.stat().st_size}
    if e.int8:
        metrics["onnx_int8_bytes"] = quantize_int8(fp32, tmp / VARIANT_FILES["int8"]).stat().st_size
        files["int8"] = VARIANT_FILES["int8"]
    if e.optimize:
        optimize_graph(fp32, tmp / VARIANT_FILES["optimized"])
        files["optimized"] = VARIANT_FILES["optimized"]
    if e.fp16:
        metrics["onnx_fp16_bytes"] = convert_fp16(fp32, tmp / VARIANT_FILES["fp16"]).stat().st_size
        files["fp16"] = VARIANT_FILES["fp16"]
    return files, metrics


def data_record(data) -> dict:
    """What a model records about the data it was trained on (lmforge.json `data`)."""
    return {"source": data.source, "corpus_sha256": data.corpus_sha256, "documents": data.documents,
            "fingerprint": data.fingerprint, "tokenizer_sha256": data.tokenizer_sha256, "split": data.split,
            "val_sha256": data.val_sha256}


def provenance(cfg, data, metrics: dict, run_id: str | None) -> dict:
    """The parts of lmforge.json that say where a model comes from and how to sample it by default (the
    architecture, I/O and files are added by export_model_dir)."""
    e = cfg.export
    return {"name": cfg.name, "tokenizer": {"kind": cfg.tokenizer.kind, "file": "tokenizer.json"},
            "tokens": data.special_ids,
            "generation": {"temperature": e.temperature, "top_k": e.top_k, "top_p": e.top_p,
                           "max_new_tokens": e.max_new_tokens},
            "data": data_record(data), "metrics": metrics, "mlflow_run_id": run_id}


def export_model_dir(model: torch.nn.Module, tokenizer_file: Path, out_dir: Path, manifest: dict,
                     export: ExportConfig | None = None, *, val: np.ndarray | None = None,
                     before_verify: Callable[[Path], None] | None = None) -> tuple[Path, dict]:
    """Write the whole model directory (the files the `[export]` config `export` asks for; its defaults when
    None) into a temp dir, check every graph in it through lmforge.runtime (lmforge.export.verify: fp32 graphs
    against torch, quantised ones against fp32 on `val` when given, within the config's bounds), then move it
    into place. `manifest` holds lmforge.json's provenance (lmforge.export.modeldir.provenance). Returns the
    directory and export metrics (parity errors, sizes, the verification figures). before_verify(temp_dir) runs
    just before the checks (a hook for post-processing, and for tests that corrupt a graph)."""
    e = export or ExportConfig()
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest, metrics = write_model_files(model, tokenizer_file, tmp, manifest, e)
        if before_verify is not None:
            before_verify(tmp)
        metrics.update(verify(model, tmp, val, e, manifest, metrics))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir, metrics


GQA_HEAD_MULTIPLE = 8  # onnxruntime's GroupQueryAttention kernel: "head_size must be a multiple of 8"


def check_exportable(spec: dict) -> None:
    """Refuse, in one line before anything is written, a gpt whose heads the fast and genai graphs cannot hold."""
    if spec.get("family", "gpt") in ("gpt", "hf-gpt2") and spec["head_dim"] % GQA_HEAD_MULTIPLE:
        raise LmforgeError(f"head_dim {spec['head_dim']} (n_embd {spec['n_embd']} / n_head {spec['n_head']}) is not a "
                           f"multiple of {GQA_HEAD_MULTIPLE}, which onnxruntime's GroupQueryAttention (the fast and "
                           "onnxruntime-genai graphs) needs", hint="choose model.n_embd and model.n_head so that "
                                                                  "n_embd / n_head is a multiple of 8")


def write_model_files(model, tokenizer_file: Path, tmp: Path, provenance: dict, e: ExportConfig) -> tuple[dict, dict]:
    """Every graph, the tokenizer and lmforge.json (not yet verified) into `tmp`: (the manifest, export metrics)."""
    spec = model_spec(model)
    check_exportable(spec)
    files, metrics = export_portable_variants(model, spec, tmp, e)
    io = io_spec(spec)
    if spec.get("family", "gpt") == "gpt":  # the fast decoding graph beside the portable one
        fast_files, io["fast"] = export_fast_variants(model, spec, tmp, e)
        files.update(fast_files)
    # one tokenizer.json that every consumer encodes alike (lmforge.export.tokenizer)
    tokenizer = export_tokenizer(tokenizer_file, spec["block_size"], provenance.get("tokens"))
    tokenizer.save(tmp, with_config=False)
    # onnxruntime-genai's graphs and config (gpt, hf-gpt2), made from the fast graphs written above
    genai_files, genai, genai_metrics = export_genai_files(model, spec, tmp, tokenizer, provenance, e)
    files.update(genai_files)
    metrics.update(genai_metrics)
    for key, name in files.items():
        metrics[f"onnx_{key.replace('-', '_')}_bytes"] = (tmp / name).stat().st_size
    ecosystem, ecosystem_metrics = export_ecosystem_files(model, spec, tmp, provenance, tokenizer, e)
    metrics.update(ecosystem_metrics)
    manifest = {**provenance, "model": spec, "io": io, "files": files, "genai": genai, **ecosystem}
    write_manifest(tmp, manifest)
    return manifest, metrics


def export_ecosystem_files(model, spec: dict, tmp: Path, provenance: dict, tokenizer,
                           e: ExportConfig) -> tuple[dict, dict]:
    """The Hugging Face folder (hf/, export.hf) and the GGUF file (model.<type>.gguf, export.gguf) of a gpt /
    hf-gpt2 model: (lmforge.json `hf` and `gguf`, export metrics); for lstm / gru both say why there are none."""
    from lmforge.export.gguf import FILE, write_gguf
    from lmforge.export.hf import FOLDER, unsupported, write_hf_folder

    family = spec.get("family", "gpt")
    if family not in ("gpt", "hf-gpt2"):
        return {"hf": unsupported(family), "gguf": unsupported(family)}, {}
    manifest = {**provenance, "model": spec}
    records = {"hf": {"supported": False, "reason": "export.hf is false"},
               "gguf": {"supported": False, "reason": "export.gguf is none"}}
    metrics = {}
    if e.hf:
        records["hf"] = write_hf_folder(model, spec, manifest, tokenizer, tmp / FOLDER)
        metrics["hf_bytes"] = sum(p.stat().st_size for p in (tmp / FOLDER).iterdir())
    if e.gguf != "none":
        path = tmp / FILE.format(type=e.gguf)
        records["gguf"] = write_gguf(model, spec, manifest, tokenizer, path, e.gguf)
        metrics["gguf_bytes"] = path.stat().st_size
    return records, metrics


def verify(model, tmp: Path, val: np.ndarray | None, e: ExportConfig, manifest: dict, metrics: dict) -> dict:
    """lmforge.export.verify over the directory being built, within the config's bounds; lmforge.json rewritten
    with every export metric (`metrics` and the verification figures) and the verification record. Returns the
    verification figures (plus onnx_fast_parity_max_abs: the fast graph's parity, measured in the mode that runs)."""
    from lmforge.export.verify import Bounds, verify_model_dir

    checked, record = verify_model_dir(model, tmp, val, Bounds.from_config(e))
    if "verify_fast_logit_max_abs" in checked:
        checked["onnx_fast_parity_max_abs"] = checked["verify_fast_logit_max_abs"]
    write_manifest(tmp, {**manifest, "metrics": {**manifest.get("metrics", {}), **metrics, **checked},
                         "verification": record})
    return checked


def export_run(cfg, data, ckpt_dir: Path, metrics: dict, out_dir: Path, run_id: str | None = None):
    """A run's best checkpoint -> its exported model directory (every variant the config asks for, each checked),
    with the val-loss cost of each variant measured on the run's own val split: lmforge.core.records.Exported."""
    from lmforge.training.checkpoint import load_best
    from lmforge.core.records import Exported
    from lmforge.runtime.scoring import variant_val_loss_deltas

    model = load_best(cfg.model, data.vocab_size, ckpt_dir)
    val = open_shard(data.dir, "val")
    model_dir, export_metrics = export_model_dir(model, data.tokenizer_file, out_dir,
                                                 provenance(cfg, data, metrics, run_id), cfg.export, val=val)
    export_metrics.update(variant_val_loss_deltas(model_dir, val))
    return Exported(model_dir=Path(model_dir), metrics=export_metrics)
