"""Tokenizers, all stored in Hugging Face `tokenizers` format (tokenizer.json) so the torch-free runtime loads
them: char (code points), word (words, digits and punctuation with their leading space, <unk> for unseen),
byte-level BPE trained on the corpus, and a pretrained GPT-2 tokenizer read from a local directory.
Every trained kind reserves ids 0-3 for <pad> <unk> <bos> <eos> (special tokens: skipped when decoding).
Every kind's post-processor puts <bos> (GPT-2's: <|endoftext|>) before an encoded text, as Hugging Face
tokenizers do with their special tokens, so `encode(text)` in `tokenizers`, `transformers`, onnxruntime-genai and
the browser gives what the model was trained on (each document framed [bos] + ids + [eos]); the data pipeline
encodes with add_special_tokens=False and frames documents itself.

What round-trips (decode(encode(s), skip_special_tokens=False) == s):
  char: s with every character absent from the vocabulary replaced by "<unk>";
  word: s with every piece (word, digit, punctuation mark, whitespace run) absent from the vocabulary
        replaced by "<unk>";
  bpe/gpt2: any string (byte-level: every byte has a token)."""
from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.core.errors import LmforgeError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
GPT2_EOT = "<|endoftext|>"
WORD_PATTERN = r" ?[^\W\d_]+| ?\d| ?[^\w\s]|\s+"
CHAR_PATTERN = r"[\s\S]"
MAX_CODE_POINT = 0x10FFFF


def _level_tokenizer(tokens: Iterable[str], pattern: str) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for tok in tokens:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    return tok


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def train_char(docs: Iterable[str]) -> Tokenizer:
    """One token per code point seen in docs, in code point order after the four specials."""
    seen = np.zeros(MAX_CODE_POINT + 1, dtype=bool)
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) >= 4096:
            seen[code_points("".join(batch))] = True
            batch = []
    seen[code_points("".join(batch))] = True
    return _level_tokenizer((chr(c) for c in np.flatnonzero(seen)), CHAR_PATTERN)


