"""Export-time verification through the runtime (lmforge.export.verify) on a char GPT trained for 200 steps on a slice of
tinyshakespeare: the figures of every graph land in lmforge.json within the [export] bounds, the int4 and fp16
fast graphs load and agree, a corrupted weight in the fast int8 graph fails the export, and the check drives the
very decoding state generate() runs."""
import json
import math

import numpy as np
import onnx
import pytest
import torch
from conftest import corpus, expected_provider
from onnx import numpy_helper

from lmforge.core.config import ExportConfig, TrainConfig
from lmforge.data.tokenize import train_char
from lmforge.core.errors import LmforgeError
from lmforge.export.fast import INT4
from lmforge.export.modeldir import export_model_dir
from lmforge.models import model_spec
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.runtime import Generator
from lmforge.runtime.scoring import stepped_logits, val_rows
from lmforge.training.train import train
from lmforge.export.verify import check_prompts

MANIFEST = {"name": "verify", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
            "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None},
            "generation": {"temperature": 0.0, "max_new_tokens": 20}}
GRAPHS = ("fp32", "optimized", "fast")
QUANTISED = ("int8", "fp16", "fast_int8", "fast_int4", "fast_fp16")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """(root, model, val, tokenizer): 2 layers, 64 wide, context 64, 200 steps on 200k characters."""
    text = corpus("tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    root = tmp_path_factory.mktemp("verify")
    tok = train_char([text])
    tok.save(str(root / "tokenizer.json"))
    ids = np.array(tok.encode(text).ids, np.uint16)
    split = int(len(ids) * 0.9)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=64))
    result = train(model, ids[:split], ids[split:], 64, TrainConfig(max_steps=200, batch_size=16, lr=3e-3,
                                                                   warmup_steps=10, eval_interval=200,
                                                                   eval_iters=2), root / "ckpt")
    assert result.best_val_loss < math.log(tok.get_vocab_size()) - 1.0  # learnt text, not uniform guessing
    return root, model.eval(), ids[split:], tok


@pytest.fixture(scope="module")
def exported(trained):
    root, model, val, _ = trained
    out, metrics = export_model_dir(model, root / "tokenizer.json", root / "model", MANIFEST,
                                    ExportConfig(fp16=True, int4=True, rows_graph=True), val=val)
    return out, metrics


def test_every_graph_checked_within_the_default_bounds(exported):
    out, metrics = exported
    manifest = json.loads((out / "lmforge.json").read_text())
    e = ExportConfig()
    runtime_graphs = {k for k in manifest["files"] if not k.startswith("genai")}  # genai: onnxruntime-genai's
    assert runtime_graphs == {"fp32", "int8", "optimized", "fp16", "fast", "fast-int8", "fast-int4", "fast-fp16",
                              "fast-rows"}
    assert manifest["io"]["fast"]["rows_graph"] == {"rows": 8}
    assert 0 <= metrics["verify_fast_rows_logit_max_abs"] <= e.max_abs_logit_diff  # against one call per token
    assert metrics["onnx_genai_parity_max_abs"] <= e.parity_tolerance  # its fp32 graph, against torch at export
    for g in GRAPHS:
        assert metrics[f"verify_{g}_logit_max_abs"] <= e.max_abs_logit_diff
    for g in QUANTISED:
        kind = g.split("_")[-1]
        assert metrics[f"verify_{g}_loss_delta"] <= getattr(e, f"max_{kind}_loss_delta")
        assert metrics[f"verify_{g}_agreement"] >= getattr(e, f"min_{kind}_agreement")
        assert manifest["metrics"][f"verify_{g}_agreement"] == metrics[f"verify_{g}_agreement"]
    assert metrics["verify_fast_int4_agreement"] < 1.0  # 4-bit weights do change some choices: it is measured
    assert metrics["onnx_fast_parity_max_abs"] == metrics["verify_fast_logit_max_abs"]
    record = manifest["verification"]
    assert record["positions"] == e.check_positions and record["torch_prompt_lengths"] == [7, 1, 4]
    assert record["providers"].pop("fast-rows") == "CPUExecutionProvider"  # the rows graph runs on the CPU only
    assert set(record["providers"].values()) == {expected_provider()}  # the provider that actually ran


