"""Test session setup: an isolated artifacts directory and MLflow SQLite store, one Prefect test server."""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

from small_corpora import GENERATORS, REAL_FACTS, Corpus

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPORA = Path(os.environ.get("LMFORGE_CORPORA") or REPO.parent / "shared" / "corpora")  # a clone elsewhere

_ARTIFACTS = Path(tempfile.mkdtemp(prefix="lmforge-test-artifacts-"))
os.environ["LMFORGE_ARTIFACTS"] = str(_ARTIFACTS)
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_ARTIFACTS / 'mlflow.db'}"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("CI", "true")  # plain log lines instead of progress bars
# The suite's HTTP servers listen on 127.0.0.1: the operator's policy (lmforge/core/policy.py) allows loopback
# addresses for the whole session, as an operator with a loopback mirror would; the tests of the refusal
# (tests/test_security_policy.py) take it away.
os.environ["LMFORGE_ALLOWED_ADDRESSES"] = "loopback"

# The tiny model every flow test trains: seconds on a CPU.
TINY = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "train.max_steps": 30,
        "train.eval_interval": 15, "train.eval_iters": 2, "train.batch_size": 8, "eval.max_new_tokens": 20,
        "eval.temperatures": "[1.0]", "eval.prompts": '["Why"]'}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    return _ARTIFACTS


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server (test harness) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def readme_commands(heading: str) -> list[str]:
    """The command lines of the first ```bash block under README.md's `heading`, comments stripped: the tests
    that follow the README run exactly these."""
    import re
    import shlex

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    lines = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            lines.append(shlex.join(words))
    return lines


_GENERATED: dict[str, Corpus] = {}


def corpus_info(name: str, real: bool = False) -> Corpus:
    """The corpus `name`: the real one from ../shared/corpora (CI has them; LMFORGE_CORPORA points elsewhere), else
    a small one of the same format the tests write themselves (tests/small_corpora.py; a contributor's clone has
    no ../shared), each with the facts a test may assert. real=True: the real one or skip, for the few checks only
    its own bytes can pass (a pinned sha256)."""
    path = SHARED_CORPORA / name
    if path.is_file():
        return Corpus(path, True, REAL_FACTS[name])
    if real:
        pytest.skip(f"{path} not found: this check needs the real corpus (../shared/corpora beside the repo; CI has it)")
    if name not in _GENERATED:
        out = Path(tempfile.mkdtemp(prefix="lmforge-test-corpus-")) / name
        _GENERATED[name] = Corpus(out, False, GENERATORS[name](out))
    return _GENERATED[name]


def corpus(name: str, real: bool = False) -> Path:
    """The path of corpus_info(name): the real corpus, or the small generated one of the same format."""
    return corpus_info(name, real).path


def corpus_facts(name: str) -> dict:
    """What is known about corpus `name` as corpus() gives it: the figures of the real one, or those counted while
    writing the generated one (see tests/small_corpora.py for the keys)."""
    return corpus_info(name).facts


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one torch thread is far faster than two fighting a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    """The n greedy token ids torch's own cached forward gives after `ids` (the reference the runtime must match)."""
    import torch

    out, state, x = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits, state = model(x, state)
            out.append(int(logits[0, -1].argmax()))
            x = torch.tensor([[out[-1]]])
    return out


def tiny_random_gpt(vocab_size: int, block_size: int = 32):
    """A random 2-layer GPT with weights larger than GPT's init, so greedy output is varied, not one repeated token."""
    import torch

    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.25)
    return model


_PROVIDER: list[str] = []


def cuda_works() -> bool:
    """Whether onnxruntime here really runs a session on the CUDA provider (onnxruntime-gpu lists it even when its
    libraries are missing): a session on a one-node graph, asked for CUDA, reports which provider it got."""
    if not _PROVIDER:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            _PROVIDER.append("CPUExecutionProvider")
        else:
            from onnx import TensorProto, helper

            graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
            try:
                sess = ort.InferenceSession(model.SerializeToString(),
                                            providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                _PROVIDER.append(sess.get_providers()[0])
            except Exception:  # noqa: BLE001 - any failure to start CUDA means: no GPU here
                _PROVIDER.append("CPUExecutionProvider")
    return _PROVIDER[0] == "CUDAExecutionProvider"


def expected_provider() -> str:
    """The provider Generator(device="auto") runs on here: CUDA where it works, else CPU."""
    return "CUDAExecutionProvider" if cuda_works() else "CPUExecutionProvider"


def uniform_loss(model_dir) -> float:
    """log(vocab size) of an exported model: the loss of guessing every token equally (nats/token)."""
    import json
    import math

    return math.log(json.loads((Path(model_dir) / "lmforge.json").read_text(encoding="utf-8"))["model"]["vocab_size"])


BEATS_UNIFORM = 0.25  # nats/token below log(vocab): what even 30 steps of a tiny model learn of English letters


class LogLines(logging.Handler):
    """A logging handler that keeps the messages emitted while it is attached (Prefect's run loggers, lmforge's)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def restore_closed_log_streams() -> None:
    """A log handler set up while capsys captures (Prefect's console handler, logging.basicConfig) keeps capsys's
    stream, which is closed after the test; point such handlers back at stderr so later tests can still log."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            handler.stream = sys.stderr  # not setStream(): it flushes the closed stream first
            if hasattr(handler, "console"):  # Prefect's rich console handler writes through its own Console
                handler.console.file = sys.stderr


def gpt2_tokenizer_files(bpe, directory: Path) -> None:
    """A GPT-2-format tokenizer (vocab.json + merges.txt, as a downloaded GPT-2 tokenizer is): a byte-level BPE
    with no <pad>/<unk>/<bos>/<eos>; lmforge's gpt2 kind adds <|endoftext|>, its only special token."""
    import json

    model = json.loads(bpe.to_str())["model"]
    tokens = sorted((i, t) for t, i in model["vocab"].items() if not (t.startswith("<") and t.endswith(">")))
    (directory / "vocab.json").write_text(json.dumps({t: n for n, (_, t) in enumerate(tokens)}))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


ERROR_LINE = r"error: .+ \(hint: .+\)"  # the project's one line for bad input: the problem, then the fix


def assert_error_line(err: str) -> str:
    """`err` (stderr, stripped) is exactly one `error: <problem> (hint: <fix>)` line with one hint (a wrapper
    that adds its own to an error that already has one would double it); returns the line."""
    import re

    assert len(err.splitlines()) == 1 and re.fullmatch(ERROR_LINE, err), err
    assert err.count("(hint: ") == 1, err
    return err
