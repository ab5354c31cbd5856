"""lmforge/runtime/onnxwire.py, the stdlib protobuf reader behind the runtime's external-data check, against the
`onnx` package itself; and the refusal of external data outside the model directory in a runtime-only install
(no `onnx` importable at all)."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from google.protobuf.message import Message
from onnx import TensorProto, helper

from conftest import REPO
from lmforge.runtime import ModelDirError, read_model_dir, onnxwire
from test_bad_input import tiny_model_dir

KINDS = {"model": onnx.ModelProto, "training_info": onnx.TrainingInfoProto, "function": onnx.FunctionProto,
         "graph": onnx.GraphProto, "node": onnx.NodeProto, "attribute": onnx.AttributeProto,
         "sparse_tensor": onnx.SparseTensorProto, "tensor": onnx.TensorProto, "entry": onnx.StringStringEntryProto}


def reference_locations(message) -> list[str]:
    """Every TensorProto anywhere in the message, found by walking onnx's parsed protobuf generically (every set
    field of every message), and the `location` of each one's external data."""
    found = set()

    def walk(m) -> None:
        if isinstance(m, TensorProto):
            found.update(e.value for e in m.external_data if e.key == "location")
        for field, value in m.ListFields():
            if field.message_type is not None:
                for item in ([value] if isinstance(value, Message) else value):  # one message, or a repeated field
                    walk(item)

    walk(message)
    return sorted(found)


def external(name: str, location: str) -> TensorProto:
    t = helper.make_tensor(name, TensorProto.FLOAT, [2], [0.0, 0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = key, value
    return t


def graph_with(name: str, location: str, nodes=()) -> onnx.GraphProto:
    return helper.make_graph(list(nodes), name, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                             initializer=[external(f"{name}_w", location)])


def sparse(name: str, values_at: str, indices_at: str) -> onnx.SparseTensorProto:
    indices = helper.make_tensor(f"{name}_i", TensorProto.INT64, [1], [0])
    indices.ClearField("int64_data")
    indices.data_location = TensorProto.EXTERNAL
    e = indices.external_data.add()
    e.key, e.value = "location", indices_at
    return helper.make_sparse_tensor(external(f"{name}_v", values_at), indices, [4])


def model_with_tensors_everywhere() -> onnx.ModelProto:
    """External data in every place a TensorProto can sit: initializers, sparse initializers, node attributes
    (t, tensors, sparse_tensor, sparse_tensors), subgraphs two levels deep (If -> Loop body, graphs=[...]),
    functions (a node attribute and a default attribute value) and training info."""
    loop = helper.make_node("Loop", ["m", "c"], ["y"], body=graph_with("loop_body", "deep/loop-body.bin"))
    if_node = helper.make_node("If", ["c"], ["y"], then_branch=graph_with("then", "then.bin"),
                               else_branch=graph_with("else", "else.bin", [loop]))
    const = helper.make_node("Constant", [], ["k"], value=external("k", "const.bin"))
    const_sparse = helper.make_node("Constant", [], ["s"], sparse_value=sparse("s", "attr-sparse.bin", "attr-idx.bin"))
    custom = helper.make_node("Custom", [], ["z"], domain="test", tensors=[external("a", "list0.bin"),
                                                                            external("b", "../escape.bin")])
    custom.attribute.append(helper.make_attribute("graphs", [graph_with("g0", "graphs-list.bin")]))
    custom.attribute.append(helper.make_attribute("sparses", [sparse("ss", "sparses-v.bin", "sparses-i.bin")]))
    graph = helper.make_graph([const, const_sparse, custom, if_node], "main", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              initializer=[external("w", "weights.bin")],
                              sparse_initializer=[sparse("sp", "sparse-values.bin", "sparse-indices.bin")])
    fn_node = helper.make_node("Constant", [], ["o"], value=external("f", "function.bin"))
    fn = helper.make_function("test", "Fn", [], ["o"], [fn_node], [helper.make_opsetid("", 17)])
    fn.attribute_proto.append(helper.make_attribute("default", external("d", "function-default.bin")))
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17)])
    training = model.training_info.add()
    training.initialization.CopyFrom(graph_with("init", "training-init.bin"))
    training.algorithm.CopyFrom(graph_with("algo", "training-algo.bin"))
    return model


def test_schema_matches_onnx_descriptors_and_covers_every_tensor_holding_field():
    """Each field the reader follows has the number and message type onnx.proto declares, and every field of
    those messages that can (transitively) hold a TensorProto is followed: a new one in a future onnx fails here."""
    holds_tensor: dict = {}

    def can_hold(descriptor, seen=()) -> bool:
        if descriptor.full_name == TensorProto.DESCRIPTOR.full_name:
            return True
        if descriptor.full_name in seen:
            return False
        if descriptor.full_name not in holds_tensor:
            holds_tensor[descriptor.full_name] = any(
                f.message_type is not None and can_hold(f.message_type, (*seen, descriptor.full_name))
                for f in descriptor.fields)
        return holds_tensor[descriptor.full_name]

    for kind, children in onnxwire.SCHEMA.items():
        descriptor = KINDS[kind].DESCRIPTOR
        for number, child in children.items():
            field = descriptor.fields_by_number[number]
            assert field.message_type.full_name == KINDS[child].DESCRIPTOR.full_name, (kind, number)
        followed = set(children)
        needed = {f.number for f in descriptor.fields if f.message_type is not None and can_hold(f.message_type)}
        assert needed <= followed, (kind, needed - followed)


