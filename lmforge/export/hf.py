"""The Hugging Face folder of an exported gpt / hf-gpt2 model (`hf/` in the model directory), which
`transformers.AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load with no
custom code, and which is what the Hub, optimum's ONNX export, lm-evaluation-harness, vLLM and TGI read:

  config.json             GPT2LMHeadModel's config (lmforge's gpt IS GPT-2's architecture: pre-LayerNorm, tanh
                          GELU = gelu_new, learned positions, tied head, LayerNorm eps 1e-5)
  model.safetensors       the weights under GPT-2's names; Linear [out, in] -> Conv1D [in, out]; zero biases
                          where the model has none (model.bias = false), which computes exactly the same
  generation_config.json  the preset's generation defaults (lmforge.json `generation`) and special ids
  tokenizer.json          the exported tokenizer (lmforge.export.tokenizer: <bos> added on encode)
  tokenizer_config.json   PreTrainedTokenizerFast over tokenizer.json, with its special tokens
  special_tokens_map.json the same special tokens, for older readers
  README.md               the model card: Hub front matter (library, pipeline, tags, model-index with the
                          val metrics), the data fingerprint, the metrics, samples once they exist

Always written (one float32 copy of the weights, beside the several ONNX copies already in the directory), so
every registered version is a folder transformers loads: `fetch_model_dir("models:/NAME@champion") / "hf"`.
LSTM and GRU models get none: transformers has no architecture with their shape (lmforge.json `hf` says so)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lmforge.core.errors import LmforgeError

FOLDER = "hf"
RNN_REASON = ("transformers has no LSTM/GRU language-model architecture whose weights this model's would map to "
              "(its causal LMs are transformers), and llama.cpp none either; use the ONNX graphs")


def unsupported(family: str) -> dict:
    """lmforge.json `hf` (and `gguf`) of a family with no Hugging Face / GGUF form."""
    return {"supported": False, "reason": RNN_REASON if family in ("lstm", "gru") else
            f"Hugging Face and GGUF files are written for gpt and hf-gpt2 models, not {family!r}"}


def check_shape(spec: dict) -> None:
    """Refuse (one line) a model GPT-2's config cannot describe (any gpt's shape is one: n_embd = n_head x
    head_dim, learned positions up to block_size)."""
    if spec.get("family", "gpt") not in ("gpt", "hf-gpt2"):
        raise LmforgeError(f"a {spec.get('family')} model has no Hugging Face form: {unsupported(spec['family'])['reason']}",
                           hint="export a gpt model (model.family=gpt) for transformers and llama.cpp")


def gpt2_config(spec: dict, tokens: dict) -> dict:
    """config.json: GPT2LMHeadModel with lmforge's shape; dropout 0 (inference)."""
    ids = {k: tokens.get(k) for k in ("bos", "eos", "pad")}
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": int(spec["vocab_size"]), "n_positions": int(spec["block_size"]),
        "n_ctx": int(spec["block_size"]), "n_embd": int(spec["n_embd"]), "n_layer": int(spec["n_layer"]),
        "n_head": int(spec["n_head"]), "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "use_cache": True,
        "tie_word_embeddings": True, "torch_dtype": "float32",
        **{f"{k}_token_id": int(v) for k, v in ids.items() if v is not None},
    }


def generation_config(generation: dict, tokens: dict) -> dict:
    """generation_config.json from lmforge.json `generation` (what `model.generate()` does with no arguments)."""
    t = float(generation.get("temperature", 1.0))
    out = {"do_sample": t > 0, "max_new_tokens": int(generation.get("max_new_tokens", 100))}
    if t > 0:
        out.update(temperature=t, top_k=int(generation.get("top_k", 0) or 0), top_p=float(generation.get("top_p", 1.0)))
    for k in ("bos", "eos", "pad"):
        if tokens.get(k) is not None:
            out[f"{k}_token_id"] = int(tokens[k])
    return out


