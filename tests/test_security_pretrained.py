"""GPT-2 imports (lmforge/models/hf_gpt2.py) read safetensors only: a checkpoint directory holding only a pickled
pytorch_model.bin is refused in one line, and a pickle beside model.safetensors is never opened."""
from __future__ import annotations

import ast
import os
import shutil

import pytest
import torch

from conftest import REPO
from lmforge.core.config import ModelConfig
from lmforge.core.errors import LmforgeError
from lmforge.models import build_model

pytest.importorskip("transformers")
from test_models import save_tiny_gpt2  # noqa: E402 - after the skip: it imports transformers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_pickle(directory, marker) -> None:
    torch.save({"transformer.wte.weight": Payload(marker)}, directory / "pytorch_model.bin")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2-safe"))


def test_directory_with_only_a_pickle_is_refused(gpt2_dir, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copyfile(gpt2_dir / "config.json", d / "config.json")
    marker = tmp_path / "pwned"
    plant_pickle(d, marker)
    with pytest.raises(LmforgeError) as info:
        build_model(ModelConfig(family="hf-gpt2", pretrained=str(d)), 100)
    assert info.value.message == (f"{d} holds only pytorch_model.bin, a pickle (loading it can run code); lmforge "
                                  "reads model.safetensors only")
    assert "save_pretrained('DIR', safe_serialization=True)" in info.value.hint
    assert not marker.exists()


def test_pickle_beside_safetensors_is_never_opened(gpt2_dir, tmp_path):
    d = tmp_path / "both"
    shutil.copytree(gpt2_dir, d)
    marker = tmp_path / "pwned"
    plant_pickle(d, marker)
    model = build_model(ModelConfig(family="hf-gpt2", pretrained=str(d)), 100)
    reference = build_model(ModelConfig(family="hf-gpt2", pretrained=str(gpt2_dir)), 100)
    assert not marker.exists()
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name  # the safetensors weights, loaded as from the clean directory


def test_every_from_pretrained_call_asks_for_safetensors():
    """Source scan beside tests/test_hostile.py's torch.load scan: no from_pretrained call may fall back to a pickle."""
    calls = []
    for path in sorted((REPO / "lmforge").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                safe = any(k.arg == "use_safetensors" and getattr(k.value, "value", None) is True
                           for k in node.keywords)
                calls.append((f"{path.name}:{node.lineno}", safe))
    assert calls and all(safe for _, safe in calls), calls