def test_wire_reader_agrees_with_onnx_on_tensors_everywhere():
    model = model_with_tensors_everywhere()
    expected = reference_locations(model)
    assert len(expected) == 18 and "../escape.bin" in expected and "deep/loop-body.bin" in expected
    assert onnxwire.external_data_locations(model.SerializeToString()) == expected


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("wire") / "model")


def only_fp32(directory: Path) -> Path:
    for f in directory.glob("*.onnx"):
        if f.name != "model.onnx":
            f.unlink()  # keep only the graph under test, so the runtime must use it
    manifest = json.loads((directory / "lmforge.json").read_text())
    manifest["files"] = {"fp32": "model.onnx"}
    (directory / "lmforge.json").write_text(json.dumps(manifest))
    return directory


def with_external_weights(src: Path, dst: Path, location: str | None = None) -> Path:
    """A copy of the model directory whose model.onnx keeps its weights in weights.bin beside it; then, when
    `location` is given, its graph is rewritten to name that location instead."""
    shutil.copytree(src, dst)
    only_fp32(dst)
    proto = onnx.load(str(dst / "model.onnx"))
    onnx.save_model(proto, str(dst / "model.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    if location is not None:
        proto = onnx.load(str(dst / "model.onnx"), load_external_data=False)
        for t in proto.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        (dst / "model.onnx").write_bytes(proto.SerializeToString())
    return dst


def test_wire_reader_agrees_with_onnx_on_a_real_export(model_dir, tmp_path):
    exported = with_external_weights(model_dir, tmp_path / "m")
    proto = onnx.load(str(exported / "model.onnx"), load_external_data=False)
    assert onnxwire.external_data_locations((exported / "model.onnx").read_bytes()) == reference_locations(proto) \
        == ["weights.bin"]
    plain = onnx.load(str(model_dir / "model.onnx"))
    assert onnxwire.external_data_locations(plain.SerializeToString()) == reference_locations(plain) == []


def test_damaged_bytes_are_a_wire_error_never_anything_else():
    data = model_with_tensors_everywhere().SerializeToString()
    rng = random.Random(0)
    outcomes = set()
    for _ in range(400):
        damaged = bytearray(data)
        if rng.random() < 0.5:
            damaged = damaged[:rng.randrange(1, len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            onnxwire.external_data_locations(bytes(damaged))
            outcomes.add("read")
        except onnxwire.WireError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}  # both kinds of damage happened; no other exception escaped


def test_truncated_model_naming_external_data_is_a_model_dir_error(model_dir, tmp_path):
    exported = with_external_weights(model_dir, tmp_path / "m")
    onnx_file = exported / "model.onnx"
    data = onnx_file.read_bytes()
    onnx_file.write_bytes(data[:data.rfind(b"weights.bin") + 4])  # cut inside the last location string
    with pytest.raises(ModelDirError, match="model.onnx is not a valid ONNX model: field .* runs past the end"):
        read_model_dir(exported).onnx_path("fp32")


RUNTIME_ONLY = """
import importlib.abc, json, sys
BLOCKED = {"torch", "prefect", "mlflow", "onnx", "pandas", "pyjokes", "safetensors", "rich", "matplotlib"}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
sys.meta_path.insert(0, NotInstalled())
from lmforge.cli import main
from lmforge.runtime import Generator, ModelDirError
victim, inside = sys.argv[1], sys.argv[2]
try:
    Generator(victim, fast=False)
    print("LOADED")
except ModelDirError as exc:
    print("REFUSED", exc)
print("RC", main(["generate", "--model", victim, "--prompt", "why", "--max-new-tokens", "3"]))
print("INSIDE", json.dumps(Generator(inside, fast=False).generate("why", max_new_tokens=3, seed=0)))
print("ONNX_IMPORTED", "onnx" in sys.modules)
"""


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname"])
def test_runtime_only_install_refuses_external_data_outside_the_directory(model_dir, tmp_path, location):
    """As after `pip install lmforge`: onnx cannot be imported, and the check still runs (before this change it was
    skipped without onnx, leaving the refusal to onnxruntime's longer message)."""
    victim = with_external_weights(model_dir, tmp_path / "victim", location)
    shutil.copyfile(victim / "weights.bin", tmp_path / "secret.bin")  # something real to point at
    inside = with_external_weights(model_dir, tmp_path / "inside")
    out = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, str(victim), str(inside)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith(f"REFUSED model.onnx names {location!r}, which lies outside {victim} (hint: ")
    assert lines[1] == "RC 2"
    assert f"error: model.onnx names {location!r}, which lies outside" in out.stderr
    assert lines[2].startswith("INSIDE ")  # external data inside the directory still loads and generates
    assert lines[3] == "ONNX_IMPORTED False"
