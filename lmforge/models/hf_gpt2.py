"""Fine-tune a Hugging Face GPT-2 checkpoint from a local directory. GPT-2 is the architecture of
lmforge.models.gpt with biases (pre-LayerNorm, tanh GELU, tied head), so the checkpoint's weights are copied
into that module: training, the KV cache, ONNX export and the runtime then share the gpt code path.
`transformers` (the optional extra `hf`) is only needed to read the checkpoint. Weights are read from safetensors
only: `pytorch_model.bin` is a pickle, and unpickling a file runs whatever code its author put in it."""
from __future__ import annotations

from pathlib import Path

import torch

from lmforge.core.errors import LmforgeError
from lmforge.models.gpt import GPT, GPTConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONVERT_HINT = ("convert it once, in a trusted environment: python -c \"from transformers import GPT2LMHeadModel as M; "
                "M.from_pretrained('DIR').save_pretrained('DIR', safe_serialization=True)\" (writes model.safetensors)")


class PretrainedGPT2(GPT):
    family = "hf-gpt2"


def load_pretrained(directory: str, vocab_size: int, block_size: int = 0, dropout: float = 0.0) -> PretrainedGPT2:
    """The checkpoint in `directory` as a PretrainedGPT2; vocab_size is the tokenizer's (must fit the model) and
    block_size the training context (must fit its positions)."""
    hf = _read_checkpoint(Path(directory).expanduser())
    c = hf.config
    unsupported = {"activation_function": c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"),
                   "n_inner": c.n_inner not in (None, 4 * c.n_embd),
                   "layer_norm_epsilon": abs(c.layer_norm_epsilon - 1e-5) > 1e-12,
                   "scale_attn_weights": not c.scale_attn_weights,
                   "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
                   "tie_word_embeddings": not getattr(c, "tie_word_embeddings", True)}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise LmforgeError(f"GPT-2 checkpoint in {directory} uses unsupported settings: {', '.join(bad)}",
                           hint="use a standard GPT-2 checkpoint (gelu_new, 4x MLP, tied head)")
    if vocab_size > c.vocab_size:
        raise LmforgeError(f"the tokenizer has {vocab_size} tokens but the checkpoint only {c.vocab_size}",
                           hint="use the checkpoint's own tokenizer: --set tokenizer.kind=gpt2 tokenizer.path=DIR")
    if block_size > c.n_positions:
        raise LmforgeError(f"model.block_size {block_size} exceeds the checkpoint's {c.n_positions} positions",
                           hint=f"--set model.block_size={c.n_positions}")
    model = PretrainedGPT2(GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                                     n_head=c.n_head, n_embd=c.n_embd, dropout=dropout, bias=True))
    model.load_state_dict(convert_state_dict(hf.state_dict(), c.n_layer), strict=True)
    return model


def _read_checkpoint(root: Path):
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise LmforgeError("model.family=hf-gpt2 needs the `transformers` package",
                           hint="pip install 'lmforge[hf]'") from None
    has_weights = any((root / f).is_file() for f in WEIGHT_FILES)
    pickled = [f for f in PICKLED_WEIGHTS if (root / f).is_file()]
    if (root / "config.json").is_file() and not has_weights and pickled:
        raise LmforgeError(f"{root} holds only {pickled[0]}, a pickle (loading it can run code); lmforge reads "
                           "model.safetensors only", hint=CONVERT_HINT)
    if not (root / "config.json").is_file() or not has_weights:
        raise LmforgeError(f"{root} holds no GPT-2 checkpoint (config.json and model.safetensors)",
                           hint="--set model.pretrained=DIR saved with save_pretrained() (e.g. a local gpt2 copy)")
    try:  # use_safetensors=True: transformers never falls back to the pickle, whatever else the directory holds
        return GPT2LMHeadModel.from_pretrained(str(root), local_files_only=True, use_safetensors=True).float().eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise LmforgeError(f"cannot load the GPT-2 checkpoint in {root}: {str(exc).splitlines()[0][:200]}",
                           hint="re-save it with GPT2LMHeadModel.save_pretrained(DIR)") from None


def convert_state_dict(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """transformers GPT2LMHeadModel names -> lmforge GPT names; Conv1D weights [in, out] become Linear [out, in]."""
    out = {"wte.weight": sd["transformer.wte.weight"], "wpe.weight": sd["transformer.wpe.weight"],
           "ln_f.weight": sd["transformer.ln_f.weight"], "ln_f.bias": sd["transformer.ln_f.bias"]}
    out["lm_head.weight"] = out["wte.weight"]
    for i in range(n_layer):
        src, dst = f"transformer.h.{i}.", f"blocks.{i}."
        for name in ("ln_1", "ln_2"):
            out[f"{dst}{name}.weight"] = sd[f"{src}{name}.weight"]
            out[f"{dst}{name}.bias"] = sd[f"{src}{name}.bias"]
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[f"{dst}{name}.weight"] = sd[f"{src}{name}.weight"].t().contiguous()
            out[f"{dst}{name}.bias"] = sd[f"{src}{name}.bias"]
    return out