def train_word(docs: Iterable[str], min_frequency: int = 1) -> Tokenizer:
    """Every piece seen at least min_frequency times, most frequent first (Rust trainer, deterministic)."""
    tok = _level_tokenizer([], WORD_PATTERN)
    trainer = trainers.WordLevelTrainer(vocab_size=1 << 30, min_frequency=max(min_frequency, 1),
                                        special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def train_bpe(docs: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def load_gpt2(directory: str) -> Tokenizer:
    root = Path(directory)
    if (root / "tokenizer.json").is_file():
        return load_tokenizer(root / "tokenizer.json")
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        tok = Tokenizer(models.BPE.from_file(str(root / "vocab.json"), str(root / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([GPT2_EOT])
        return tok
    raise LmforgeError(f"no GPT-2 tokenizer in {directory or '(tokenizer.path not set)'}",
                       hint="--set tokenizer.path=DIR holding tokenizer.json or vocab.json + merges.txt")


def build_tokenizer(kind: str, docs: Iterable[str], vocab_size: int = 8192, min_frequency: int = 1,
                    path: str = "") -> Tokenizer:
    """Train (char, word, bpe) on docs, which may be a lazy iterable, or load (gpt2); its post-processor puts
    <bos> first (with_bos)."""
    if kind == "char":
        return with_bos(train_char(docs))
    if kind == "word":
        return with_bos(train_word(docs, min_frequency))
    if kind == "bpe":
        if vocab_size < 256 + len(SPECIALS):
            raise LmforgeError(f"tokenizer.vocab_size {vocab_size} is below the 260 byte-level BPE needs",
                               hint="--set tokenizer.vocab_size=8192")
        return with_bos(train_bpe(docs, vocab_size, max(min_frequency, 2)))
    if kind == "gpt2":
        return with_bos(load_gpt2(path))
    raise LmforgeError(f"unknown tokenizer kind {kind!r}", hint="tokenizer.kind is one of char, word, bpe, gpt2")


def with_bos(tok: Tokenizer) -> Tokenizer:
    """`tok` whose post-processor puts its bos token (special_ids) before every encoded text; unchanged when it has
    no bos token or its post-processor already adds special tokens."""
    bos = special_ids(tok)["bos"]
    if bos is None or tok.num_special_tokens_to_add(False) > 0:
        return tok
    return set_bos(tok, bos)


def set_bos(tok: Tokenizer, bos: int | None) -> Tokenizer:
    """A copy of `tok` whose post-processor puts token `bos` before every encoded text (None: adds nothing),
    after any post-processor it has that adds no tokens (GPT-2's ByteLevel offsets)."""
    data = json.loads(tok.to_str())
    old = data.get("post_processor")
    steps = old["processors"] if old and old["type"] == "Sequence" else [old] if old else []
    steps = [p for p in steps if p["type"] != "TemplateProcessing"]
    if bos is not None:
        content = tok.id_to_token(bos)
        special = {"SpecialToken": {"id": content, "type_id": 0}}
        steps.append({"type": "TemplateProcessing",
                      "single": [special, {"Sequence": {"id": "A", "type_id": 0}}],
                      "pair": [special, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                      "special_tokens": {content: {"id": content, "ids": [bos], "tokens": [content]}}})
    data["post_processor"] = None if not steps else steps[0] if len(steps) == 1 else {"type": "Sequence",
                                                                                      "processors": steps}
    return Tokenizer.from_str(json.dumps(data))


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on malformed JSON
        raise LmforgeError(f"cannot read tokenizer {path}: {str(exc).splitlines()[0][:200]}",
                           hint="re-export the model directory; the tokenizer file is corrupted") from None


def special_ids(tok: Tokenizer) -> dict[str, int | None]:
    """pad/unk/bos/eos ids; a GPT-2 tokenizer uses <|endoftext|> for all but unk."""
    eot = tok.token_to_id(GPT2_EOT)
    get = tok.token_to_id
    return {
        "pad": get(PAD) if get(PAD) is not None else eot,
        "unk": get(UNK),
        "bos": get(BOS) if get(BOS) is not None else eot,
        "eos": get(EOS) if get(EOS) is not None else eot,
    }


class CharLookup:
    """Encodes with a char tokenizer through a numpy code point -> id table: the same ids as
    `tok.encode(text, add_special_tokens=False)` (tested), ~20x faster. Text that contains a special token
    literally ("<eos>"), which `tokenizers` matches as one token, goes through `tokenizers` instead."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        vocab = {t: i for t, i in tok.get_vocab().items() if len(t) == 1}
        unk = tok.token_to_id(UNK)
        self.table = np.full(max(max(map(ord, vocab), default=0) + 2, 128), unk, dtype=np.uint32)
        for t, i in vocab.items():
            self.table[ord(t)] = i

    @staticmethod
    def applies(tok: Tokenizer) -> bool:
        pre = tok.to_str()
        return CHAR_PATTERN.replace("\\", "\\\\") in pre and '"WordLevel"' in pre

    def encode(self, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all docs concatenated, ids per doc)."""
        text = "".join(docs)
        if "<" in text and any(s in text for s in SPECIALS):
            return encode_with_tokenizer(self.tok, docs)
        if text.isascii():
            ids = self.table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        else:
            ids = self.table[np.minimum(code_points(text), self.table.size - 1)]
        return ids, np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))


def encode_with_tokenizer(tok: Tokenizer, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lists = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.fromiter(chain.from_iterable(lists), dtype=np.uint32, count=int(lens.sum())), lens


def frame(ids: np.ndarray, lens: np.ndarray, bos: int | None, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Wrap every document as [bos] + ids + [eos]; returns (framed ids, framed length per document)."""
    specials = [i for i in (bos, eos) if i is not None]
    framed_lens = lens + len(specials)
    out = np.empty(ids.size + len(specials) * lens.size, dtype=np.uint32)
    starts = np.cumsum(framed_lens) - framed_lens
    content = np.ones(out.size, dtype=bool)
    if bos is not None:
        out[starts] = bos
        content[starts] = False
    if eos is not None:
        out[starts + framed_lens - 1] = eos
        content[starts + framed_lens - 1] = False
    out[content] = ids
    return out, framed_lens


def plain_encoder(tok: Tokenizer) -> Callable[[list[str]], tuple[np.ndarray, np.ndarray]]:
    """texts -> (ids of all texts concatenated, ids per text), unframed: the numpy lookup for a char tokenizer,
    `tokenizers` otherwise. Build it once per stream (the char table is built here)."""
    if CharLookup.applies(tok):
        return CharLookup(tok).encode
    return lambda texts: encode_with_tokenizer(tok, texts)


def encode_batches(tok: Tokenizer, batches: Iterable[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per batch of documents: (framed ids of all documents, framed length per document)."""
    ids = special_ids(tok)
    encode = plain_encoder(tok)
    for docs in batches:
        yield frame(*encode(docs), ids["bos"], ids["eos"])
