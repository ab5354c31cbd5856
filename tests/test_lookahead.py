"""Prompt-lookup speculation (lmforge.runtime.lookahead, KVBuffers.extend, runtime.batch): a greedy row's tokens,
text, events and finish are exactly those of one graph call per token, with lookahead on or off, through stream(),
generate(), stream_batch() with sampling rows beside, continuous batching, stop strings, max_new_tokens inside an
accepted run and the sliding window; and speculation really happens (fewer graph calls than tokens). On a char GPT
trained to recite a text (its greedy output repeats: the drafts are taken) and on a random one (varied output: drafts
are rejected too), fp32, fp16 and int4 fast graphs; int8 never speculates."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_random_gpt

from lmforge.core.config import ExportConfig, TrainConfig
from lmforge.data.tokenize import train_char
from lmforge.export.modeldir import export_model_dir
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.runtime import Generator, ModelDirError, RequestError, RowRequest
from lmforge.runtime.lookahead import Lookup
from lmforge.training.train import train

TEXT = ("to be or not to be, that is the question: whether tis nobler in the mind to suffer the slings and arrows "
        "of outrageous fortune, or to take arms against a sea of troubles. ")
MANIFEST = {"name": "recite", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
            "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
PROMPTS = ["to be or", "whether tis nob", "of outrageous", "q"]


@pytest.fixture(scope="module")
def reciter(tmp_path_factory, one_torch_thread):
    """A char GPT (context 64) trained to recite TEXT, exported with every fast variant: its model dir."""
    root = tmp_path_factory.mktemp("lookahead")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    ids = np.array(tok.encode(TEXT * 40).ids, np.uint16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=64))
    train(model, ids, ids, 64, TrainConfig(max_steps=120, batch_size=16, lr=3e-3, warmup_steps=10,
                                          eval_interval=120, eval_iters=1), root / "ckpt")
    out, _ = export_model_dir(model.eval(), root / "tokenizer.json", root / "model", MANIFEST,
                              ExportConfig(optimize=False, fp16=True, int4=True))
    return out


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """A random GPT (context 32) whose greedy output is varied: drafts get rejected as well as taken."""
    root = tmp_path_factory.mktemp("lookahead-random")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    out, _ = export_model_dir(tiny_random_gpt(tok.get_vocab_size()), root / "tokenizer.json", root / "model",
                              MANIFEST, ExportConfig(optimize=False, int8=False))
    return out


def pair(model_dir, variant="fp32", k=4):
    return Generator(model_dir, variant=variant, lookahead=k), Generator(model_dir, variant=variant, lookahead=0)


def events(gen, requests):
    """Per row: (its events' texts joined, its token ids in order, its finish reason, its completion_tokens)."""
    rows = {}
    for ev in gen.stream_batch(requests):
        text, ids, _, _ = rows.get(ev.row, ("", [], None, 0))
        rows[ev.row] = (text + ev.text, ids + list(ev.token_ids), ev.finish_reason, ev.completion_tokens)
    return [rows[i] for i in range(len(requests))]


def stepped_and_extended(gen, prompt: str, width: int):
    """The logits of `width` greedy tokens after `prompt`, one call per token and in one extend() call, and the
    logits of the same call with other tokens after the first `width` (one slot, the fast graph)."""
    ids = gen.encode(prompt)
    dec = gen.decoder(1, 64)
    tokens, stepped = [int(dec.prefill_slot(0, ids).argmax())], []
    for _ in range(width - 1):
        stepped.append(dec.step(np.array([tokens[-1]]))[0].copy())
        tokens.append(int(stepped[-1].argmax()))
    stepped.append(dec.step(np.array([tokens[-1]]))[0].copy())
    dec = gen.decoder(1, 64)
    dec.prefill_slot(0, ids)
    extended = dec.extend(0, tokens).copy()
    assert dec.lengths[0] == len(ids) + width
    dec.truncate(0, len(ids))  # rollback, then the same call with junk after: the first rows must not see it
    junk = dec.extend(0, tokens + [3, 5, 7]).copy()[:width]
    return np.array(stepped), extended, junk


@pytest.mark.parametrize("variant,tolerance", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_a_verifying_call_gives_each_position_the_logits_of_one_call_per_token(reciter, variant, tolerance):
    """What makes speculation exact (docs/decode.md): in fp32 and fp16 each position's logits in one extend() call
    equal those of a call per token to the last bit of the float type (below one fp16 step of logits ~5: 4e-3),
    and the tokens after it in the call do not change them; then greedy tokens cannot differ but on an exact tie."""
    gen = Generator(reciter, variant=variant, lookahead=8)
    assert gen.lookahead == 8 and gen.max_width == 9
    for prompt in PROMPTS:
        stepped, extended, junk = stepped_and_extended(gen, prompt, gen.max_width)
        assert np.abs(extended - stepped).max() < tolerance
        assert np.abs(junk - extended).max() < tolerance


def test_int8_and_int4_never_speculate_since_a_call_changes_their_logits(reciter):
    """int8: DynamicQuantizeMatMul scales a call's activations with one scale for the whole tensor, so other tokens
    in the call change a position's logits. int4: the other tokens change nothing (MatMulNBits quantises per row
    block) but one call of several tokens gives some position logits a quantisation step away from a call per
    token. Neither speculates; their text is that of lookahead 0."""
    int8, int4 = pair(reciter, "int8", 8)[0], pair(reciter, "int4", 8)[0]
    assert int8.lookahead == int4.lookahead == 0 and not int8.speculates and not int4.speculates
    _, extended, junk = stepped_and_extended(int8, PROMPTS[0], 4)
    assert np.abs(junk - extended).max() > 1e-3
    runs = [stepped_and_extended(int4, p, 4) for p in PROMPTS]
    assert max(np.abs(j - e).max() for _, e, j in runs) < 1e-5  # row-independent ...
    assert max(np.abs(e - s).max() for s, e, _ in runs) > 1e-3  # ... but not the logits of a call per token
    off = Generator(reciter, variant="int8", lookahead=0)
    for p in PROMPTS:
        assert int8.generate(p, max_new_tokens=40) == off.generate(p, max_new_tokens=40)
        assert int8.last_stats["verify_calls"] == 0 and int8.last_stats["calls"] == 39
