"""The registry's "generate" model: an MLflow pyfunc model over an exported model directory, so that a registered
version answers prompts with text (`mlflow models serve -m models:/NAME@champion --env-manager local`, or
`mlflow.pyfunc.load_model(...).predict(...)`), not one forward pass of logits.

What is logged (docs/model-format.md, "MLflow serving"):
  artifacts/<dir>/   the exported model directory, as exported (ONNX files, tokenizer.json, lmforge.json)
  code/lmforge/      the lmforge code the version was registered with (its runtime decodes the served text)
  pyfunc_model.py    the model's code (MLflow's models-from-code: no pickle), which makes a GenerateModel;
                     its load_context builds lmforge.runtime.Generator from the artifact
  MLmodel            signature: input column `prompt` (string), output one string per prompt, params
                     max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, greedy, stop;
                     streamable: `predict_stream({"prompt": ...}, params)` yields the text of one prompt piece by piece
Params left out of a request take the model's own defaults (lmforge.json `generation`); `greedy: true` means
temperature 0; seed null (the default) draws a fresh random seed per request. model_config (at log time, or
`load_model(uri, model_config=...)`): `variant` (fp32, int8, ...), `device` (auto, cpu, cuda) and `limits`, the
serving limits of lmforge.runtime.limits ({"max_new_tokens": 256, "max_prompt_bytes": 65536, "max_stop_strings":
4, "max_stop_chars": 64, "deadline_s": 30, "max_batch": 8}, any subset), which may only lower the model
directory's own (lmforge.json `limits`, else the runtime's defaults); for `mlflow models serve`, MLflow's
MLFLOW_PYFUNC_INFERENCE_CONFIG='{"limits": {...}}' sets them. A request over a limit, like a bad parameter, is
an HTTP 400 naming it."""
from __future__ import annotations

import importlib.metadata
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

ARTIFACT = "model_dir"  # the key of the exported directory in the pyfunc model's artifacts
# request params: name -> (MLflow type, default); None = the model's own default (lmforge.json `generation`)
PARAMS = {"max_new_tokens": ("long", None), "temperature": ("double", None), "top_k": ("long", None),
          "top_p": ("double", None), "repetition_penalty": ("double", 1.0), "seed": ("long", None),
          "greedy": ("boolean", False), "stop": ("string", [])}
LIST_PARAMS = {"stop"}
DEFAULT_CONFIG = {"variant": "fp32", "device": "auto", "limits": {}}  # MLflow lets load_model override logged keys only


class GenerateModel(mlflow.pyfunc.PythonModel):
    """predict(prompts, params) -> one generated continuation (text after the prompt) per prompt."""

    def load_context(self, context) -> None:
        from lmforge.runtime import Generator

        config = {**DEFAULT_CONFIG, **(context.model_config or {})}
        self.generator = Generator(context.artifacts[ARTIFACT], variant=str(config["variant"]),
                                   device=str(config["device"]), threads=config.get("threads"),
                                   limits=config.get("limits"))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from mlflow.exceptions import MlflowException

        try:
            return self.generator.generate(prompts(model_input), **generate_kwargs(params))
        except ValueError as exc:  # a parameter out of range, a limit passed: the caller's error (HTTP 400)
            raise MlflowException.invalid_parameter_value(str(exc)) from None

    def predict_stream(self, context, model_input, params: dict | None = None) -> Iterator[str]:
        """The continuation of one prompt as text pieces, each yielded as soon as it is whole (lmforge.runtime's
        Generator.stream): `mlflow.pyfunc.load_model(uri).predict_stream({"prompt": "Why"}, params={...})`.
        The pieces join to exactly predict()'s text for the same prompt and params."""
        from mlflow.exceptions import MlflowException

        batch = prompts(model_input)
        if len(batch) != 1:
            raise MlflowException.invalid_parameter_value(f"predict_stream takes one prompt, got {len(batch)}")
        from lmforge.runtime import RowRequest
        from lmforge.runtime.requests import check_finished

        try:  # checked before any decoding (limits, parameters): an invalid-parameter error, not a crash
            events = self.generator.stream_batch([RowRequest(batch[0], **generate_kwargs(params))])
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None

        def pieces() -> Iterator[str]:  # as Generator.stream: a row cut by its deadline raises at the end
            for ev in events:
                if ev.text:
                    yield ev.text
                check_finished(ev)

        return pieces()


def generate_kwargs(params: dict | None) -> dict:
    """Generator.generate/stream keyword arguments from a request's params (None = the model's default)."""
    p = {k: v for k, v in (params or {}).items() if v is not None}
    kwargs = {k: p[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
              if k in p}
    if p.get("greedy"):
        kwargs["temperature"] = 0.0
    kwargs["stop"] = [str(s) for s in p.get("stop", [])]
    return kwargs


def prompts(model_input) -> list[str]:
    """The prompts of a request: a DataFrame (or dict) with a `prompt` column, a list of strings, or one string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        model_input = model_input["prompt"]
        return [model_input] if isinstance(model_input, str) else [str(x) for x in model_input]
    if hasattr(model_input, "columns"):  # pandas.DataFrame, what the signature turns every request into
        column = model_input["prompt"] if "prompt" in model_input.columns else model_input.iloc[:, 0]
        return ["" if x is None else str(x) for x in column.tolist()]
    return [str(x) for x in model_input]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec(name, dtype, default, (-1,) if name in LIST_PARAMS else None)
                          for name, (dtype, default) in PARAMS.items()])
    return ModelSignature(Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string")]), params)


def requirements() -> list[str]:
    """The packages the model needs at load, pinned to the ones here (lmforge itself travels in code/)."""
    out = []
    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers", "pandas", "pyyaml"):
        try:
            out.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def log_generate_model(model_dir: Path, example_prompt: str = "", name: str = "model"):
    """Log `model_dir` as the generate model of the active MLflow run; returns mlflow's ModelInfo. MLflow checks
    the input example by loading the logged model and generating from it before it returns."""
    example = (pd.DataFrame({"prompt": [example_prompt]}), {"max_new_tokens": 16, "greedy": True})
    path = list(sys.path)  # loading the logged model for that check puts its code/ on sys.path
    with tempfile.TemporaryDirectory(prefix="lmforge-code-") as tmp:
        code = Path(tmp) / "lmforge"
        # the Python package only: not the browser page and its npm packages (lmforge/web, ~150 MB with node_modules)
        shutil.copytree(Path(__file__).resolve().parents[1], code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "web", "node_modules"))
        try:
            return mlflow.pyfunc.log_model(name=name, python_model=str(code / "registry" / "pyfunc_model.py"),
                                           artifacts={ARTIFACT: str(model_dir)}, code_paths=[str(code)],
                                           signature=signature(), input_example=example,
                                           pip_requirements=requirements(), model_config=dict(DEFAULT_CONFIG),
                                           streamable=True)
        finally:
            sys.path[:] = path


def model_dir_in(root: Path) -> Path:
    """The exported model directory inside a downloaded registered model: the generate model's artifact, or the
    root itself (versions registered before it, as an `mlflow.onnx` model with the directory's files beside)."""
    root = Path(root)
    if (root / "lmforge.json").is_file():
        return root
    import yaml

    try:
        flavor = yaml.safe_load((root / "MLmodel").read_text(encoding="utf-8"))["flavors"]["python_function"]
        return root / flavor["artifacts"][ARTIFACT]["path"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return root