def gpt2_state_dict(model: torch.nn.Module, n_layer: int) -> dict[str, torch.Tensor]:
    """lmforge GPT names -> transformers GPT2LMHeadModel names (the inverse of lmforge.models.hf_gpt2.
    convert_state_dict): Linear weights [out, in] become Conv1D [in, out]; a missing bias becomes zeros. The tied
    lm_head is left out (transformers ties it to wte)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}

    def bias(name: str, size: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(size)).contiguous()

    C = sd["wte.weight"].shape[1]
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": bias("ln_f.bias", C)}
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"transformer.h.{i}."
        for name in ("ln_1", "ln_2"):
            out[f"{dst}{name}.weight"] = sd[f"{src}{name}.weight"]
            out[f"{dst}{name}.bias"] = bias(f"{src}{name}.bias", C)
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            w = sd[f"{src}{name}.weight"]
            out[f"{dst}{name}.weight"] = w.t().contiguous()
            out[f"{dst}{name}.bias"] = bias(f"{src}{name}.bias", w.shape[0])
    return {k: v.contiguous() for k, v in out.items()}


def write_hf_folder(model: torch.nn.Module, spec: dict, manifest: dict, exported_tokenizer, folder: Path) -> dict:
    """Write the Hugging Face folder (module docstring) into `folder`; returns lmforge.json `hf`."""
    from safetensors.torch import save_file

    check_shape(spec)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens, generation = manifest.get("tokens", {}), manifest.get("generation", {})
    write_json(folder / "config.json", gpt2_config(spec, tokens))
    write_json(folder / "generation_config.json", generation_config(generation, tokens))
    save_file(gpt2_state_dict(model, spec["n_layer"]), str(folder / "model.safetensors"), metadata={"format": "pt"})
    exported_tokenizer.save(folder)
    write_json(folder / "special_tokens_map.json",
               {k: v for k, v in exported_tokenizer.config.items() if k.endswith("_token")})
    (folder / "README.md").write_text(model_card(manifest), encoding="utf-8")
    return {"supported": True, "folder": FOLDER,
            "files": sorted(p.name for p in folder.iterdir())}


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- the model card ---------------------------------------------------------------------------------------------
def model_card(manifest: dict, samples: list[dict] | None = None, registered: str | None = None) -> str:
    """README.md: the Hub's front matter (YAML), then what the model is, the data it was trained on (with its
    fingerprint), its metrics, its samples (the pipeline's, once they exist) and how to load it."""
    name = manifest.get("name", "lmforge-model")
    data, metrics, spec = manifest.get("data") or {}, manifest.get("metrics") or {}, manifest["model"]
    results = [{"type": "perplexity", "name": "val perplexity", "value": round(float(metrics["val_perplexity"]), 4)}
               if "val_perplexity" in metrics else None,
               {"type": "loss", "name": "val loss (nats/token)", "value": round(float(metrics["val_loss"]), 4)}
               if "val_loss" in metrics else None]
    results = [r for r in results if r]
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["lmforge", "gpt2", "text-generation", f"tokenizer-{manifest.get('tokenizer', {}).get('kind', '?')}"]}
    if results:
        front["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"type": str(data.get("source") or "custom"), "name": str(data.get("source") or "custom"),
                        "split": "validation"},
            "metrics": results}]}]
    lines = ["---", *yaml_lines(front), "---", "", f"# {name}", "",
             f"A GPT-2-architecture language model ({spec['n_layer']} layers, {spec['n_head']} heads, "
             f"{spec['n_embd']} dims, context {spec['block_size']}, vocabulary {spec['vocab_size']}) trained by "
             "lmforge" + (f" (MLflow run `{manifest['mlflow_run_id']}`)" if manifest.get("mlflow_run_id") else "")
             + (f", registered as `{registered}`" if registered else "") + ".", "",
             "## Data", "", "| field | value |", "| --- | --- |"]
    for key in ("source", "documents", "fingerprint", "corpus_sha256", "tokenizer_sha256", "val_sha256", "split"):
        if key in data:
            value = json.dumps(data[key]) if isinstance(data[key], dict) else data[key]
            lines.append(f"| {key} | `{value}` |")
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
              for k, v in sorted(metrics.items()) if not k.startswith(("onnx_", "verify_"))]
    if samples:
        lines += ["", "## Samples", ""]
        for s in samples:
            lines += [f"- temperature {s.get('temperature')}, prompt {json.dumps(s.get('prompt', ''))}:",
                      "", "  ```text", *["  " + ln for ln in str(s.get("text", "")).splitlines() or [""]], "  ```", ""]
    lines += ["", "## Use", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", 'tok = AutoTokenizer.from_pretrained("path/to/hf")  # encode() puts <bos> first, as in training',
              'model = AutoModelForCausalLM.from_pretrained("path/to/hf")',
              'ids = tok("Why", return_tensors="pt").input_ids',
              "print(tok.decode(model.generate(ids, do_sample=False, max_new_tokens=40)[0], skip_special_tokens=True))",
              "```", ""]
    return "\n".join(lines)


