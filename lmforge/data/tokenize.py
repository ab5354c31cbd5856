"""Tokenizers, all stored in Hugging Face `tokenizers` format (tokenizer.json) so the torch-free runtime loads
them: char (code points), word (words and punctuation with their leading space, <unk> for unseen), byte-level
BPE trained on the corpus, and a pretrained GPT-2 tokenizer read from a local directory."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import LmforgeError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
GPT2_EOT = "<|endoftext|>"
WORD_PATTERN = r" ?[^\W\d_]+| ?\d| ?[^\w\s]|\s+"


def _with_specials(vocab: Iterable[str]) -> dict[str, int]:
    out = {tok: i for i, tok in enumerate(SPECIALS)}
    for tok in vocab:
        out.setdefault(tok, len(out))
    return out


def _level_tokenizer(vocab: dict[str, int], pattern: str) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    return tok


def train_char(docs: Iterable[str]) -> Tokenizer:
    chars: set[str] = set()
    for d in docs:
        chars.update(d)
    return _level_tokenizer(_with_specials(sorted(chars)), r"[\s\S]")


def train_word(docs: Iterable[str], min_frequency: int = 1) -> Tokenizer:
    split = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    counts = Counter(w for d in docs for w, _ in split.pre_tokenize_str(d))
    words = sorted(w for w, c in counts.items() if c >= min_frequency)
    return _level_tokenizer(_with_specials(words), WORD_PATTERN)


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
    raise LmforgeError(f"no GPT-2 tokenizer in {directory}",
                       hint="--set tokenizer.path=DIR holding tokenizer.json or vocab.json + merges.txt")


def build_tokenizer(kind: str, docs: list[str], vocab_size: int = 8192, min_frequency: int = 1,
                    path: str = "") -> Tokenizer:
    if kind == "char":
        return train_char(docs)
    if kind == "word":
        return train_word(docs, min_frequency)
    if kind == "bpe":
        return train_bpe(docs, vocab_size, max(min_frequency, 2))
    if kind == "gpt2":
        return load_gpt2(path)
    raise LmforgeError(f"unknown tokenizer kind {kind!r}", hint="tokenizer.kind is one of char, word, bpe, gpt2")


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


def encode_documents(tok: Tokenizer, docs: list[str], batch: int = 1024) -> Iterator[np.ndarray]:
    """Yield each document's ids framed as [bos] + ids + [eos], in batches to bound memory."""
    ids = special_ids(tok)
    frame_start = [ids["bos"]] if ids["bos"] is not None else []
    frame_end = [ids["eos"]] if ids["eos"] is not None else []
    for i in range(0, len(docs), batch):
        for enc in tok.encode_batch(docs[i:i + batch], add_special_tokens=False):
            yield np.asarray(frame_start + enc.ids + frame_end, dtype=np.int64)
