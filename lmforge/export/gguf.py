"""GGUF, the file llama.cpp, llama-cpp-python, ollama and LM Studio load: a gpt / hf-gpt2 model as llama.cpp's
`gpt2` architecture, written with the `gguf` package (llama.cpp's own writer, from PyPI).

Tensors (GGUF shapes are [rows, columns] of the numpy array; llama.cpp reads them as ne0 = columns):
  token_embd.weight [vocab, n_embd]          position_embd.weight [block_size, n_embd]
  blk.{i}.attn_norm.weight/.bias [n_embd]    blk.{i}.attn_qkv.weight [3 n_embd, n_embd] (+ .bias)
  blk.{i}.attn_output.weight [n_embd, n_embd] (+ .bias)
  blk.{i}.ffn_norm.weight/.bias [n_embd]     blk.{i}.ffn_up.weight [4 n_embd, n_embd] (+ .bias)
  blk.{i}.ffn_down.weight [n_embd, 4 n_embd] (+ .bias)
  output_norm.weight/.bias [n_embd]          (no output.weight: llama.cpp ties the head to token_embd)
lmforge's Linear weights are already [out, in]; llama.cpp's gpt2 graph requires every bias, so a model without
biases gets zeros (the same computation). Types: f32 (every tensor float32), f16 (matrices float16, vectors
float32), q8_0 (matrices in 8-bit blocks of 32 along n_embd, so n_embd must be a multiple of 32; vectors float32).

The tokenizer, by kind:
  bpe, gpt2  embedded as llama.cpp's byte-level BPE (tokenizer.ggml.model "gpt2", pre-tokenizer "gpt-2": GPT-2's
             split, which lmforge's ByteLevel pre-tokenizer uses): token list, types, merges, special ids,
             add_bos_token; llama.cpp then encodes exactly as tokenizer.json does, <bos> included.
  char       embedded as llama.cpp's greedy longest-match vocabulary (tokenizer.ggml.model "rwkv", token texts
             escaped as RWKV's: \\n, \\xNN ...): with one character per token, longest match IS the char
             tokenizer, special tokens' texts included; differences: llama.cpp does not add <bos> itself (put it
             first: llama_cpp.Llama.tokenize(text.encode(), add_bos=False) after [bos]), and a character outside
             the vocabulary becomes one <unk> per UTF-8 byte there (one per character in tokenizer.json).
  word       the same greedy vocabulary, for decoding only: llama.cpp has no word-level tokenizer (its tokenizers
             are SentencePiece, byte-level BPE, WordPiece, Unigram and RWKV's greedy match; a greedy match splits
             words outside the vocabulary into shorter words instead of one <unk>), so encode with tokenizer.json
             (`tokenizers`) and give llama.cpp the ids; its detokenizer is exact.
lmforge.json `gguf` records which (`tokenizer`: "exact", "exact-known-characters" or "decode-only")."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmforge.core.errors import LmforgeError

TYPES = ("f32", "f16", "q8_0")
FILE = "model.{type}.gguf"
Q8_BLOCK = 32


def check_type(spec: dict, gguf_type: str) -> None:
    """Refuse (one line) a type this model's shape cannot be written in."""
    if gguf_type not in TYPES:
        raise LmforgeError(f"unknown GGUF type {gguf_type!r}", hint=f"one of {', '.join(TYPES)}")
    if gguf_type == "q8_0" and spec["n_embd"] % Q8_BLOCK:
        raise LmforgeError(f"q8_0 stores rows in blocks of {Q8_BLOCK}; this model's n_embd is {spec['n_embd']}",
                           hint="write f16 or f32 instead (--set export.gguf=f16), or train with model.n_embd a "
                                "multiple of 32")


