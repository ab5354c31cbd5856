"""Tokenizers: round trips on Arabic and English, what exactly round-trips (hypothesis), <unk> handling, the
numpy char path equal to `tokenizers`, and every kind saved as a tokenizer.json that `tokenizers` alone loads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from conftest import corpus, gpt2_tokenizer_files
from lmforge.data.formats import read_documents
from lmforge.data.tokenize import (SPECIALS, UNK, CharLookup, build_tokenizer, encode_batches,
                                   encode_with_tokenizer, frame, load_gpt2, load_tokenizer, special_ids,
                                   with_bos)
from lmforge.core.errors import LmforgeError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ENGLISH = "First Citizen: Before we proceed any further, hear me speak. 42 times!"
ARABIC = "أنا أؤمن بأن الانسان ينطفئ جماله عند ابتعاد من يحب ، حتى بريق العيون يختفي"


@pytest.fixture(scope="module")
def docs() -> list[str]:
    english = read_documents(corpus("tinyshakespeare.txt"), "text")[:1500]
    arabic = read_documents(corpus("ArSenTD-LEV.tsv"), "tsv", column="Tweet", row_filter='Country == "lebanon"')
    return english + arabic[:300] + [ENGLISH, ARABIC]


@pytest.fixture(scope="module")
def saved(docs, tmp_path_factory) -> dict[str, Tokenizer]:
    """Each kind trained, saved and re-loaded by `tokenizers` alone."""
    out = {}
    root = tmp_path_factory.mktemp("tok")
    for kind in ("char", "word", "bpe"):
        path = root / f"{kind}.json"
        build_tokenizer(kind, iter(docs), vocab_size=600, min_frequency=1).save(str(path))
        out[kind] = Tokenizer.from_file(str(path))
    return out


def roundtrip(tok: Tokenizer, text: str) -> str:
    return tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_specials_reserved_and_arabic_english_round_trip(saved, kind):
    tok = saved[kind]
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2, 3]
    assert special_ids(tok) == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    for text in (ENGLISH, ARABIC, ENGLISH + "\n" + ARABIC):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert UNK not in tok.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids) == text
    assert tok.decode([2] + tok.encode(ENGLISH).ids + [3]) == ENGLISH  # specials skipped by default


def test_char_vocab_is_the_train_characters(saved, docs):
    tok = saved["char"]
    chars = set("".join(docs))
    assert tok.get_vocab_size() == len(chars) + 4
    assert roundtrip(tok, "a\u4e2dz") == "a<unk>z"


def test_word_unseen_words_become_unk_and_never_crash(saved):
    tok = saved["word"]
    assert roundtrip(tok, " Zyxwvut qwrtpsdf!") == "<unk><unk>!"
    ids = tok.encode("Florbix wuggle snarfed the plimkin " * 20).ids
    assert len(ids) > 20 and 1 in ids
    assert tok.encode("", add_special_tokens=False).ids == [] and tok.encode("").ids == [2]  # <bos> only


def test_word_min_frequency_limits_vocabulary(docs):
    rare = build_tokenizer("word", docs, min_frequency=1).get_vocab_size()
    common = build_tokenizer("word", docs, min_frequency=5).get_vocab_size()
    assert common < rare


def test_bpe_vocab_size_from_config_and_deterministic(docs):
    a = build_tokenizer("bpe", iter(docs), vocab_size=400)
    b = build_tokenizer("bpe", iter(docs), vocab_size=400)
    assert a.get_vocab_size() == 400 and a.to_str() == b.to_str()
    with pytest.raises(LmforgeError, match="vocab_size 100"):
        build_tokenizer("bpe", docs, vocab_size=100)


def test_word_and_char_training_deterministic(docs):
    for kind in ("word", "char"):
        assert build_tokenizer(kind, iter(docs)).to_str() == build_tokenizer(kind, iter(docs)).to_str()


def test_gpt2_from_local_directory(tmp_path, saved):
    byte_bpe = json.loads(saved["bpe"].to_str())
    tokens = sorted((i, t) for t, i in byte_bpe["model"]["vocab"].items() if t not in SPECIALS)
    vocab = {t: n for n, (_, t) in enumerate(tokens)}  # a GPT-2 style vocabulary: no <pad>/<bos>/<eos>
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = [" ".join(m) if isinstance(m, list) else m for m in byte_bpe["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = load_gpt2(str(tmp_path))
    eot = tok.token_to_id("<|endoftext|>")
    assert eot is not None and special_ids(tok)["eos"] == eot == special_ids(tok)["bos"]
    assert tok.decode(tok.encode(ARABIC).ids) == ARABIC
    tok.save(str(tmp_path / "tokenizer.json"))
    assert load_gpt2(str(tmp_path)).encode(ENGLISH).ids == tok.encode(ENGLISH).ids
    with pytest.raises(LmforgeError, match="no GPT-2 tokenizer"):
        load_gpt2(str(tmp_path / "nowhere"))
    with pytest.raises(LmforgeError, match="unknown tokenizer kind"):
        build_tokenizer("sentencepiece", [])


@FUZZ
@given(st.text(max_size=60))
def test_fuzz_char_round_trip_with_unk(saved, text):
    assume(not any(s in text for s in SPECIALS))
    tok = saved["char"]
    vocab = tok.get_vocab()
    assert roundtrip(tok, text) == "".join(c if c in vocab else UNK for c in text)


@FUZZ
@given(st.text(max_size=60))
def test_fuzz_bpe_round_trip_any_text(saved, text):
    assume(not any(s in text for s in SPECIALS))
    tok = saved["bpe"]
    assert roundtrip(tok, text) == text
    assert tok.decode(tok.encode(text).ids) == text


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["the", " cat", " sat", ",", " ", "\n", "أنا", " من", "42", "Qq", "_"]),
                          st.text(max_size=3)), max_size=12).map("".join))
def test_fuzz_word_round_trip_with_unk(saved, text):
    tok = saved["word"]
    vocab = tok.get_vocab()
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]
    assert "".join(pieces) == text
    assert roundtrip(tok, text) == "".join(p if p in vocab else UNK for p in pieces)


@FUZZ
@given(st.lists(st.text(max_size=20), max_size=6))
def test_fuzz_char_lookup_equals_tokenizers(saved, batch):
    tok = saved["char"]
    fast_ids, fast_lens = CharLookup(tok).encode(batch)
    ids, lens = encode_with_tokenizer(tok, batch)
    assert fast_ids.tolist() == ids.tolist() and fast_lens.tolist() == lens.tolist()


def test_char_lookup_equals_tokenizers_on_real_text(saved, docs):
    tok = saved["char"]
    assert CharLookup.applies(tok) and not CharLookup.applies(saved["word"])
    batch = docs + ["unseen \u4e2d\U0001f600 chars", "literal <eos> and <unk> tokens"]
    fast = CharLookup(tok).encode(batch)
    slow = encode_with_tokenizer(tok, batch)
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])


def test_frame_wraps_each_document_and_encode_batches(saved):
    ids, lens = frame(np.array([5, 6, 7]), np.array([2, 0, 1]), 2, 3)
    assert ids.tolist() == [2, 5, 6, 3, 2, 3, 2, 7, 3] and lens.tolist() == [4, 2, 3]
    ids, lens = frame(np.array([5, 6]), np.array([1, 1]), None, 9)
    assert ids.tolist() == [5, 9, 6, 9]
    tok = saved["word"]
    (ids, lens), = encode_batches(tok, [["the cat", "the"]])
    assert ids[0] == 2 and ids[-1] == 3 and lens.sum() == ids.size
    assert tok.decode(ids.tolist()) == "the catthe"


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "gpt2"])
def test_encode_puts_bos_first_as_the_model_was_trained(docs, kind, tmp_path):
    """Every kind's post-processor puts its <bos> (GPT-2's <|endoftext|>) first, as documents are framed for
    training; add_special_tokens=False gives the bare ids the data pipeline frames itself."""
    if kind == "gpt2":  # vocab.json + merges.txt with no lmforge specials, as GPT-2's own files
        gpt2_tokenizer_files(build_tokenizer("bpe", docs, vocab_size=300), tmp_path)
    tok = build_tokenizer(kind, docs, vocab_size=300, path=str(tmp_path))
    bos = special_ids(tok)["bos"]
    text = "why did the chicken"
    assert tok.encode(text).ids == [bos] + tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(tok.encode(text).ids) == tok.decode(tok.encode(text, add_special_tokens=False).ids)
    saved = tmp_path / "t.json"
    tok.save(str(saved))
    assert load_tokenizer(saved).encode(text).ids[0] == bos  # the file carries it
    assert with_bos(tok).to_str() == tok.to_str()  # idempotent
