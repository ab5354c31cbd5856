"""Hostile files: no pickle is executed, and a model directory cannot make the runtime read outside itself.
(Archive path traversal and links are refused on extraction: tests/test_download.py
::test_malicious_tar_is_refused_and_nothing_is_extracted and ::test_malicious_zip_is_refused_and_nothing_is_extracted.)"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from lmforge.core.errors import LmforgeError
from lmforge.runtime import Generator, ModelDirError, read_model_dir
from test_bad_input import tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("hostile") / "model")


@pytest.fixture
def victim(model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


class Payload:
    """Unpickling this runs os.system: a marker file appears if anything unpickles it unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_in_optimizer_pt_is_refused(tmp_path):
    import torch

    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Checkpoints
    from lmforge.training.train import make_optimizer

    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 10)
    opt = make_optimizer(model, TrainConfig(), "cpu")
    ck = Checkpoints(tmp_path / "ckpt")
    ck.save("last", model, opt, {"step": 3, "data_rng": torch.Generator().get_state()})
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker), "rng": {}}, ck.dir / "last" / "optimizer.pt")
    with pytest.raises(LmforgeError, match="optimizer.pt is corrupted"):
        ck.load_training("last", model, opt)
    assert not marker.exists()


def test_library_never_unpickles_untrusted_files():
    """Every torch.load passes weights_only=True; nothing calls pickle.load or numpy with allow_pickle."""
    offenders = []
    for path in sorted((REPO / "lmforge").rglob("*.py")) + sorted((REPO / "tasks").rglob("*.py")):
        src = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", src):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: {m.group(0)}")
        offenders += [f"{path.name}: {s}" for s in re.findall(r"pickle\.loads?\(|allow_pickle=True|joblib\.load", src)]
    assert offenders == []


def test_onnx_external_data_outside_the_directory_is_refused(victim, tmp_path):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    name = "model.onnx"
    for f in victim.glob("*.onnx"):
        if f.name != name:
            f.unlink()  # keep only the graph under test, so the runtime must use it
    proto = onnx.load(str(victim / name))
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save_model(proto, str(victim / name))  # weights.bin beside it ...
    for location in ("../secret.bin", "/etc/hostname"):
        proto = onnx.load(str(victim / name), load_external_data=False)
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location  # ... but the graph now points elsewhere
        (victim / name).write_bytes(proto.SerializeToString())
        with pytest.raises(ModelDirError, match=f"model.onnx names '{re.escape(location)}', which lies outside"):
            read_model_dir(victim).onnx_path("fp32")
        with pytest.raises(ModelDirError, match="lies outside"):
            Generator(victim)


def test_onnx_external_data_inside_the_directory_still_loads(victim, model_dir):
    import onnx

    for f in victim.glob("*.onnx"):
        if f.name != "model.onnx":
            f.unlink()
    proto = onnx.load(str(victim / "model.onnx"))
    onnx.save_model(proto, str(victim / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    stored = onnx.load(str(victim / "model.onnx"), load_external_data=False).graph.initializer
    assert stored and all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored)  # the weights moved out
    want = Generator(model_dir, fast=False).generate("why", max_new_tokens=5, temperature=0)
    assert Generator(victim, fast=False).generate("why", max_new_tokens=5, temperature=0) == want  # the same model


@pytest.mark.parametrize("section,key,value", [("files", "fp32", "../../elsewhere.onnx"),
                                               ("files", "fp32", "/etc/hostname"),
                                               ("tokenizer", "file", "../tokenizer.json")])
def test_manifest_naming_files_outside_is_refused(victim, section, key, value):
    (victim.parent / "tokenizer.json").write_text((victim / "tokenizer.json").read_text())
    manifest = json.loads((victim / "lmforge.json").read_text())
    manifest[section][key] = value
    (victim / "lmforge.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="lies outside"):
        Generator(victim, fast=False)


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_symlink_pointing_outside_is_refused(victim, tmp_path, name):
    outside = tmp_path / f"outside-{name}"
    shutil.copyfile(victim / name, outside)
    (victim / name).unlink()
    (victim / name).symlink_to(outside)
    with pytest.raises(ModelDirError, match=f"names '{name}', which lies outside"):
        Generator(victim, fast=False)
