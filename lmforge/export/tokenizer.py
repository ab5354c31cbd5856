"""The exported tokenizer: one tokenizer.json that every consumer reads and encodes alike (lmforge's runtime and
`tokenizers`, `transformers`, onnxruntime-genai's tokenizer, the browser page), and the tokenizer_config.json
that `transformers` and onnxruntime-genai read beside it.

- Its post-processor puts <bos> first (lmforge.data.tokenize.set_bos with lmforge.json `tokens`, also for a
  tokenizer prepared before it had one), so `encode(text)` gives what the model was trained on.
- A char tokenizer is written as a BPE with no merges over the same ids: a character vocabulary is exactly that
  (each character its own symbol, an unseen one <unk>), spaces spelled "▁" as SentencePiece-converted
  tokenizers do (a normalizer maps " " to "▁" and a literal "▁" to a character outside the vocabulary, so
  it stays <unk>), because onnxruntime-genai's tokenizer (onnxruntime-extensions) reads BPE models only. The
  conversion is checked: both encode every character of the vocabulary, and a test text, to the same ids.
- A word tokenizer stays WordLevel: onnxruntime-extensions reads BPE and Unigram models only, and neither can
  hold a word vocabulary with the same ids: a word missing from it would fall back to its characters (the
  vocabulary's one-letter words) instead of one <unk>, and rebuilding each word from its characters takes merge
  intermediates that are not token ids of the model (WORD_REASON).
- bpe and gpt2 are byte-level BPE already."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers

from lmforge.data.tokenize import CHAR_PATTERN, load_tokenizer, set_bos, special_ids, with_bos

SPACE = "\u2581"  # "▁", SentencePiece's space
# characters a literal "▁" is mapped to (the first one outside the vocabulary), so it encodes as <unk>
NON_CHARACTERS = ("\ufffe", "\uffff", "\U0010fffe", "\U0010ffff", "\ufdd0", "\ufdd1")
CHECK_TEXT = "Why did the chicken cross the road?\n  To get to the other side! 123 caf\u00e9 \u65e5\u672c <eos>x\t\u2581"
WORD_REASON = ("onnxruntime-genai's tokenizer (onnxruntime-extensions) reads BPE and Unigram tokenizer.json models "
               "only, and neither holds a word vocabulary with its ids: a word outside the vocabulary would fall "
               "back to its characters, not one <unk>, and rebuilding words from characters needs merge "
               "intermediates that are not token ids of this model. Encode with tokenizer.json through "
               "`tokenizers` (encode(text).ids puts <bos> first) and pass the ids to Generator.append_tokens")
UNSEEN_NOTE = ("onnxruntime-extensions has no <unk> fallback: a character outside the vocabulary encodes to -1 "
               "per UTF-8 byte there (tokenizers and transformers give <unk>); decode is exact")


@dataclass(frozen=True)
class ExportedTokenizer:
    tokenizer: Tokenizer    # what tokenizer.json holds
    form: str               # "char-bpe" (a char vocabulary as a BPE), "wordlevel" or "byte-bpe"
    config: dict            # tokenizer_config.json for transformers (and onnxruntime-genai where it reads it)

    @property
    def genai_readable(self) -> bool:
        return self.form != "wordlevel"

    def save(self, directory: Path, with_config: bool = True) -> None:
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))
        if with_config:
            (Path(directory) / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2) + "\n",
                                                                   encoding="utf-8")


def is_char_tokenizer(tok: Tokenizer) -> bool:
    pre = json.loads(tok.to_str())
    split = pre.get("pre_tokenizer") or {}
    return pre["model"]["type"] == "WordLevel" and (split.get("pattern") or {}).get("Regex") == CHAR_PATTERN


def char_as_bpe(tok: Tokenizer) -> Tokenizer | None:
    """The char tokenizer `tok` as a BPE with no merges (same ids, same encodings; see the module docstring), or
    None when its vocabulary holds "▁" itself or the check fails."""
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    vocab = tok.get_vocab()
    plain = [t for t in vocab if t not in specials]
    if SPACE in vocab:
        return None
    stand_in = next(c for c in NON_CHARACTERS if c not in vocab)
    bpe = Tokenizer(models.BPE(vocab={t if t in specials else t.replace(" ", SPACE): i for t, i in vocab.items()},
                               merges=[], unk_token=tok.id_to_token(special_ids(tok)["unk"])))
    bpe.normalizer = normalizers.Sequence([normalizers.Replace(SPACE, stand_in), normalizers.Replace(" ", SPACE)])
    bpe.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse()])
    added = sorted(tok.get_added_tokens_decoder().items())
    bpe.add_special_tokens([t for _, t in added if t.special])
    bpe.add_tokens([t for _, t in added if not t.special])
    bpe.post_processor = tok.post_processor
    texts = [CHECK_TEXT, "".join(sorted(plain)), " ".join(plain)]
    same = all(bpe.encode(t).ids == tok.encode(t).ids and bpe.decode(tok.encode(t).ids) == tok.decode(tok.encode(t).ids)
               for t in texts)
    return bpe if same and len(bpe.get_vocab()) == len(vocab) else None


def hf_tokenizer_config(tok: Tokenizer, block_size: int, tokens: dict | None = None) -> dict:
    """tokenizer_config.json: the generic PreTrainedTokenizerFast over tokenizer.json (no custom code, every
    kind), its special tokens by name, <bos> added on encode as the post-processor does (transformers reads the
    post-processor; onnxruntime-genai add_bos_token, with update_options(add_special_tokens="true"))."""
    ids = tokens or special_ids(tok)
    named = {f"{k}_token": tok.id_to_token(v) for k, v in ids.items() if v is not None}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **named, "add_bos_token": ids.get("bos") is not None,
            "add_eos_token": False, "clean_up_tokenization_spaces": False, "model_max_length": int(block_size),
            # not token_type_ids: GPT-2 adds their embeddings (wte rows) to the input when it is given them
            "model_input_names": ["input_ids", "attention_mask"]}


def export_tokenizer(tokenizer_file: Path, block_size: int, tokens: dict | None = None) -> ExportedTokenizer:
    """The tokenizer to write into an exported directory, from the prepared data's tokenizer.json; its
    post-processor puts `tokens["bos"]` first (lmforge.json `tokens`, what the model was trained with; without
    `tokens`, the tokenizer's own <bos>)."""
    tok = load_tokenizer(Path(tokenizer_file))
    tok = with_bos(tok) if tokens is None else set_bos(tok, tokens.get("bos"))
    data = json.loads(tok.to_str())
    form = "byte-bpe"
    if is_char_tokenizer(tok):
        converted = char_as_bpe(tok)
        tok, form = (converted, "char-bpe") if converted is not None else (tok, "wordlevel")
    elif data["model"]["type"] != "BPE":
        form = "wordlevel"
    elif data.get("pre_tokenizer") is None and data.get("normalizer") is not None:
        form = "char-bpe"  # already written by char_as_bpe (an exported directory's tokenizer.json)
    return ExportedTokenizer(tok, form, hf_tokenizer_config(tok, block_size, tokens))
