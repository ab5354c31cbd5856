"""Streaming with lmforge's byte-level BPE (lmforge.data.tokenize.train_bpe), whose tokens split emoji and Arabic
letters into bytes: lmforge.runtime.detok.TextStream never emits a broken character, decodes a short tail window
per token, its pieces join to exactly the full decode, and a real U+FFFD in the text is kept. End to end, a GPT
trained to recite such a text streams it through Generator.stream."""
import numpy as np
import pytest
import torch
from conftest import torch_greedy

from lmforge.core.config import TrainConfig
from lmforge.data.tokenize import train_bpe
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.runtime import Generator
from lmforge.runtime.detok import MAX_PENDING, TextStream
from lmforge.training.train import train

TEXT = ("salaam: مرحبا بالعالم 😀🎉 and كيف حالك؟ 👍🏽 the end \ufffd then 🇯🇵 نعم. ") * 3
BROKEN = "\ufffd"


@pytest.fixture(scope="module")
def tok():
    # min_frequency high enough that many emoji stay split over several byte tokens
    return train_bpe([TEXT], vocab_size=300, min_frequency=4)


class Recording:
    """The tokenizer, recording how many ids each decode call gets (to see that only a tail is decoded)."""

    def __init__(self, tok):
        self.tok, self.sizes = tok, []

    def decode(self, ids):
        self.sizes.append(len(ids))
        return self.tok.decode(ids)


def stream_pieces(tok, ids):
    s = TextStream(tok)
    return [s.push(i) for i in ids] + [s.flush()]


def test_tokens_really_split_characters(tok):
    ids = tok.encode(TEXT).ids
    assert any(BROKEN in tok.decode([i]) for i in ids)  # some tokens are parts of a character