def gguf_tensors(model: torch.nn.Module, spec: dict) -> dict[str, np.ndarray]:
    """llama.cpp gpt2 tensor name -> float32 array (module docstring)."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}

    def with_bias(src: str, dst: str) -> dict[str, np.ndarray]:
        w = sd[f"{src}.weight"]
        return {f"{dst}.weight": w, f"{dst}.bias": sd.get(f"{src}.bias", np.zeros(w.shape[0], np.float32))}

    out = {"token_embd.weight": sd["wte.weight"], "position_embd.weight": sd["wpe.weight"],
           **with_bias("ln_f", "output_norm")}
    for i in range(spec["n_layer"]):
        b = f"blocks.{i}"
        out.update(with_bias(f"{b}.ln_1", f"blk.{i}.attn_norm"))
        out.update(with_bias(f"{b}.attn.c_attn", f"blk.{i}.attn_qkv"))
        out.update(with_bias(f"{b}.attn.c_proj", f"blk.{i}.attn_output"))
        out.update(with_bias(f"{b}.ln_2", f"blk.{i}.ffn_norm"))
        out.update(with_bias(f"{b}.mlp.c_fc", f"blk.{i}.ffn_up"))
        out.update(with_bias(f"{b}.mlp.c_proj", f"blk.{i}.ffn_down"))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def rwkv_text(token: str) -> str:
    """A token's text escaped as llama.cpp's RWKV vocabulary stores it (Python's bytes repr without b'')."""
    return repr(token.encode("utf-8"))[2:-1]


def tokenizer_metadata(exported_tokenizer, vocab_size: int) -> tuple[dict, str]:
    """(GGUF tokenizer fields, how exactly llama.cpp tokenizes: "exact", "exact-known-characters",
    "decode-only")."""
    import gguf

    tok = exported_tokenizer.tokenizer
    added = tok.get_added_tokens_decoder()
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens, types = [], []
    byte_level = exported_tokenizer.form == "byte-bpe"
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:  # a model vocabulary larger than its tokenizer's: unreachable ids
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
            if exported_tokenizer.form == "char-bpe":
                text = text.replace("\u2581", " ")  # lmforge.export.tokenizer spells spaces "▁"
        tokens.append(text if byte_level else rwkv_text(text))
    fields = {"tokens": tokens, "types": types}
    if byte_level:
        merges = json.loads(tok.to_str())["model"].get("merges", [])
        fields["merges"] = [m if isinstance(m, str) else " ".join(m) for m in merges]
        return fields, "exact"
    return fields, "exact-known-characters" if exported_tokenizer.form == "char-bpe" else "decode-only"


def write_gguf(model: torch.nn.Module, spec: dict, manifest: dict, exported_tokenizer, path: Path,
               gguf_type: str) -> dict:
    """Write `path` (module docstring); returns lmforge.json `gguf`."""
    import gguf

    check_type(spec, gguf_type)
    tokens = manifest.get("tokens", {})
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name(str(manifest.get("name", "lmforge")))
    w.add_context_length(spec["block_size"])
    w.add_embedding_length(spec["n_embd"])
    w.add_feed_forward_length(4 * spec["n_embd"])
    w.add_block_count(spec["n_layer"])
    w.add_head_count(spec["n_head"])
    w.add_layer_norm_eps(1e-5)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    if gguf_type == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    fields, exactness = tokenizer_metadata(exported_tokenizer, spec["vocab_size"])
    w.add_tokenizer_model("gpt2" if "merges" in fields else "rwkv")
    if "merges" in fields:
        w.add_tokenizer_pre("gpt-2")
        w.add_token_merges(fields["merges"])
    w.add_token_list(fields["tokens"])
    w.add_token_types(fields["types"])
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                     ("pad", w.add_pad_token_id)):
        if tokens.get(key) is not None:
            add(int(tokens[key]))
    w.add_add_bos_token(tokens.get("bos") is not None)
    w.add_add_eos_token(False)
    for name, array in gguf_tensors(model, spec).items():
        if array.ndim == 2 and gguf_type == "q8_0":
            w.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif array.ndim == 2 and gguf_type == "f16":
            w.add_tensor(name, array.astype(np.float16))
        else:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"supported": True, "file": Path(path).name, "type": gguf_type, "tokenizer": exactness}
