"""Export variants on a tiny GPT: model.opt.onnx (onnxruntime graph optimisation saved offline), model.fp16.onnx,
each written only when enabled, each loadable by the Generator, and their val-loss cost beside fp32 recorded in
lmforge.json and MLflow."""
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import tiny_random_gpt

from lmforge.data.shards import open_shard, write_shards
from lmforge.data.tokenize import train_char
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.runtime import Generator
from lmforge.runtime.scoring import prefill_feeds, val_loss, variant_val_loss_deltas

TEXT = "why did the chicken cross the road? to get to the other side! " * 4
MANIFEST = {"name": "tiny", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
            "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None},
            "generation": {"temperature": 0.0, "max_new_tokens": 20}, "metrics": {"val_loss": 1.0}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(root, model, tokenizer) — a random 2-layer GPT with a 32-token context."""
    root = tmp_path_factory.mktemp("variants")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    return root, model, tok


@pytest.fixture(scope="module")
def all_variants(tiny):
    root, model, _ = tiny
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "all", MANIFEST,
                              ExportConfig(optimize=True, fp16=True, int4=True))
    return out


def test_variant_files_written_only_when_enabled(tiny, all_variants):
    root, model, _ = tiny
    files = json.loads((all_variants / "lmforge.json").read_text())["files"]
    for variant, name in {"int8": "model.int8.onnx", "optimized": "model.opt.onnx", "fp16": "model.fp16.onnx",
                          "fast": "model.fast.onnx", "fast-int8": "model.fast.int8.onnx",
                          "fast-int4": "model.fast.int4.onnx", "fast-fp16": "model.fast.fp16.onnx"}.items():
        assert files[variant] == name and (all_variants / name).is_file()
    metrics = json.loads((all_variants / "lmforge.json").read_text())["metrics"]
    assert metrics["verify_fast_logit_max_abs"] <= 1e-3  # no val text given: fp32 graphs checked against torch only
    assert not any(k.endswith("_agreement") for k in metrics)
    plain, _ = export_model_dir(model, root / "tokenizer.json", root / "plain", MANIFEST,
                                ExportConfig(int8=False, optimize=False, fp16=False, int4=False))
    files = json.loads((plain / "lmforge.json").read_text())["files"]
    assert set(files) == {"fp32", "fast", "genai", "genai-int4"}  # genai: onnxruntime-genai (tests/test_genai.py)
    for name in ("model.int8.onnx", "model.opt.onnx", "model.fp16.onnx", "model.fast.int8.onnx",
                 "model.fast.int4.onnx", "model.fast.fp16.onnx", "model.genai.int8.onnx"):
        assert not (plain / name).exists(), name


def test_optimized_greedy_tokens_equal_fp32(all_variants):
    ref = Generator(all_variants, variant="fp32", device="cpu", fast=False)
    opt = Generator(all_variants, variant="optimized", device="cpu")
    assert not opt.fast and opt.provider == "CPUExecutionProvider"
    for prompt in ("why", "the chicken cross", "t"):
        a = ref.generate(prompt, max_new_tokens=20, temperature=0)
        assert len(a) >= 10 and opt.generate(prompt, max_new_tokens=20, temperature=0) == a


def test_fp16_is_valid_keeps_fp32_io_and_runs_close_on_cpu(all_variants):
    path = all_variants / "model.fp16.onnx"
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    assert {i.type.tensor_type.elem_type for i in proto.graph.input if i.name.startswith("past")} == {1}  # float
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    ref = Generator(all_variants, variant="fp32", device="cpu", fast=False)
    half = Generator(all_variants, variant="fp16", device="cpu", fast=False)  # onnxruntime 1.3x: these ops on CPU
    ids = np.array([ref.encode("why did the chicken")])
    a = ref.session.run(["logits"], prefill_feeds(ref, ids))[0]
    b = half.session.run(["logits"], prefill_feeds(half, ids))[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.02 * np.abs(a).max()
    assert half.generate("why", max_new_tokens=20, temperature=0)[:5] == ref.generate("why", max_new_tokens=20,
                                                                                     temperature=0)[:5]


def test_val_loss_deltas_in_manifest(tiny, all_variants, tmp_path):
    _, _, tok = tiny
    ids = np.array(tok.encode(TEXT * 3).ids)
    write_shards([(ids, np.array([ids.size]))], np.array([True]), tmp_path / "prepared", tok.get_vocab_size())
    model_dir = shutil.copytree(all_variants, tmp_path / "model")
    val = open_shard(tmp_path / "prepared", "val")
    scores = variant_val_loss_deltas(model_dir, val)
    metrics = json.loads((model_dir / "lmforge.json").read_text())["metrics"]
    assert metrics["val_loss"] == 1.0 and scores == {k: metrics[k] for k in scores}  # training metrics kept
    fp32 = val_loss(model_dir, val, max_windows=32)
    for v in ("int8", "fp16", "optimized"):  # each variant scored again on its own graph: its delta, not another's
        assert metrics[f"{v}_val_loss_delta"] == pytest.approx(val_loss(model_dir, val, max_windows=32, variant=v) - fp32)
    assert abs(metrics["optimized_val_loss_delta"]) < 1e-4  # the same arithmetic, rearranged
    assert abs(metrics["fp16_val_loss_delta"]) < 0.05 and metrics["int8_val_loss_delta"] != 0.0
    assert metrics["onnx_fp32_val_loss"] > 0


@pytest.mark.parametrize("bits,symmetric", [(4, False), (4, True), (8, False), (8, True)])
@pytest.mark.parametrize("K", [64, 40])  # whole blocks, and a last block padded with zeros
def test_nbits_blocks_are_what_matmulnbits_computes(K, bits, symmetric):
    """onnxruntime's MatMulNBits on lmforge's packing (4 or 8 bits, with or without zero points) equals x @ the
    dequantised weights, each within half a block's step of the original (symmetric: the value of largest
    magnitude exactly)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from lmforge.export.fast import nbits_blocks

    rng = np.random.default_rng(0)
    N, block = 24, 32
    w = rng.normal(0, 1, (N, K)).astype(np.float32)
    packed, scales, zp = nbits_blocks(w, bits, block, symmetric)
    nb = -(-K // block)
    q = (np.stack([packed & 15, packed >> 4], -1) if bits == 4 else packed).reshape(N, nb, block).astype(np.float32)
    if zp is None:
        z = np.full((N, nb), 2 ** (bits - 1), np.float32)
    elif bits == 4:
        z = np.stack([zp & 15, zp >> 4], -1).reshape(N, -1)[:, :nb].astype(np.float32)
    else:
        z = zp.reshape(N, nb).astype(np.float32)
    step = np.abs(scales.reshape(N, nb))
    deq = ((q - z[..., None]) * scales.reshape(N, nb)[..., None]).reshape(N, -1)[:, :K]
    # symmetric: the far end of the range may clip by up to one step (as onnxruntime's own quantiser)
    assert (np.abs(deq - w) <= step.repeat(block, 1)[:, :K] * (1.0 if symmetric else 0.5) + 1e-6).all()
    inputs = ["x", "b", "s"] + ([] if zp is None else ["z"])
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=K, N=N, bits=bits,
                            block_size=block)
    inits = [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "s")]
    if zp is not None:
        inits.append(numpy_helper.from_array(zp, "z"))
    graph = helper.make_graph([node], "qn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)
    x = rng.normal(0, 1, (3, K)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(y - x @ deq.T).max() < 1e-3
