"""lmforge.json checked before anything is allocated: every section's type, every number's range, every token id
inside the vocabulary, the generation defaults valid sampling parameters. Whoever writes a model directory
controls these values, and the runtime sizes its buffers from them (a KV cache [slots, n_head, positions,
head_dim] per layer, a seen-token mask [slots, vocab]), so a value out of range is a ModelDirError here, not a
MemoryError later. The graph's own shapes then bound them further (check_graph, once the session is loaded)."""
from __future__ import annotations

from numbers import Integral
from typing import TYPE_CHECKING

from lmforge.runtime.errors import TAMPERED, ModelDirError, RequestError
from lmforge.runtime.lookahead import MAX_LOOKAHEAD
from lmforge.runtime.sampling import SamplingParams

MAX_MANIFEST_BYTES = 4 << 20  # lmforge.json: a few KB in practice (architecture, metrics, verification)
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json: a 250k-token BPE vocabulary with merges is ~20 MB
MAX_STATE = 4096  # state inputs (two per layer for a KV cache)
MAX_FILES = 64
RANGES = {"vocab_size": (1, 1 << 22), "block_size": (1, 1 << 20), "n_layer": (1, 1024), "n_head": (1, 1024),
          "head_dim": (1, 4096), "n_hidden": (1, 1 << 16)}
SPECIAL_TOKENS = ("bos", "eos", "pad", "unk")
MAX_ROWS_GRAPH = 64  # rows of model.fast.rows.onnx (lmforge writes 8): a bound on the inputs bound per call

if TYPE_CHECKING:
    import onnxruntime as ort


def _fail(where: str, problem: str):
    raise ModelDirError(f"{where}: {problem}", hint=TAMPERED)


