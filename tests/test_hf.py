"""The exported model in the formats the ecosystem reads, checked with the real consumers: the Hugging Face folder
(hf/) loaded by transformers (logits on a real val window within 1e-4 of lmforge's torch model at fp32, greedy
`generate` equal to `lmforge generate --temperature 0`) and by optimum's ONNX export (ORTModelForCausalLM, the
same greedy tokens), its model card read by huggingface_hub; the GGUF file loaded by llama-cpp-python (greedy
tokens equal lmforge's for the BPE model at f32, top-1 agreement measured for q8_0); onnxruntime-genai's own
tokenizer on char, word, bpe and gpt2 exports; one tokenizer.json that encodes <bos> first everywhere.

Three tiny GPTs trained a few hundred steps on the jokes pyjokes ships (real text, no download): a char model,
a byte-level BPE model, and an hf-gpt2 model (a GPT-2 checkpoint made here, with biases) with a GPT-2-format
tokenizer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, gpt2_tokenizer_files, tiny_random_gpt
from test_web import train

transformers = pytest.importorskip("transformers", reason="transformers is in the hf extra")

from lmforge.core.config import ExportConfig  # noqa: E402
from lmforge.core.errors import LmforgeError  # noqa: E402
from lmforge.data.tokenize import build_tokenizer, encode_batches, special_ids  # noqa: E402
from lmforge.export.modeldir import export_model_dir  # noqa: E402
from lmforge.runtime import Generator  # noqa: E402
from lmforge.runtime.scoring import greedy_ids  # noqa: E402

BLOCK = 64
PROMPTS = ["Why", "A programmer", "I"]
STRINGS = ["Why did the chicken", "", "café ✓ 日本", "<eos>x<bos>", "  two  spaces\n\ttab", "x" * 100]
KINDS = ("char", "bpe", "gpt2")


def jokes() -> list[str]:
    import pyjokes

    return [" ".join(j.split()) for j in pyjokes.get_jokes(language="en", category="all")]


def manifest(tok, kind: str) -> dict:
    return {"name": f"hf-{kind}", "tokenizer": {"kind": kind, "file": "tokenizer.json"}, "tokens": special_ids(tok),
            "generation": {"temperature": 0.8, "top_k": 40, "top_p": 1.0, "max_new_tokens": 40},
            "data": {"source": "pyjokes", "fingerprint": "f" * 64, "documents": 283},
            "metrics": {"val_loss": 2.5, "val_perplexity": 12.18}, "mlflow_run_id": None}


def gpt2_checkpoint(root: Path, vocab_size: int) -> Path:
    """A tiny random GPT-2 checkpoint saved by transformers (biases and all), as `model.pretrained` reads one."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=BLOCK, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(root), safe_serialization=True)
    return root


class Export:
    def __init__(self, kind, model, out, val):
        self.kind, self.model, self.dir, self.val = kind, model, out, val

    @property
    def hf(self) -> Path:
        return self.dir / "hf"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, one_torch_thread) -> dict[str, Export]:
    from lmforge.models import build_model
    from lmforge.core.config import ModelConfig
    from lmforge.models.hf_gpt2 import load_pretrained

    root = tmp_path_factory.mktemp("hf")
    docs = jokes()
    out = {}
    for kind in KINDS:
        d = root / kind
        d.mkdir()
        if kind == "gpt2":
            gpt2_tokenizer_files(build_tokenizer("bpe", docs, vocab_size=400), d)
        tok = build_tokenizer(kind, docs, vocab_size=400, path=str(d))
        tok.save(str(d / "tokenizer.json"))
        ids = np.concatenate([framed for framed, _ in encode_batches(tok, [docs])]).astype(np.int64)
        split = int(len(ids) * 0.9)
        if kind == "gpt2":
            model = load_pretrained(str(gpt2_checkpoint(d / "ckpt", tok.get_vocab_size())), tok.get_vocab_size())
        else:
            model = build_model(ModelConfig(family="gpt", block_size=BLOCK, n_layer=2, n_head=2, n_embd=32),
                                tok.get_vocab_size(), seed=0)
        model = train(model, ids[:split].tolist(), steps=250, block=BLOCK - 1)
        model_dir, _ = export_model_dir(model, d / "tokenizer.json", d / "model", manifest(tok, kind),
                                        ExportConfig(int8=False, optimize=False, gguf="f32"))
        out[kind] = Export(kind, model, model_dir, ids[split:])
    return out


