"""onnxruntime-genai (the real package) loads an exported gpt directory as it is: genai_config.json,
model.genai*.onnx, tokenizer.json + tokenizer_config.json. On a GPT trained here for a few hundred steps, its
greedy tokens (its own tokenizer, Generator, append_tokens, generate_next_token) equal lmforge.runtime's, fp32
and int8 (the same int8 weights as model.fast.int8.onnx); int4 (MatMulNBits) is checked against plain
onnxruntime running the same int4 graph, and its agreement with fp32 is measured. hf-gpt2 and char-tokenizer
exports load too; recurrent exports get no genai files and lmforge.json says why."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import corpus, tiny_random_gpt

og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is in the test extra")

from lmforge.core.config import ModelConfig, TrainConfig
from lmforge.data.tokenize import special_ids, train_bpe, train_char
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.export.genai import GENAI_FILES, RNN_REASON, select_graph
from lmforge.export.genai import genai_greedy as genai_loop
from lmforge.models import build_model, model_spec
from lmforge.runtime import Generator, ModelDirError
from lmforge.runtime.decoders import forward
from lmforge.runtime.names import kv_names
from lmforge.runtime.scoring import greedy_ids

BLOCK = 64
PROMPTS = ["First Citizen:\nWe are", "KING RICHARD", "O"]


def manifest(tok, kind: str) -> dict:
    return {"name": "genai-test", "tokenizer": {"kind": kind, "file": "tokenizer.json"}, "tokens": special_ids(tok),
            "generation": {"temperature": 0.8, "top_k": 40, "max_new_tokens": 40}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A 2-layer GPT with a byte-level BPE tokenizer trained for 300 steps on tinyshakespeare, exported."""
    from lmforge.training.train import train

    root = tmp_path_factory.mktemp("genai")
    text = corpus("tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    tok = train_bpe([text], 512)
    tok.save(str(root / "tokenizer.json"))
    ids = np.array(tok.encode(text, add_special_tokens=False).ids, np.uint16)
    split = int(len(ids) * 0.9)
    model = build_model(ModelConfig(family="gpt", block_size=BLOCK, n_layer=2, n_head=2, n_embd=64),
                        tok.get_vocab_size(), seed=0)
    cfg = TrainConfig(max_steps=300, batch_size=16, lr=3e-3, warmup_steps=20, eval_interval=150, eval_iters=2,
                      device="cpu")
    result = train(model, ids[:split], ids[split:], BLOCK, cfg, root / "ckpt", resume=False)
    assert result.best_val_loss < 4.5, result  # learnt something beyond uniform (ln 512 = 6.2)
    out, metrics = export_model_dir(model, root / "tokenizer.json", root / "model", manifest(tok, "bpe"),
                                    ExportConfig(optimize=False, int4=True))
    return out, metrics


def genai_greedy(model_dir, variant: str, ids: list[int], n: int) -> list[int]:
    """ort-genai's own loop on the variant's graph: Generator, append_tokens, generate_next_token."""
    return genai_loop(og.Model(select_graph(model_dir, variant)), ids, n)


def test_directory_has_the_genai_files_and_their_io(trained):
    out, metrics = trained
    md = json.loads((out / "lmforge.json").read_text())
    genai = md["genai"]
    assert genai["supported"] and genai["tokenizer"] and genai["config"] == "genai_config.json"
    assert genai["graphs"] == GENAI_FILES and genai["tokenizer_config"] == "tokenizer_config.json"
    for key, name in (("genai", "model.genai.onnx"), ("genai-int8", "model.genai.int8.onnx"),
                      ("genai-int4", "model.genai.int4.onnx")):
        assert md["files"][key] == name and (out / name).is_file()
    cfg = json.loads((out / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["filename"] == "model.genai.onnx" and cfg["search"]["past_present_share_buffer"] is True
    assert cfg["model"]["eos_token_id"] == md["tokens"]["eos"] and cfg["model"]["context_length"] == BLOCK
    search = cfg["search"]  # lmforge.json's sampling defaults (temperature 0.8, top_k 40) as ort-genai's
    assert search["do_sample"] is True and search["temperature"] == 0.8 and search["top_k"] == 40
    assert search["max_length"] == BLOCK
    past, present = kv_names(2)
    for name in GENAI_FILES.values():
        graph = onnx.load(str(out / name), load_external_data=False).graph
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids", *past]
        assert [o.name for o in graph.output] == ["logits", *present]
        assert any(n.op_type == "GroupQueryAttention" for n in graph.node)
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(out / "model.genai.int4.onnx")).graph.node)
    assert metrics["onnx_genai_parity_max_abs"] < 1e-3
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<bos>" and tc["eos_token"] == "<eos>"


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_genai_greedy_tokens_equal_lmforge(trained, variant):
    out, _ = trained
    gen = Generator(out, variant=variant, device="cpu")
    assert gen.fast  # the graph lmforge runs by default
    tokenizer = og.Tokenizer(og.Model(str(out)))
    bos = json.loads((out / "lmforge.json").read_text())["genai"]["prepend_bos"]
    assert bos == tokenizer.bos_token_id
    for prompt in PROMPTS:
        ids = [bos] + [int(t) for t in tokenizer.encode(prompt)]
        assert ids == gen.encode(prompt)  # ort-genai's tokenizer reads lmforge's tokenizer.json alike
        n = BLOCK - len(ids)
        got = genai_greedy(out, variant, ids, n)
        assert got == greedy_ids(gen, ids, n)
        text = tokenizer.decode(np.array(got, np.int32))
        assert len(set(got)) > 5 and text == gen.generate(prompt, max_new_tokens=n, temperature=0)


def test_genai_batch_of_one_length_decodes_each_row_as_alone(trained):
    out, _ = trained
    gen = Generator(out, device="cpu")
    rows = [gen.encode(p)[:6] for p in ("First Citizen:\nBefore we", "KING RICHARD III:\nNow is the winter",
                                        "ROMEO:\nBut soft, what light")]
    assert len({len(r) for r in rows}) == 1
    n = 24
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, batch_size=len(rows), max_length=6 + n, min_length=6 + n)
    batch = og.Generator(model, params)
    batch.append_tokens(np.array(rows, np.int32))
    while not batch.is_done():
        batch.generate_next_token()
    for i, r in enumerate(rows):
        assert [int(t) for t in batch.get_sequence(i)[6:]] == greedy_ids(gen, r, n)