def test_pieces_are_whole_characters_and_join_to_the_full_decode(tok):
    ids = tok.encode(TEXT).ids
    pieces = stream_pieces(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == TEXT
    emitted = [p for p in pieces if p]
    assert len(emitted) > len(ids) // 2  # incremental, not one piece at the end
    assert sum(p.count(BROKEN) for p in emitted) == TEXT.count(BROKEN)  # only the real ones
    for p in emitted:
        assert p.encode("utf-8").decode("utf-8") == p


@pytest.mark.parametrize("cut", ["the end \ufffd", "😀", "🇯🇵", "كيف"])
def test_text_ending_in_a_real_replacement_char_or_a_multibyte_one_is_kept(tok, cut):
    text = TEXT[:TEXT.index(cut) + len(cut)]
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert "".join(stream_pieces(tok, ids)) == text


def test_only_a_tail_window_is_decoded(tok):
    ids = tok.encode(TEXT * 4).ids
    rec = Recording(tok)
    s = TextStream(rec)
    out = "".join(s.push(i) for i in ids) + s.flush()
    assert out == TEXT * 4 and len(ids) > 200
    assert max(rec.sizes) <= 2 * MAX_PENDING  # never the whole text


@pytest.fixture(scope="module")
def reciter(tok, tmp_path_factory, one_torch_thread):
    """A tiny GPT trained to recite TEXT, exported with its BPE tokenizer: (model, model dir)."""
    root = tmp_path_factory.mktemp("stream")
    tok.save(str(root / "tokenizer.json"))
    ids = np.array(tok.encode(TEXT * 20).ids, np.uint16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=64))
    train(model, ids, ids, 64, TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=10,
                                          eval_interval=150, eval_iters=1), root / "ckpt")
    manifest = {"name": "bpe", "tokenizer": {"kind": "bpe", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": None, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    out, _ = export_model_dir(model, root / "tokenizer.json", root / "model", manifest,
                              ExportConfig(optimize=False, int4=False))
    return model.eval(), out


@pytest.mark.parametrize("fast", [True, False])
def test_generator_streams_emoji_and_arabic_whole(reciter, tok, fast):
    model, out = reciter
    gen = Generator(out, fast=fast)
    prompt = "salaam: "
    ids = torch_greedy(model, gen.encode(prompt), 40)
    expected = tok.decode(ids)
    assert any("\u0600" <= c <= "\u06ff" for c in expected) and any(ord(c) > 0x1F000 for c in expected)
    pieces = list(gen.stream(prompt, max_new_tokens=40, temperature=0))
    assert "".join(pieces) == expected == gen.generate(prompt, max_new_tokens=40, temperature=0)
    assert all(BROKEN not in p or p.count(BROKEN) == expected.count(BROKEN) for p in pieces)
    assert sum(p.count(BROKEN) for p in pieces) == expected.count(BROKEN)


def test_generator_keeps_a_real_trailing_replacement_char(reciter, tok):
    model, out = reciter
    gen = Generator(out)
    prompt = "salaam: "
    room = 64 - len(gen.encode(prompt))  # inside the context: torch runs no sliding window
    ids = torch_greedy(model, gen.encode(prompt), room)
    n = next(n for n in range(1, room + 1) if tok.decode(ids[:n]).endswith("end \ufffd"))  # the memorised real one
    text = "".join(gen.stream(prompt, max_new_tokens=n, temperature=0))
    assert text == tok.decode(ids[:n]) and text.endswith(BROKEN)


# -- streaming by table look-up (lmforge.runtime.detok.piece_table) ----------------------------------------------------
def tokenizers_of_every_kind(bpe):
    """{name: tokenizer}: each kind lmforge writes (byte-level BPE, char, char as the BPE the export writes, word),
    one with a non-special added token, and one whose decoder is not a concatenation (WordPiece)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from lmforge.data.tokenize import train_char, train_word
    from lmforge.export.tokenizer import char_as_bpe

    char = train_char([TEXT])
    added = Tokenizer.from_str(bpe.to_str())
    added.add_tokens([AddedToken("<sep>", special=False), AddedToken("é!", special=False)])
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2, "c": 3}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer, wordpiece.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    return {"bpe": bpe, "char": char, "char-as-bpe": char_as_bpe(char), "word": train_word([TEXT]),
            "bpe+added": added, "wordpiece": wordpiece}


def test_piece_table_streams_exactly_the_tokenizers_pieces(tok):
    """For every tokenizer a table is made for, TextStream with it gives exactly the pieces (not only the text) of
    TextStream through the tokenizer, on random ids: bytes that never complete a character, real U+FFFD, special
    and added tokens, ids past the tokenizer's vocabulary, the end of a row. A decoder that is not a concatenation
    gets no table."""
    from lmforge.runtime.detok import piece_table

    kinds = {}
    for name, t in tokenizers_of_every_kind(tok).items():
        vocab = t.get_vocab_size() + 3  # the graph's vocabulary may be larger than the tokenizer's
        table = piece_table(t, vocab)
        kinds[name] = table and table.kind
        if table is None:
            continue
        rng = np.random.default_rng(0)
        text_ids = [i for i in t.encode(TEXT).ids if i < vocab]
        for n in range(200):
            ids = rng.integers(0, vocab, int(rng.integers(1, 40))).tolist() if n % 2 else text_ids[n:n + 60]
            slow, fast = TextStream(t), TextStream(t, table)
            assert [fast.push(i) for i in ids] + [fast.flush()] == [slow.push(i) for i in ids] + [slow.flush()], \
                (name, ids)
    assert kinds == {"bpe": "bytes", "char": "text", "char-as-bpe": "text", "word": "text", "bpe+added": "bytes",
                     "wordpiece": None}


def test_piece_table_stream_calls_no_tokenizer_on_valid_text(tok):
    """Valid UTF-8 streams by look-up alone (the tokenizer is not called once per token), and the pieces are the
    same as the tokenizer's."""
    from lmforge.runtime.detok import piece_table

    ids = tok.encode(TEXT * 4).ids
    rec = Recording(tok)
    s = TextStream(rec, piece_table(tok, tok.get_vocab_size()))
    pieces = [s.push(i) for i in ids] + [s.flush()]
    assert pieces == stream_pieces(tok, ids) and "".join(pieces) == TEXT * 4
    assert rec.sizes == []


def test_piece_table_refuses_a_tokenizer_that_does_not_decode_as_its_table(tok, monkeypatch):
    """The table is checked against the tokenizer's own decode at load: a decode that differs (here: one that
    upper-cases) gives no table, so streaming goes through the tokenizer."""
    from tokenizers import Tokenizer

    from lmforge.runtime.detok import piece_table

    class Shouting:
        def __init__(self, t):
            self.t = t

        def __getattr__(self, name):
            return getattr(self.t, name)

        def decode(self, ids, **kw):
            return self.t.decode(ids, **kw).upper()

    assert piece_table(tok, tok.get_vocab_size()) is not None
    assert piece_table(Shouting(Tokenizer.from_str(tok.to_str())), tok.get_vocab_size()) is None
