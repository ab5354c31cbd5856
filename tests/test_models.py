"""Model families against their ONNX exports: prefill + cached decode parity, greedy agreement, the exported
rnn directory through the runtime Generator, and the GPT-2 checkpoint import against transformers itself."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lmforge.core.config import ModelConfig
from lmforge.core.errors import LmforgeError
from lmforge.export.modeldir import export_model_dir, export_onnx, io_spec
from lmforge.models import build_model, model_spec

VOCAB = 61
TEXT = ["the cat sat on the mat.", "a dog ran far away!", "why did the chicken cross the road?"] * 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny_gpt2(d):
    """A tiny random GPT-2 checkpoint with its own byte-level BPE tokenizer, saved like a real one."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok.save(str(d / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=eot, eos_token_id=eot)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def tiny(family: str, gpt2_dir=None) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, n_layer=2, n_head=2, n_embd=32, n_hidden=48, block_size=64,
                      pretrained=str(gpt2_dir or ""))
    return build_model(cfg, VOCAB).eval()


@pytest.fixture(scope="module", params=["gpt", "lstm", "gru", "hf-gpt2"])
def exported(request, tmp_path_factory):
    gpt2 = request.getfixturevalue("gpt2_dir") if request.param == "hf-gpt2" else None
    model = tiny(request.param, gpt2)
    spec = model_spec(model)
    path = export_onnx(model, spec, tmp_path_factory.mktemp(request.param) / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # tiny graphs: thread spin-up costs more than it saves
    return model, spec, ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch,prompt_len", [(1, 1), (1, 7), (3, 1), (3, 7)])
def test_onnx_matches_torch_over_prefill_and_20_cached_steps(exported, batch, prompt_len):
    model, spec, sess = exported
    io = io_spec(spec)
    rnn = io["state"][0]["kind"] == "rnn"
    if rnn:
        state_np = [np.zeros((spec["n_layer"], batch, spec["n_hidden"]), np.float32) for _ in io["state"]]
    else:
        state_np = [np.zeros((batch, spec["n_head"], 0, spec["head_dim"]), np.float32) for _ in io["state"]]
    ids = torch.randint(0, spec["vocab_size"], (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    state_t, total = None, 0
    torch_tokens, onnx_tokens = [], []
    with torch.no_grad():
        for _ in range(21):
            T = ids.shape[1]
            feeds = {"input_ids": ids.numpy()}
            if rnn:
                ref, state_t = model(ids, state_t)
            else:
                pos = torch.arange(total, total + T).unsqueeze(0).expand(batch, T)
                mask = torch.ones(batch, total + T, dtype=torch.int64)
                ref, state_t = model(ids, state_t, pos, mask)
                feeds |= {"position_ids": pos.numpy().copy(), "attention_mask": mask.numpy()}
            out = sess.run(None, {**feeds, **{s["input"]: a for s, a in zip(io["state"], state_np)}})
            np.testing.assert_allclose(out[0], ref.numpy(), atol=1e-4, rtol=0)
            state_np, total = out[1:], total + T
            torch_tokens.append(ref[:, -1].argmax(-1).tolist())
            onnx_tokens.append(out[0][:, -1].argmax(-1).tolist())
            ids = torch.tensor(onnx_tokens[-1]).unsqueeze(1)
    assert onnx_tokens == torch_tokens


def test_rnn_is_teacher_forced_on_every_position():
    """A window's logits at position t depend only on tokens <= t and equal the step-by-step recurrence."""
    for family in ("lstm", "gru"):
        model = tiny(family)
        ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            full, _ = model(ids)
            state, steps = None, []
            for t in range(ids.shape[1]):
                logits, state = model(ids[:, t:t + 1], state)
                steps.append(logits)
        assert full.shape == (2, 9, VOCAB)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        assert model_spec(model)["family"] == family and model.cfg.n_hidden == 48


def test_exported_rnn_directory_generates_like_torch(tmp_path):
    from lmforge.data.tokenize import special_ids, train_char
    from lmforge.runtime import Generator

    tok = train_char(TEXT)
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="lstm", n_layer=2, n_embd=16, n_hidden=32, block_size=8),
                        tok.get_vocab_size()).eval()
    manifest = {"name": "t", "tokenizer": {"kind": "char", "file": "tokenizer.json"}, "tokens": special_ids(tok),
                "generation": {"temperature": 0.0, "max_new_tokens": 20}}
    out, metrics = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "model", manifest)
    assert metrics["onnx_parity_max_abs"] <= 1e-4
    gen = Generator(out)
    prompt = "the cat"
    ids = gen.encode(prompt)
    # torch greedy reference, 20 tokens: longer than block_size (8), which a recurrent state does not limit
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
        expected = []
        for _ in range(20):
            nxt = int(logits[0, -1].argmax())
            expected.append(nxt)
            logits, state = model(torch.tensor([[nxt]]), state)
    eos = special_ids(tok)["eos"]
    expected = expected[:expected.index(eos)] if eos in expected else expected
    assert gen.generate(prompt, max_new_tokens=20, temperature=0) == tok.decode(expected)
    # rows of different lengths in one batch match each row alone (no padding enters the state)
    batch = gen.generate(["the cat", "a", "why did the"], max_new_tokens=12, temperature=0)
    assert batch == [gen.generate(p, max_new_tokens=12, temperature=0) for p in ["the cat", "a", "why did the"]]
    assert isinstance(Generator(out, variant="int8").generate("a", max_new_tokens=5, seed=1), str)


def test_hf_gpt2_import_matches_transformers(gpt2_dir):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(gpt2_dir)).eval()
    ours = tiny("hf-gpt2", gpt2_dir)
    assert model_spec(ours)["family"] == "hf-gpt2" and ours.cfg.vocab_size == hf.config.vocab_size
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf(ids, use_cache=True)
        logits, state = ours(ids)
        torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
        nxt = ids[:, -1:]
        full = hf(torch.cat([ids, nxt], 1)).logits[:, -1:]
        step, _ = ours(nxt, state)
        torch.testing.assert_close(step, full, atol=1e-4, rtol=0)


def test_hf_gpt2_needs_a_checkpoint(tmp_path):
    with pytest.raises(LmforgeError, match="no GPT-2 checkpoint") as info:
        build_model(ModelConfig(family="hf-gpt2", pretrained=str(tmp_path)), 10)
    assert "model.pretrained" in info.value.hint


def test_hf_gpt2_rejects_a_larger_tokenizer(gpt2_dir):
    with pytest.raises(LmforgeError, match="tokenizer has 100000 tokens"):
        build_model(ModelConfig(family="hf-gpt2", pretrained=str(gpt2_dir)), 100_000)


def test_hf_gpt2_training_context_must_fit_the_checkpoint(gpt2_dir):
    with pytest.raises(LmforgeError, match="exceeds the checkpoint's 64 positions"):
        build_model(ModelConfig(family="hf-gpt2", pretrained=str(gpt2_dir), block_size=128), 100)


def test_a_training_sample_is_never_empty():
    """The sample logged at each evaluation: a model that would end at once (<eos> first) still says something."""
    import torch

    from lmforge.training.evaluate import sample_text

    class EndsAtOnce(torch.nn.Module):
        def forward(self, ids, state=None):
            logits = torch.zeros(ids.shape[0], ids.shape[1], 5)
            logits[..., 3] = 50.0  # <eos>
            logits[..., 1] = 10.0
            return logits, None

    model = EndsAtOnce()
    model.dummy = torch.nn.Parameter(torch.zeros(1))  # a device to read
    assert sample_text(model, [2], 10, 8, eos=3) == [1]  # one token, then <eos>