def test_lmforge_refuses_to_run_the_genai_graphs(trained):
    out, _ = trained
    for variant in ("genai", "genai-int8", "genai-int4"):
        with pytest.raises(ModelDirError, match="onnxruntime_genai.Model"):
            Generator(out, variant=variant, device="cpu")


def ort_greedy(path, spec: dict, ids: list[int], n: int) -> list[int]:
    """Plain onnxruntime driving a genai graph as ort-genai feeds it (one shared buffer per layer)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    for i, o in zip(*kv_names(spec["n_layer"])):
        buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, spec["n_head"], len(ids) + n, spec["head_dim"]),
                                                        np.float32))
        binding.bind_ortvalue_input(i, buf)
        binding.bind_ortvalue_output(o, buf)
    step, total, out = list(ids), 0, []
    for _ in range(n):
        T = len(step)
        logits = np.zeros((1, T, spec["vocab_size"]), np.float32)
        for name, value in (("input_ids", np.array([step], np.int64)),
                            ("attention_mask", np.ones((1, total + T), np.int64)),
                            ("position_ids", np.arange(total, total + T, dtype=np.int64)[None])):
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        sess.run_with_iobinding(binding)
        total += T
        out.append(int(logits[0, -1].argmax()))
        step = out[-1:]
    return out


def test_genai_int4_runs_its_graph_and_agrees_with_fp32(trained):
    out, _ = trained
    spec = json.loads((out / "lmforge.json").read_text())["model"]
    gen = Generator(out, device="cpu")
    gen4 = Generator(out, variant="int4", device="cpu")  # model.fast.int4.onnx: the weights the genai int4 graph has
    assert gen4.fast and json.loads((out / "lmforge.json").read_text())["files"]["fast-int4"] == "model.fast.int4.onnx"
    agree, count = 0, 0
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        n = BLOCK - len(ids)
        got = genai_greedy(out, "int4", ids, n)
        assert got == ort_greedy(out / "model.genai.int4.onnx", spec, ids, n)
        assert got == greedy_ids(gen4, ids, n)  # ort-genai's loop and lmforge's on the same int4 weights
        ref = greedy_ids(gen, ids, n)
        agree += sum(a == b for a, b in zip(got, ref))
        count += n
    assert agree / count > 0.3, agree / count  # int4 of a 64-wide model drifts, but stays the same model


def test_char_tokenizer_export_runs_with_genai_tokenizer(tmp_path):
    """A char vocabulary is written as a BPE with no merges (lmforge.export.tokenizer), which ort-genai's tokenizer
    reads: its ids (and <bos> with add_special_tokens) are lmforge's, and so are the greedy tokens."""
    text = "why did the chicken cross the road? to get to the other side! " * 4
    tok = train_char([text])
    tok.save(str(tmp_path / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    out, _ = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "m", manifest(tok, "char"),
                              ExportConfig(int8=False, optimize=False))
    genai = json.loads((out / "lmforge.json").read_text())["genai"]
    assert genai["supported"] and genai["tokenizer"] is True and "genai-int8" not in genai["graphs"]
    assert (out / "tokenizer_config.json").is_file()
    tokenizer = og.Tokenizer(og.Model(str(out)))
    tokenizer.update_options(add_special_tokens="true")
    gen = Generator(out, device="cpu")
    ids = [int(i) for i in tokenizer.encode("the chicken")]
    assert ids == gen.encode("the chicken") and ids[0] == genai["prepend_bos"]
    n = 32 - len(ids)
    got = genai_greedy(out, "fp32", ids, n)
    assert got == greedy_ids(gen, ids, n)
    assert tokenizer.decode(np.array(got, np.int32)) == gen.tokenizer.decode(got)


def test_hf_gpt2_export_loads_in_genai(tmp_path):
    transformers = pytest.importorskip("transformers", reason="hf-gpt2 needs the hf extra")
    import torch

    from lmforge.models.hf_gpt2 import load_pretrained

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300,
                                                              n_positions=48))
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.6)
    hf.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    text = "why did the chicken cross the road? to get to the other side! " * 8
    tok = train_bpe([text], 300)
    tok.save(str(tmp_path / "tokenizer.json"))
    model = load_pretrained(str(tmp_path / "hf"), tok.get_vocab_size())
    out, metrics = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "m", manifest(tok, "bpe"),
                                    ExportConfig(optimize=False))
    assert model_spec(model)["family"] == "hf-gpt2" and metrics["onnx_genai_parity_max_abs"] < 1e-3
    gen = Generator(out, device="cpu")
    assert not gen.fast  # hf-gpt2 decodes on the portable graph in lmforge
    ids = gen.encode("the chicken")
    n = 48 - len(ids)
    state, mask, logits = gen.empty_state(1), np.ones((1, len(ids)), np.int64), None
    ref, step = [], np.array([ids], np.int64)
    for _ in range(n):
        logits, state = forward(gen, step, mask, state)  # the portable graph, one call
        ref.append(int(logits[0].argmax()))
        step, mask = np.array([ref[-1:]], np.int64), np.ones((1, mask.shape[1] + 1), np.int64)
    assert len(set(ref)) > 3 and genai_greedy(out, "fp32", ids, n) == ref


