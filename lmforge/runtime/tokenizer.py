"""The model's tokenizer (Hugging Face `tokenizers`, a Rust library) behind one guard. Whoever writes a model
directory writes its tokenizer.json, and a Rust failure in it is not always a Python exception: a normaliser with
a catastrophic regex makes the regex engine give up, and `tokenizers` turns that into a Rust panic, raised in
Python as pyo3's PanicException, a BaseException that an app's `except Exception` lets through. Every call the
runtime makes into the tokenizer goes through `guarded`, which turns any such failure into a ModelDirError."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from lmforge.runtime.errors import ModelDirError

PROBE = "Hello, world! 0123 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.\n\tcafé naïve 😀 مرحبا"  # decoded at load, once


def guarded(fn, *args, what: str = "the tokenizer", **kwargs):
    """fn(*args, **kwargs); a failure of the Rust library, a panic included, is a ModelDirError naming `what`."""
    try:
        return fn(*args, **kwargs)
    except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError, ModelDirError):
        raise
    except BaseException as exc:  # noqa: BLE001 - PanicException derives from BaseException, not Exception
        first = (str(exc).splitlines() or [""])[0][:160]
        raise ModelDirError(f"{what} failed ({type(exc).__name__}: {first})",
                            hint="re-export the model with `lmforge run`; its tokenizer.json may have been "
                                 "tampered with") from None


class SafeTokenizer:
    """encode/decode of a loaded Tokenizer, each guarded (Generator.encode's and the load checks' calls)."""

    def __init__(self, tokenizer: Tokenizer, name: str):
        self.tokenizer, self.name = tokenizer, name

    def encode(self, text: str, **kwargs):
        return guarded(self.tokenizer.encode, text, what=f"the tokenizer {self.name} encoding text", **kwargs)

    def decode(self, ids: list[int], **kwargs) -> str:
        return guarded(self.tokenizer.decode, ids, what=f"the tokenizer {self.name} decoding ids", **kwargs)


def load_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """tokenizer.json, checked: it loads, every id it can produce is below the graph's vocabulary `vocab_size`,
    and it encodes and decodes a probe text."""
    try:
        tok = Tokenizer.from_file(str(path))
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - malformed JSON is a plain Exception; a panic a BaseException
        raise ModelDirError(f"cannot read tokenizer {path}: {(str(exc).splitlines() or [''])[0][:160]}",
                            hint=f"{path.name} must be a Hugging Face `tokenizers` JSON file: copy the model "
                                 "directory again, or re-export it with `lmforge run`") from None
    ids = guarded(tok.get_vocab, with_added_tokens=True, what=f"reading {path.name}").values()
    top = max(ids, default=-1)
    if top >= vocab_size or tok.get_vocab_size() > vocab_size:
        raise ModelDirError(f"tokenizer has {max(tok.get_vocab_size(), top + 1)} tokens but the model only "
                            f"{vocab_size}: the tokenizer does not belong to this model",
                            hint=f"put back the {path.name} exported with this model: `lmforge run` writes both into "
                                 "one model/ directory")
    safe = SafeTokenizer(tok, path.name)
    probe = safe.encode(PROBE, add_special_tokens=False).ids
    if any(not 0 <= i < vocab_size for i in probe):
        raise ModelDirError(f"tokenizer {path} gives ids outside the model's vocabulary of {vocab_size}",
                            hint=f"put back the {path.name} exported with this model, or re-export it with "
                                 "`lmforge run`")
    safe.decode(probe)
    return tok