def test_int4_graph_is_matmulnbits_and_the_int4_variant_runs_it(exported):
    out, _ = exported
    ops = {n.op_type for n in onnx.load(str(out / "model.fast.int4.onnx")).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops
    blocks = {a.i for n in onnx.load(str(out / "model.fast.int4.onnx")).graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "block_size"}
    assert blocks == {INT4.block}  # the default lmforge.export.fast chose (docs/decode.md, "The int4 step")
    gen = Generator(out, variant="int4")
    assert gen.fast and gen.session._model_path.endswith("model.fast.int4.onnx")
    assert len(gen.generate("ROMEO:", max_new_tokens=40, temperature=0)) == 40  # char model: a char a token


def test_int8_kernel_blocks_by_default_or_dynamic(trained, exported):
    """export.int8_kernel: "blocks" (the default) writes the fast int8 graph as MatMulNBits with 8-bit blocks of 128
    and lists it in io.fast.rows_in_pairs (its greedy rows speculate); "dynamic" writes onnxruntime's quantize_dynamic
    (DynamicQuantizeMatMul once loaded), which never speculates; both pass the verification."""
    out, metrics = exported

    def int8_ops(directory):
        nodes = onnx.load(str(directory / "model.fast.int8.onnx")).graph.node
        return {n.op_type for n in nodes}, {a.i for n in nodes for a in n.attribute if a.name == "bits"}
    manifest = json.loads((out / "lmforge.json").read_text())
    ops, bits = int8_ops(out)
    assert "MatMulNBits" in ops and "MatMul" not in ops and bits == {8}
    assert manifest["io"]["fast"]["rows_in_pairs"] == ["int8", "int4"]
    assert Generator(out, variant="int8").speculates
    root, model, val, _ = trained
    dyn, dmetrics = export_model_dir(model, root / "tokenizer.json", root / "model-dynamic", MANIFEST,
                                     ExportConfig(optimize=False, int8_kernel="dynamic"), val=val)
    ops, bits = int8_ops(dyn)  # (quantize_dynamic's MatMulInteger, fused to DynamicQuantizeMatMul at load)
    assert "MatMulInteger" in ops and "MatMulNBits" not in ops and not bits
    assert json.loads((dyn / "lmforge.json").read_text())["io"]["fast"]["rows_in_pairs"] == []
    gen = Generator(dyn, variant="int8")
    assert not gen.speculates and gen.lookahead == 0
    e = ExportConfig()
    for m in (metrics, dmetrics):  # (which is closer to fp32 depends on the model: no order asserted)
        assert m["verify_fast_int8_agreement"] >= e.min_int8_agreement
        assert m["verify_fast_int8_loss_delta"] <= e.max_int8_loss_delta


def test_fp16_fast_graph_has_half_kv_buffers_and_runs_on_cpu(exported):
    out, _ = exported
    proto = onnx.load(str(out / "model.fast.fp16.onnx"))
    kv = {i.type.tensor_type.elem_type for i in proto.graph.input if i.name.startswith("past")}
    assert kv == {onnx.TensorProto.FLOAT16}
    assert {o.type.tensor_type.elem_type for o in proto.graph.output if o.name == "logits"} == {onnx.TensorProto.FLOAT}
    gen = Generator(out, variant="fp16")
    assert gen.fast and gen.session._model_path.endswith("model.fast.fp16.onnx")
    assert gen.generate("ROMEO:", max_new_tokens=30, temperature=0) == Generator(out).generate(
        "ROMEO:", max_new_tokens=30, temperature=0)


def _edit_weight(path, name: str, edit) -> None:
    """Rewrite the initializer `name` of the ONNX file `path` as edit(a copy of its array)."""
    proto = onnx.load(str(path))
    t = next(t for t in proto.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(edit(numpy_helper.to_array(t).copy()), t.name))
    onnx.save(proto, str(path))


def _negate_lm_head_scale(directory):
    """Flip the sign of the quantised head's block scales in model.fast.int8.onnx (MatMulNBits)."""
    _edit_weight(directory / "model.fast.int8.onnx", "lm_head_t_scales", lambda w: -w)


def _shifted(w, where):
    w[where] += 0.5
    return w


def test_a_corrupted_fast_int8_weight_fails_the_export(trained):
    root, model, val, _ = trained
    out = root / "corrupt"
    with pytest.raises(LmforgeError, match="model.fast.int8.onnx") as info:
        export_model_dir(model, root / "tokenizer.json", out, MANIFEST, ExportConfig(optimize=False, int4=False),
                         val=val, before_verify=_negate_lm_head_scale)
    assert "export.min_int8_agreement" in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()  # nothing half-checked is left in place


def test_a_corrupted_fast_fp32_weight_fails_against_torch(trained):
    root, model, _, _ = trained

    def corrupt(directory):
        _edit_weight(directory / "model.fast.onnx", "blocks.1.mlp.c_proj.weight_t", lambda w: _shifted(w, (0, 0)))

    with pytest.raises(LmforgeError, match="model.fast.onnx .*export.max_abs_logit_diff"):
        export_model_dir(model, root / "tokenizer.json", root / "bad", MANIFEST,
                         ExportConfig(int8=False, optimize=False, int4=False), before_verify=corrupt)


def test_a_corrupted_rows_graph_fails_against_the_fast_graph(trained):
    """model.fast.rows.onnx (export.rows_graph) checked against the fast graph stepped one token per call; not
    written by default."""
    root, model, _, _ = trained

    def corrupt(directory):  # a value weight: only the rows graph's attention output moves
        _edit_weight(directory / "model.fast.rows.onnx", "blocks.0.attn.c_attn.weight_t",
                     lambda w: _shifted(w, (slice(None), -1)))

    with pytest.raises(LmforgeError, match="model.fast.rows.onnx .* one token per call .*export.max_abs_logit_diff"):
        export_model_dir(model, root / "tokenizer.json", root / "bad-rows", MANIFEST,
                         ExportConfig(int8=False, optimize=False, rows_graph=True), before_verify=corrupt)
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "plain", MANIFEST,
                              ExportConfig(int8=False, optimize=False))
    manifest = json.loads((out / "lmforge.json").read_text())
    assert "fast-rows" not in manifest["files"] and "rows_graph" not in manifest["io"]["fast"]


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_the_check_runs_the_decoding_state_generate_runs(exported, trained, variant):
    """Greedy generate() equals the argmax of the verification's logits fed generate()'s own tokens."""
    out, _ = exported
    gen = Generator(out, variant=variant)
    ids = gen.encode("ROMEO:")
    text = gen.generate("ROMEO:", max_new_tokens=30, temperature=0)
    forced = np.array([trained[3].encode(text).ids], np.int64)
    logits = stepped_logits(gen, [ids], forced[:, :-1])
    assert gen.tokenizer.decode(list(logits[0].argmax(-1))) == text


def test_val_rows_cover_the_positions_with_real_targets(trained):
    _, model, val, _ = trained
    prompts, _ = check_prompts(model_spec(model), val)  # the torch comparison's prompts: real val text too
    text = val.astype(np.int64).tobytes()
    assert [len(p) for p in prompts] == [7, 1, 4] and all(np.array(p).tobytes() in text for p in prompts)
    prompts, forced, targets = val_rows(val, 64, positions=256)
    assert targets.size >= 256 and all(len(p) == 8 for p in prompts)
    assert (forced == targets[:, :-1]).all() and forced.shape[1] + 8 == 64