def test_recurrent_export_has_no_genai_files_and_says_why(tmp_path):
    text = "why did the chicken cross the road? " * 4
    tok = train_char([text])
    tok.save(str(tmp_path / "tokenizer.json"))
    for family in ("lstm", "gru"):
        model = build_model(ModelConfig(family=family, block_size=16, n_layer=1, n_embd=16, n_hidden=16),
                            tok.get_vocab_size(), seed=0)
        out, _ = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / family, manifest(tok, "char"),
                                  ExportConfig(int8=False, optimize=False))
        md = json.loads((out / "lmforge.json").read_text())
        assert md["genai"] == {"supported": False, "reason": RNN_REASON}
        assert not (out / "genai_config.json").exists() and not any("genai" in k for k in md["files"])
        assert not list(out.glob("model.genai*"))
        with pytest.raises(RuntimeError, match="genai_config.json"):
            og.Model(str(out))


def test_docs_snippet_runs_and_prints_what_lmforge_generates(trained, tmp_path):
    """docs/decode.md's onnxruntime-genai example, run in its own Python on the trained export: with its fp32
    line it prints exactly lmforge's greedy text for the prompt; as written (the int4 line last) it runs too."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    out, _ = trained
    repo = Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "decode.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", doc[doc.index("## onnxruntime-genai"):], re.DOTALL).group(1)
    assert "og.Model(model_dir)" in code and 'select_graph(model_dir, "int4")' in code
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def run(source: str) -> str:
        script = tmp_path / "snippet.py"
        script.write_text(f"model_dir = {str(out)!r}\n" + source, encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    fp32_only = "\n".join(line for line in code.splitlines() if "select_graph(model_dir" not in line)
    expected = Generator(out, device="cpu").generate("ROMEO:", max_new_tokens=40, temperature=0)
    assert len(expected) > 10 and run(fp32_only) == expected + "\n"
    assert len(run(code)) > 10  # as written: the int4 graph