def yaml_lines(obj, indent: int = 0) -> list[str]:
    """A small YAML writer for the card's front matter (mappings, lists, scalars as JSON, which YAML reads)."""
    pad, out = "  " * indent, []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                out += yaml_lines(v, indent + 1)
            else:
                out.append(f"{pad}{k}: {json.dumps(v, ensure_ascii=False)}")
    else:
        for item in obj:
            if isinstance(item, dict):
                sub = yaml_lines(item, indent + 1)
                out.append(f"{pad}- {sub[0].strip()}")
                out += sub[1:]
            else:
                out.append(f"{pad}- {json.dumps(item, ensure_ascii=False)}")
    return out


def write_model_card(model_dir: Path, samples: list[dict] | None = None, registered: str | None = None) -> Path | None:
    """(Re)write hf/README.md of an exported directory from its lmforge.json, with samples / the registered name
    when given; None when the directory has no Hugging Face folder."""
    model_dir = Path(model_dir)
    folder = model_dir / FOLDER
    if not folder.is_dir():
        return None
    manifest = json.loads((model_dir / "lmforge.json").read_text(encoding="utf-8"))
    path = folder / "README.md"
    path.write_text(model_card(manifest, samples, registered), encoding="utf-8")
    return path


# -- `lmforge export-hf` ------------------------------------------------------------------------------------------
def model_from_folder(folder: Path, spec: dict) -> torch.nn.Module:
    """lmforge's GPT with the weights of a Hugging Face folder written here (safetensors only, no transformers)."""
    from safetensors.torch import load_file

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.hf_gpt2 import convert_state_dict

    model = GPT(GPTConfig(vocab_size=spec["vocab_size"], block_size=spec["block_size"], n_layer=spec["n_layer"],
                          n_head=spec["n_head"], n_embd=spec["n_embd"], bias=True))
    model.load_state_dict(convert_state_dict(load_file(str(folder / "model.safetensors")), spec["n_layer"]))
    return model.eval()


def export_hf(model_dir: Path, out: Path, gguf: str | None = None, registered: str | None = None,
              push_to_hub: str | None = None, private: bool = True) -> dict:
    """Copy an exported directory's Hugging Face folder to `out` (its card naming the registered version when
    given), with a GGUF of type `gguf` beside it when asked, and upload it to the Hub repo `push_to_hub` when
    asked (huggingface_hub; needs a token and the network). Returns what was written."""
    import shutil

    from lmforge.export.gguf import FILE, write_gguf
    from lmforge.export.tokenizer import export_tokenizer

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "lmforge.json").is_file():
        raise LmforgeError(f"{model_dir} is not an exported model directory (no lmforge.json)",
                           hint="pass artifacts/runs/<run>/model, a run directory or models:/NAME@ALIAS")
    manifest = json.loads((model_dir / "lmforge.json").read_text(encoding="utf-8"))
    record = manifest.get("hf") or {"reason": "it was exported before lmforge wrote Hugging Face folders"}
    if not record.get("supported") or not (model_dir / FOLDER / "model.safetensors").is_file():
        raise LmforgeError(f"{model_dir} has no Hugging Face folder: {record.get('reason', 'hf/ is missing')}",
                           hint="re-export a gpt model with export.hf=true (lmforge run)")
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"{out} exists and is not empty", hint="name a new directory")
    shutil.copytree(model_dir / FOLDER, out, dirs_exist_ok=True)
    (out / "README.md").write_text(model_card(manifest, None, registered), encoding="utf-8")
    result = {"folder": str(out), "files": sorted(p.name for p in out.iterdir())}
    if gguf:
        spec = manifest["model"]
        path = out / FILE.format(type=gguf)
        result["gguf"] = write_gguf(model_from_folder(out, spec), spec, manifest,
                                    export_tokenizer(out / "tokenizer.json", spec["block_size"]), path, gguf)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        result["pushed"] = str(api.upload_folder(repo_id=push_to_hub, folder_path=str(out)))
    return result