# -- transformers -----------------------------------------------------------------------------------------------
def hf_model(e: Export):
    return transformers.AutoModelForCausalLM.from_pretrained(str(e.hf), torch_dtype=torch.float32).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_logits_equal_torch_on_a_val_window(exports, kind):
    e = exports[kind]
    m = hf_model(e)
    assert type(m).__name__ == "GPT2LMHeadModel"  # the stock class, no custom code
    window = torch.tensor(e.val[:BLOCK][None])
    with torch.no_grad():
        ref, _ = e.model.eval()(window)
        got = m(window).logits
    assert got.shape == ref.shape and float((got - ref).abs().max()) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_greedy_generate_equals_lmforge_generate(exports, kind, tmp_path):
    e = exports[kind]
    m, tok, gen = hf_model(e), transformers.AutoTokenizer.from_pretrained(str(e.hf)), Generator(e.dir, device="cpu")
    assert type(tok).__name__ == "PreTrainedTokenizerFast"
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        assert ids[0].tolist() == gen.encode(prompt)  # <bos> first, from the tokenizer's post-processor
        n = BLOCK - ids.shape[1]
        out = m.generate(ids, do_sample=False, max_new_tokens=n, attention_mask=torch.ones_like(ids))[0, ids.shape[1]:]
        cli = subprocess.run([sys.executable, "-m", "lmforge.cli", "generate", "--model", str(e.dir), "--prompt",
                              prompt, "--max-new-tokens", str(n), "--temperature", "0", "--json"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert cli.returncode == 0, cli.stderr
        want = greedy_ids(gen, gen.encode(prompt), n)
        eos = gen.eos
        want = want[:want.index(eos) + 1] if eos in want else want  # generate stops at the end token
        assert out.tolist() == want, prompt
        assert tok.decode(out, skip_special_tokens=True) == json.loads(cli.stdout)["text"]


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_tokenizer_encodes_as_every_consumer(exports, kind):
    e = exports[kind]
    tok = transformers.AutoTokenizer.from_pretrained(str(e.hf))
    gen = Generator(e.dir, device="cpu")
    for s in STRINGS:
        assert tok(s)["input_ids"] == gen.encode(s) == gen.tokenizer.encode(s).ids
        ids = gen.encode(s)
        assert tok.decode(ids, skip_special_tokens=True) == gen.tokenizer.decode(ids)


def test_configs_and_model_card(exports):
    from huggingface_hub import ModelCard

    e = exports["char"]
    cfg = json.loads((e.hf / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["n_positions"] == BLOCK and cfg["activation_function"] == "gelu_new"
    gen_cfg = transformers.GenerationConfig.from_pretrained(str(e.hf))  # the preset's generation defaults
    assert gen_cfg.do_sample and gen_cfg.temperature == 0.8 and gen_cfg.top_k == 40 and gen_cfg.max_new_tokens == 40
    assert gen_cfg.eos_token_id == 3 and gen_cfg.bos_token_id == 2
    card = ModelCard.load(e.hf / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    results = card.data.eval_results
    assert {(r.metric_type, r.metric_value) for r in results} == {("perplexity", 12.18), ("loss", 2.5)}
    assert "f" * 64 in card.text and "pyjokes" in card.text  # the data fingerprint and source
    from lmforge.export.hf import write_model_card

    write_model_card(e.dir, samples=[{"temperature": 1.0, "prompt": "Why", "text": "Why did the"}],
                     registered="models:/hf-char/3")
    card = ModelCard.load(e.hf / "README.md")
    assert "## Samples" in card.text and "Why did the" in card.text and "models:/hf-char/3" in card.text
    md = json.loads((e.dir / "lmforge.json").read_text())
    assert md["hf"]["supported"] and md["hf"]["folder"] == "hf"
    assert sorted(p.name for p in e.hf.iterdir()) == md["hf"]["files"]


# -- optimum: ONNX from the Hugging Face folder --------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_optimum_onnx_export_gives_the_same_greedy_tokens(exports, kind, tmp_path):
    ort_models = pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is in the test extra")
    e = exports[kind]
    m = ort_models.ORTModelForCausalLM.from_pretrained(str(e.hf), export=True, provider="CPUExecutionProvider")
    m.save_pretrained(str(tmp_path / "onnx"))
    m = ort_models.ORTModelForCausalLM.from_pretrained(str(tmp_path / "onnx"), provider="CPUExecutionProvider")
    gen = Generator(e.dir, device="cpu")
    for prompt in PROMPTS[:2]:
        ids = gen.encode(prompt)
        n = 24
        out = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n)[0, len(ids):].tolist()
        want = greedy_ids(gen, ids, n)
        want = want[:want.index(gen.eos) + 1] if gen.eos in want else want
        assert out == want, prompt


# -- onnxruntime-genai's tokenizer -------------------------------------------------------------------------------
def word_export(tmp_path: Path) -> Path:
    tok = build_tokenizer("word", jokes())
    tok.save(str(tmp_path / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    return export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "word", manifest(tok, "word"),
                            ExportConfig(int8=False, optimize=False, gguf="none"))[0]


@pytest.mark.parametrize("kind", [*KINDS, "word"])
def test_genai_tokenizer_round_trips(exports, kind, tmp_path):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is in the test extra")
    d = word_export(tmp_path) if kind == "word" else exports[kind].dir
    genai = json.loads((d / "lmforge.json").read_text())["genai"]
    gen = Generator(d, device="cpu")
    if kind == "word":  # no form onnxruntime-genai's tokenizer reads holds a word vocabulary: said, not written
        assert genai["tokenizer"] is False and "Unigram" in genai["tokenizer_reason"]
        assert not (d / "tokenizer_config.json").exists()
        with pytest.raises(Exception, match="tokenizer_config.json"):
            og.Tokenizer(og.Model(str(d)))
        return
    assert genai["tokenizer"] is True and genai["prepend_bos"] == gen.bos
    tokenizer = og.Tokenizer(og.Model(str(d)))
    known = [s for s in STRINGS if kind != "char" or all(gen.tokenizer.token_to_id(c.replace(" ", "\u2581"))
                                                       is not None for c in s)]
    assert len(known) >= 3
    for s in known:
        plain = [int(i) for i in tokenizer.encode(s)]  # ort-genai's default: add_special_tokens false
        assert [gen.bos] + plain == gen.encode(s), s
        if s:  # (ort-genai decodes ids that are all special tokens to "\ufffd", not "")
            decoded = tokenizer.decode(np.array(gen.encode(s), np.int32))
            assert decoded == gen.tokenizer.decode(gen.encode(s)) and (decoded == s or "<" in s)
    tokenizer.update_options(add_special_tokens="true")  # the tokenizer's <bos>, as in tokenizers/transformers
    for s in known:
        assert [int(i) for i in tokenizer.encode(s)] == gen.encode(s), s
    if kind == "char":
        assert "no <unk>" in genai["tokenizer_unseen"]


def test_an_export_without_the_post_processor_still_encodes_bos_first(tmp_path):
    """A directory exported before tokenizer.json had a post-processor: the runtime prepends <bos> itself."""
    d = word_export(tmp_path)
    gen = Generator(d, device="cpu")
    want = gen.encode("Why did the chicken")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["post_processor"] = None
    (d / "tokenizer.json").write_text(json.dumps(tok))
    old = Generator(d, device="cpu")
    assert old.tokenizer.encode("Why did the chicken").ids == want[1:]  # no <bos> from the file itself
    assert old.encode("Why did the chicken") == want and want[0] == old.bos
    assert old.generate("Why", max_new_tokens=8, temperature=0) == gen.generate("Why", max_new_tokens=8, temperature=0)


# -- GGUF: llama-cpp-python ------------------------------------------------------------------------------------
def llama(path: Path, **kw):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extra (see pyproject.toml)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=BLOCK, n_threads=1, verbose=False, **kw)


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def test_gguf_bpe_f32_greedy_tokens_equal_lmforge(exports):
    e = exports["bpe"]
    md = json.loads((e.dir / "lmforge.json").read_text())
    assert md["gguf"] == {"supported": True, "file": "model.f32.gguf", "type": "f32", "tokenizer": "exact"}
    llm = llama(e.dir / "model.f32.gguf")
    gen = Generator(e.dir, device="cpu")
    for s in STRINGS:  # llama.cpp's own byte-level BPE tokenizer, <bos> first
        assert llm.tokenize(s.encode(), add_bos=True, special=True) == gen.encode(s), s
    for prompt in PROMPTS:
        ids = gen.encode(prompt)
        n = BLOCK - len(ids)
        want = greedy_ids(gen, ids, n)
        want = want[:want.index(gen.eos) + 1] if gen.eos in want else want
        assert llama_greedy(llm, ids, len(want)) == want, prompt
        assert llm.detokenize(want).decode("utf-8", "replace") == gen.tokenizer.decode(want)  # specials skipped


def test_gguf_q8_0_top1_agreement_is_reported(exports, tmp_path, record_property):
    from lmforge.export.gguf import write_gguf
    from lmforge.export.tokenizer import export_tokenizer
    from lmforge.models import model_spec

    e = exports["bpe"]
    md = json.loads((e.dir / "lmforge.json").read_text())
    path = tmp_path / "model.q8_0.gguf"
    record = write_gguf(e.model, model_spec(e.model), md, export_tokenizer(e.dir / "tokenizer.json", BLOCK), path,
                        "q8_0")
    assert record["type"] == "q8_0" and path.stat().st_size < (e.dir / "model.f32.gguf").stat().st_size / 2
    llm = llama(path, logits_all=True)
    agree = []
    for start in range(0, len(e.val) - BLOCK, len(e.val) // 6)[:5]:  # teacher-forced val windows
        window = e.val[start:start + BLOCK].tolist()
        llm.reset()
        llm.eval(window)
        got = np.array(llm.scores[:len(window)]).argmax(-1)
        with torch.no_grad():
            ref = e.model(torch.tensor([window]))[0][0].argmax(-1).numpy()
        agree.append(float((got == ref).mean()))
    agreement = float(np.mean(agree))
    record_property("gguf_q8_0_top1_agreement", agreement)
    print(f"GGUF q8_0 top-1 agreement with torch fp32 on {len(agree)} val windows: {agreement:.3f}")
    assert agreement >= 0.9


def test_gguf_char_vocabulary_in_llama_cpp(exports):
    e = exports["char"]
    md = json.loads((e.dir / "lmforge.json").read_text())
    assert md["gguf"]["tokenizer"] == "exact-known-characters"
    llm = llama(e.dir / "model.f32.gguf")
    gen = Generator(e.dir, device="cpu")
    for s in ["Why did the chicken", "A programmer <eos>"]:  # greedy longest match over one-character tokens
        assert [gen.bos] + llm.tokenize(s.encode(), add_bos=False, special=False) == gen.encode(s), s
    ids = gen.encode("Why")
    want = greedy_ids(gen, ids, 20)
    want = want[:want.index(gen.eos) + 1] if gen.eos in want else want
    assert llama_greedy(llm, ids, len(want)) == want


# -- what the formats cannot hold --------------------------------------------------------------------------------
def test_q8_0_refuses_a_row_size_it_cannot_block_in_one_line(tmp_path):
    from lmforge.core.config import ModelConfig
    from lmforge.models import build_model

    tok = build_tokenizer("char", ["why did the chicken cross the road"])
    tok.save(str(tmp_path / "tokenizer.json"))
    model = build_model(ModelConfig(family="gpt", n_layer=1, n_head=2, n_embd=48, block_size=16),
                        tok.get_vocab_size(), seed=0)
    with pytest.raises(LmforgeError) as info:
        export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "m", manifest(tok, "char"),
                         ExportConfig(int8=False, optimize=False, gguf="q8_0"))
    assert "n_embd is 48" in str(info.value) and "\n" not in str(info.value) and info.value.hint
    assert not (tmp_path / "m").exists()  # nothing half-written
    odd = build_model(ModelConfig(family="gpt", n_layer=1, n_head=2, n_embd=24, block_size=16),
                      tok.get_vocab_size(), seed=0)
    with pytest.raises(LmforgeError, match="head_dim 12 .* multiple of 8"):  # the fast graph's heads, before any file
        export_model_dir(odd, tmp_path / "tokenizer.json", tmp_path / "m", manifest(tok, "char"))
    assert not (tmp_path / "m").exists()


def test_recurrent_models_say_why_they_have_neither(tmp_path):
    from lmforge.core.config import ModelConfig
    from lmforge.export.hf import RNN_REASON
    from lmforge.models import build_model

    tok = build_tokenizer("char", ["why did the chicken cross the road"])
    tok.save(str(tmp_path / "tokenizer.json"))
    model = build_model(ModelConfig(family="gru", n_layer=1, n_embd=16, n_hidden=16, block_size=16),
                        tok.get_vocab_size(), seed=0)
    out, _ = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "m", manifest(tok, "char"),
                              ExportConfig(int8=False, optimize=False))
    md = json.loads((out / "lmforge.json").read_text())
    assert md["hf"] == md["gguf"] == {"supported": False, "reason": RNN_REASON}
    assert not (out / "hf").exists() and not list(out.glob("*.gguf"))
    cli = subprocess.run([sys.executable, "-m", "lmforge.cli", "export-hf", str(out), str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert cli.returncode == 2 and cli.stderr.startswith("error: ") and cli.stderr.count("\n") == 1
    assert "LSTM/GRU" in cli.stderr


def test_export_hf_command_copies_the_folder_and_writes_another_gguf(exports, tmp_path):
    e = exports["bpe"]
    out = tmp_path / "out"
    cli = subprocess.run([sys.executable, "-m", "lmforge.cli", "export-hf", str(e.dir), str(out), "--gguf", "q8_0"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (out / "model.safetensors").read_bytes() == (e.hf / "model.safetensors").read_bytes()
    assert (out / "model.q8_0.gguf").is_file()
    m = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert m.config.vocab_size == json.loads((e.dir / "lmforge.json").read_text())["model"]["vocab_size"]


# -- docs/model-format.md's examples -----------------------------------------------------------------------------
def test_model_format_examples_run(exports):
    from test_model_format import run_example

    e = exports["bpe"]
    want = Generator(e.dir, device="cpu").generate("Why", max_new_tokens=20, temperature=0)
    assert run_example("Python: transformers", e.dir)["text"] == want
    pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is in the test extra")
    assert run_example("Python: optimum", e.dir)["text"] == want
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is in the test extra")
    assert run_example("Python: llama-cpp-python", e.dir)["text"] == want