def _show(value: object) -> str:
    """A value for an error line, at most 40 characters of its repr (a hostile one may be megabytes)."""
    if isinstance(value, (list, dict)):
        return type(value).__name__
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value[:50] if isinstance(value, str) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(where: str, name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        _fail(where, f"{name} must be an integer in [{low}, {high}], got {_show(value)}")
    return int(value)


def _dict(where: str, manifest: dict, key: str, optional: bool = False) -> dict:
    value = manifest.get(key)
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        _fail(where, f"the {key!r} section must be an object, got {type(value).__name__}")
    return value


def _str(where: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 1024:
        _fail(where, f"{name} must be a non-empty string, got {_show(value)}")
    return value


def _state(where: str, entries: object, rnn_ok: bool) -> list[dict]:
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_STATE:
        _fail(where, f"io state must be a list of 1 to {MAX_STATE} entries")
    for i, s in enumerate(entries):
        if not isinstance(s, dict):
            _fail(where, f"io state[{i}] must be an object")
        _str(where, f"io state[{i}].input", s.get("input"))
        _str(where, f"io state[{i}].output", s.get("output"))
        if s.get("kind") == "rnn":
            shape = s.get("shape")
            if not rnn_ok or not isinstance(shape, list) or len(shape) != 3:
                _fail(where, f"io state[{i}].shape must be [n_layer, batch, n_hidden]")
            _int(where, f"io state[{i}].shape[0]", shape[0], *RANGES["n_layer"])
            _int(where, f"io state[{i}].shape[2]", shape[2], *RANGES["n_hidden"])
    return entries


def check_manifest(m: dict, where: str) -> None:
    """Raise ModelDirError on the first value of lmforge.json `m` that the runtime cannot safely use."""
    model, io, tokens = _dict(where, m, "model"), _dict(where, m, "io"), _dict(where, m, "tokens")
    vocab = _int(where, "model.vocab_size", model.get("vocab_size"), *RANGES["vocab_size"])
    _str(where, "io.logits", io.get("logits"))
    rnn = any(isinstance(s, dict) and s.get("kind") == "rnn" for s in io.get("state") or [])
    _state(where, io.get("state"), rnn_ok=True)
    if not rnn:
        for key in ("block_size", "n_head", "head_dim"):
            _int(where, f"model.{key}", model.get(key), *RANGES[key])
    if "fast" in io:
        fast = _dict(where, io, "fast")
        _str(where, "io.fast.logits", fast.get("logits"))
        _state(where, fast.get("state"), rnn_ok=False)
        pairs = fast.get("rows_in_pairs", [])  # the fast variants whose calls run in pairs of rows (export.fast)
        if not isinstance(pairs, list) or not all(isinstance(v, str) and len(v) <= 16 for v in pairs[:16]) \
                or len(pairs) > 16:
            _fail(where, "io.fast.rows_in_pairs must be a list of variant names")
        if "rows_graph" in fast:  # model.fast.rows.onnx's rows (export.fast.build_rows_graph)
            _int(where, "io.fast.rows_graph.rows", _dict(where, fast, "rows_graph").get("rows"), 2, MAX_ROWS_GRAPH)
    for key in SPECIAL_TOKENS:
        if tokens.get(key) is not None:
            _int(where, f"tokens.{key}", tokens[key], 0, vocab - 1)
    _str(where, "tokenizer.file", _dict(where, m, "tokenizer").get("file"))
    files = _dict(where, m, "files")
    if not 0 < len(files) <= MAX_FILES:
        _fail(where, f"files must name 1 to {MAX_FILES} graphs")
    for variant, name in files.items():
        _str(where, f"files.{variant}", name)
    check_generation(_dict(where, m, "generation", optional=True), where)


def check_generation(g: dict, where: str) -> None:
    """The generation defaults: valid sampling parameters and a positive max_new_tokens."""
    if g.get("max_new_tokens") is not None:
        _int(where, "generation.max_new_tokens", g["max_new_tokens"], 1, 1 << 30)
    if g.get("lookahead") is not None:  # draft tokens per verifying call (runtime.lookahead; 0 = off)
        _int(where, "generation.lookahead", g["lookahead"], 0, MAX_LOOKAHEAD)
    given = {k: g[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty") if g.get(k) is not None}
    try:
        SamplingParams(**given)
    except RequestError as exc:
        _fail(where, f"generation.{exc.message}")


def genai_paths(m: dict) -> list[str]:
    """The file names the `genai` section gives (read by onnxruntime-genai, not this runtime: still confined)."""
    genai = m.get("genai")
    if not isinstance(genai, dict):
        return []
    graphs = genai.get("graphs") if isinstance(genai.get("graphs"), dict) else {}
    return [v for v in [genai.get("config"), *graphs.values()] if isinstance(v, str)]


def check_graph(session: ort.InferenceSession, gen, io: dict, where: str) -> None:
    """The manifest against the loaded graph's own declared shapes: every named input and output exists, and the
    head count, head size, recurrent state size and vocabulary are the graph's fixed dimensions."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}

    def dim(shapes: dict, name: str, axis: int, expected: int, what: str) -> None:
        shape = shapes.get(name)
        if shape is None:
            _fail(where, f"the graph has no {name!r}, which lmforge.json names")
        if len(shape) <= axis or shape[axis] != expected:
            got = shape[axis] if len(shape) > axis else "nothing"
            _fail(where, f"lmforge.json gives {what} {expected}, but the graph's {name} has {got!r} there")

    dim(outputs, io["logits"], 2, gen.vocab_size, "vocab_size")
    for s in io["state"]:
        if gen.rnn:
            dim(inputs, s["input"], 0, s["shape"][0], "n_layer")
            dim(inputs, s["input"], 2, s["shape"][2], "n_hidden")
        else:
            dim(inputs, s["input"], 1, gen.n_head, "n_head")
            dim(inputs, s["input"], 3, gen.head_dim, "head_dim")
        if s["output"] not in outputs:
            _fail(where, f"the graph has no {s['output']!r}, which lmforge.json names")
