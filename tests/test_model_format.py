"""docs/model-format.md against real exports: the TINY jokes-char pipeline with every variant switched on (gpt),
and an lstm and a gru exported by the same exporter. The doc's tables are parsed and compared with the files,
the manifests and the graphs' real inputs and outputs (onnx.load and onnxruntime sessions); the cache layouts
it describes are fed by hand; its Python examples run."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, TINY

DOC = (REPO / "docs" / "model-format.md").read_text(encoding="utf-8")
FLAGS = ("int8", "optimize", "fp16", "int4", "rows_graph")
ONNX_TYPES = {"int64": onnx.TensorProto.INT64, "int32": onnx.TensorProto.INT32, "float32": onnx.TensorProto.FLOAT,
              "float16": onnx.TensorProto.FLOAT16}
ORT_TYPES = {"int64": "tensor(int64)", "int32": "tensor(int32)", "float32": "tensor(float)", "float16": "tensor(float16)"}
SYMBOLIC = {"batch", "seq", "past", "total", "capacity", "total_sequence_length"}


# -- reading the doc ------------------------------------------------------------------------------------------
def section(heading: str) -> str:
    """The text under the heading whose title starts with `heading`, up to the next heading of its level or above."""
    m = re.search(rf"^(#+) {re.escape(heading)}.*$", DOC, re.MULTILINE)
    assert m, f"docs/model-format.md has no heading {heading!r}"
    rest = DOC[m.end():]
    end = re.search(rf"^#{{1,{len(m.group(1))}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def heading_line(heading: str) -> str:
    return re.search(rf"^#+ {re.escape(heading)}.*$", DOC, re.MULTILINE).group(0)


def table(heading: str) -> list[dict]:
    lines = [ln for ln in section(heading).splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head, rows = cells[0], cells[2:]
    return [dict(zip(head, r)) for r in rows]


def ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def qualifier(cell: str) -> set[str]:
    m = re.search(r"\(([^)]*)\)", cell)
    return {q.strip() for q in m.group(1).split(",")} if m else set()


def code(heading: str, lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", section(heading), re.DOTALL).group(1)


# -- real exports -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt(prefect_server, tmp_path_factory) -> Path:
    """The pipeline's own export (real training, real manifest) with every variant on, in a registry of its own."""
    from lmforge.flows.pipeline import pipeline

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('format') / 'mlflow.db'}")
    try:
        # every variant on; a TINY model's choices are near ties, so the int4 agreement bound is not what this checks
        result = pipeline(preset="jokes-char", overrides={**TINY, "export.int8": True, "export.optimize": True,
                                                          "export.fp16": True, "export.int4": True,
                                                          "export.rows_graph": True,
                                                          "export.min_int4_agreement": 0})
    finally:
        mp.undo()
    return Path(result["model_dir"])


def export_family(gpt_dir: Path, out: Path, family: str, **flags) -> Path:
    """A random-weight `family` model exported by lmforge.export.modeldir.export_model_dir with the pipeline export's
    tokenizer and provenance."""
    from lmforge.core.config import ModelConfig
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models import build_model

    manifest = json.loads((gpt_dir / "lmforge.json").read_text())
    provenance = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "model", "io", "files")}
    cfg = ModelConfig(family=family, n_layer=2, n_head=2, n_embd=16, n_hidden=24, block_size=32)
    model = build_model(cfg, manifest["model"]["vocab_size"], seed=0)
    return export_model_dir(model, gpt_dir / "tokenizer.json", out, provenance, ExportConfig(**flags))[0]


@pytest.fixture(scope="module")
def rnn(gpt, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rnn")
    return {f: export_family(gpt, tmp / f, f, int8=True, optimize=False, fp16=False) for f in ("lstm", "gru")}


def manifest(d: Path) -> dict:
    return json.loads((d / "lmforge.json").read_text())


def written(row: dict, family: str, flags: dict) -> bool:
    """Whether the Files table's `written` cell holds for this export (`export.gguf` holds unless it is none; a
    cell naming tokenizer kinds holds for those kinds)."""
    cond = row["written"]
    if cond == "always":
        return True
    ok = family == "gpt" if "gpt family" in cond else True
    if "tokenizer" in cond:
        ok = ok and flags.get("tokenizer") in [t for t in ticks(cond) if not t.startswith("export.")]
    exported = [t.removeprefix("export.") for t in ticks(cond) if t.startswith("export.")]
    return ok and all(flags[t] != "none" if t == "gguf" else flags[t] for t in exported)


def file_name(row: dict, flags: dict) -> str:
    """The file a Files row names; model.<type>.gguf by the export's type."""
    name = ticks(row["file"])[0]
    return name.replace(".f16.", f".{flags['gguf']}.") if name.endswith(".gguf") else name


# -- Files ------------------------------------------------------------------------------------------------------
def test_files_table_is_every_file_and_its_conditions(gpt, rnn, tmp_path):
    from lmforge.runtime.modeldir import external_data_locations

    rows = table("Files")
    plain = export_family(gpt, tmp_path / "plain", "gpt", int8=False, optimize=False, fp16=False, int4=False,
                          hf=False, gguf="none")
    default = {"hf": True, "gguf": "f16"}
    exports = [(gpt, "gpt", {**dict.fromkeys(FLAGS, True), **default}),
               (plain, "gpt", {**dict.fromkeys(FLAGS, False), "hf": False, "gguf": "none"}),
               *[(d, f, {"int8": True, "optimize": False, "fp16": False, "int4": True, "rows_graph": False, **default})
                 for f, d in rnn.items()]]
    for d, family, flags in exports:
        flags = {**flags, "tokenizer": manifest(d)["tokenizer"]["kind"]}  # jokes-char: char
        expected = [r for r in rows if written(r, family, flags)]
        assert sorted(p.name for p in d.iterdir()) == sorted(file_name(r, flags) for r in expected), (d, family)
        assert manifest(d)["files"] == {ticks(r["variant"])[0]: ticks(r["file"])[0]
                                        for r in expected if ticks(r["variant"])}
        for f in d.glob("*.onnx"):
            assert external_data_locations(f) == [], f  # self-contained


# -- lmforge.json -----------------------------------------------------------------------------------------------
def test_manifest_table_is_every_key_and_field(gpt, rnn):
    rows = table("lmforge.json")
    for d, family in [(gpt, "gpt"), (rnn["lstm"], "lstm"), (rnn["gru"], "gru")]:
        m = manifest(d)
        mine = [r for r in rows if not qualifier(r["key"]) or family in qualifier(r["key"])]
        assert sorted(m) == sorted(ticks(r["key"])[0] for r in mine), family
        for r in mine:
            key, fields = ticks(r["key"])[0], ticks(r["fields"])
            if key == "files":  # variant -> file: test_files_table_is_every_file_and_its_conditions
                continue
            if not fields:
                assert not isinstance(m[key], dict), key
            elif key == "metrics":  # "at least these"
                assert set(fields) <= set(m[key]), (fields, sorted(m[key]))
            else:
                assert sorted(m[key]) == sorted(fields), (family, key)
    m = manifest(gpt)
    assert [m["format"], m["format_version"]] == [json.loads(t) for t in ticks(rows[0]["content"]) + ticks(rows[1]["content"])]
    assert manifest(rnn["lstm"])["model"]["state"] == ["h", "c"] and manifest(rnn["gru"])["model"]["state"] == ["h"]
    assert {s["kind"] for s in m["io"]["state"]} == {"kv"} and {s["kind"] for s in m["io"]["fast"]["state"]} == {"kv-buffer"}
    lstm = manifest(rnn["lstm"])
    assert {s["kind"] for s in lstm["io"]["state"]} == {"rnn"}
    assert all(s["shape"] == [2, "batch", 24] for s in lstm["io"]["state"])  # [n_layer, "batch", n_hidden]


def test_the_run_directory_and_the_generation_defaults(gpt):
    from lmforge.runtime import Generator

    assert gpt.name == "model" and gpt.parent.parent.name == "runs" and gpt.parent.name.startswith("jokes-char-")
    card = (gpt / "hf" / "README.md").read_text()  # the pipeline's samples step wrote them into the model card
    assert card.startswith("---\n") and "## Samples" in card and "temperature 1.0" in card
    gen, defaults = Generator(gpt), manifest(gpt)["generation"]
    assert gen.generate("Why", seed=3) == gen.generate("Why", seed=3, **defaults)  # used when a caller gives none
    assert gen.generate("Why", seed=3) != gen.generate("Why", seed=3, temperature=0)


def test_readers_refuse_another_format_or_version(gpt, tmp_path):
    from lmforge.runtime.modeldir import ModelDirError, read_model_dir

    for key, value in (("format", "other-model"), ("format_version", 2)):
        d = tmp_path / key
        shutil.copytree(gpt, d)
        (d / "lmforge.json").write_text(json.dumps({**manifest(gpt), key: value}))
        with pytest.raises(ModelDirError, match="this runtime reads lmforge-model v1"):
            read_model_dir(d)


# -- Graphs -----------------------------------------------------------------------------------------------------
def documented_io(heading: str, spec: dict, family: str) -> dict[str, dict]:
    """{"in"/"out": {name: (type, shape)}} from a graph table, {i} expanded, (lstm) rows kept for lstm only."""
    io = {"in": {}, "out": {}}
    for r in table(heading):
        if qualifier(r["name"]) and family not in qualifier(r["name"]):
            continue
        dims = [d.strip() for d in r["shape"].strip("[]").split(",") if d.strip()]
        shape = [d if d in SYMBOLIC else int(d) if d.isdigit() else spec[d] for d in dims]
        name = ticks(r["name"])[0]
        names = [name.replace("{i}", str(i)) for i in range(spec["n_layer"])] if "{i}" in name else [name]
        names = [n.replace("{r}", str(row)) for n in names for row in range(ROWS)] if "{r}" in name else names
        for n in names:
            io[r["in/out"]][n] = (r["type"], shape)
    return io


def real_io(path: Path) -> dict[str, dict]:
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}

    def one(v):
        t = v.type.tensor_type
        kind = next(k for k, code in ONNX_TYPES.items() if code == t.elem_type)
        return kind, [d.dim_param or d.dim_value for d in t.shape.dim]

    return {"in": {v.name: one(v) for v in proto.graph.input if v.name not in inits},
            "out": {v.name: one(v) for v in proto.graph.output}}


ROWS = 8  # the rows graph's rows (lmforge.export.fast.ROWS)
GRAPHS = {"Portable graph, gpt": ("gpt",), "Fast graph, gpt": ("gpt",), "Rows graph, gpt": ("gpt",),
          "Fast graph in float16, gpt": ("gpt",),
          "onnxruntime-genai graph, gpt": ("gpt",), "Recurrent graph, lstm and gru": ("lstm", "gru")}


def test_graph_tables_are_the_graphs_inputs_and_outputs(gpt, rnn):
    dirs = {"gpt": gpt, **rnn}
    checked = set()
    for heading, families in GRAPHS.items():
        files = [f.strip() for f in heading_line(heading).split(":", 1)[1].split(",")]
        for family in families:
            d = dirs[family]
            spec = manifest(d)["model"]
            doc = documented_io(heading, spec, family)
            for f in files:
                assert (d / f).is_file(), (family, f)
                assert real_io(d / f) == doc, (family, f)
                sess = ort.InferenceSession(str(d / f), providers=["CPUExecutionProvider"])
                assert {i.name: i.type for i in sess.get_inputs()} == {n: ORT_TYPES[t] for n, (t, _) in doc["in"].items()}
                assert {o.name: o.type for o in sess.get_outputs()} == {n: ORT_TYPES[t] for n, (t, _) in doc["out"].items()}
                checked.add((family, f))
    onnx_files = {(f, p.name) for f, d in dirs.items() for p in d.glob("*.onnx")}
    assert checked == onnx_files  # every graph of every export is in one of the tables
    fast = onnx.load(str(gpt / "model.fast.onnx"))
    assert "com.microsoft" in {o.domain for o in fast.opset_import}


def test_portable_cache_layout_left_padding_and_positions(gpt):
    """Two prompts, the shorter left-padded, positions = cumsum(mask) - 1: each row's last logits equal the row
    run alone; then one cached decode step (present -> past, mask grown by one) equals the longer prompt run whole."""
    spec, io = manifest(gpt)["model"], manifest(gpt)["io"]
    sess = ort.InferenceSession(str(gpt / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [io["logits"]] + [s["output"] for s in io["state"]]
    empty = lambda b: {s["input"]: np.zeros((b, spec["n_head"], 0, spec["head_dim"]), np.float32)
                       for s in io["state"]}

    def run(ids, mask, past, pos):
        out = sess.run(names, {"input_ids": ids, "position_ids": pos, "attention_mask": mask, **past})
        return out[0], {s["input"]: o for s, o in zip(io["state"], out[1:])}

    long, short = [5, 9, 7, 11, 6], [8, 10]
    ids = np.array([long, [0] * 3 + short], np.int64)
    mask = np.array([[1] * 5, [0] * 3 + [1] * 2], np.int64)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, past = run(ids, mask, empty(2), pos)
    for row, prompt in enumerate((long, short)):
        alone, _ = run(np.array([prompt], np.int64), np.ones((1, len(prompt)), np.int64), empty(1),
                       np.arange(len(prompt))[None])
        assert np.abs(logits[row, -1] - alone[0, -1]).max() < 1e-4
    step, _ = run(np.array([[4], [4]], np.int64), np.concatenate([mask, [[1], [1]]], axis=1), past,
                  np.array([[5], [2]], np.int64))
    whole, _ = run(np.array([long + [4]], np.int64), np.ones((1, 6), np.int64), empty(1), np.arange(6)[None])
    assert np.abs(step[0, -1] - whole[0, -1]).max() < 1e-4


def test_fast_cache_layout_right_padding_and_seqlens(gpt):
    """Right-padded rows in fixed-capacity buffers (seqlens_k = tokens after the call - 1): each row's logits at
    its last real token, and after one step with present fed back as past, equal the portable graph's."""
    spec, io = manifest(gpt)["model"], manifest(gpt)["io"]["fast"]
    fast = ort.InferenceSession(str(gpt / "model.fast.onnx"), providers=["CPUExecutionProvider"])
    portable = ort.InferenceSession(str(gpt / "model.onnx"), providers=["CPUExecutionProvider"])
    prompts, capacity = [[5, 9, 7, 11, 6], [8, 10]], 12
    lens = np.array([len(p) for p in prompts])
    ids = np.zeros((2, lens.max()), np.int64)
    pos = np.zeros((2, lens.max()), np.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], pos[i, :len(p)] = p, np.arange(len(p))
    kv = {s["input"]: np.zeros((2, spec["n_head"], capacity, spec["head_dim"]), np.float32) for s in io["state"]}
    names = [io["logits"]] + [s["output"] for s in io["state"]]
    out = fast.run(names, {"input_ids": ids, "position_ids": pos, "seqlens_k": (lens - 1).astype(np.int32),
                           "total_sequence_length": np.array(lens.max(), np.int32), **kv})
    kv = {s["input"]: o for s, o in zip(io["state"], out[1:])}
    step = fast.run(names, {"input_ids": np.array([[4], [4]], np.int64), "position_ids": lens[:, None].astype(np.int64),
                            "seqlens_k": lens.astype(np.int32), "total_sequence_length": np.array(lens.max() + 1, np.int32),
                            **kv})[0]

    def alone(p):
        past = {s["input"]: np.zeros((1, spec["n_head"], 0, spec["head_dim"]), np.float32)
                for s in manifest(gpt)["io"]["state"]}
        return portable.run(["logits"], {"input_ids": np.array([p], np.int64), "position_ids": np.arange(len(p))[None],
                                         "attention_mask": np.ones((1, len(p)), np.int64), **past})[0][0, -1]

    for i, p in enumerate(prompts):
        assert np.abs(out[0][i, len(p) - 1] - alone(p)).max() < 1e-3
        assert np.abs(step[i, 0] - alone(p + [4])).max() < 1e-3


def test_recurrent_state_layout(rnn):
    """Zeros before the prompt, new_state fed back as state: greedy tokens equal the Generator's."""
    from lmforge.runtime import Generator

    for family, d in rnn.items():
        m = manifest(d)
        spec, io = m["model"], m["io"]
        sess = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        gen = Generator(d, device="cpu")
        state = {s["input"]: np.zeros((spec["n_layer"], 1, spec["n_hidden"]), np.float32) for s in io["state"]}
        feed, out = np.array([gen.encode("Why")], np.int64), []
        for _ in range(12):
            res = sess.run([io["logits"]] + [s["output"] for s in io["state"]], {"input_ids": feed, **state})
            state = {s["input"]: o for s, o in zip(io["state"], res[1:])}
            out.append(int(res[0][0, -1].argmax()))
            feed = np.array([[out[-1]]], np.int64)
        assert gen.tokenizer.decode(out) == gen.generate("Why", max_new_tokens=12, temperature=0), family
        long = np.zeros((1, spec["block_size"] + 8), np.int64)  # no context limit: longer than block_size runs
        assert sess.run([io["logits"]], {"input_ids": long, **{s["input"]: np.zeros(
            (spec["n_layer"], 1, spec["n_hidden"]), np.float32) for s in io["state"]}})[0].shape[1] == long.shape[1]


# -- Which runtime loads which file -----------------------------------------------------------------------------
def test_which_file_each_generator_loads(gpt, rnn):
    from lmforge.runtime import Generator

    rows = [r for r in table("Which runtime loads which file")
            if (ticks(r["runtime"]) or [""])[0].startswith(("lmforge.runtime.Generator", "Generator"))]
    assert len(rows) == 6
    for d in (gpt, rnn["lstm"]):
        for r in rows:
            call = ticks(r["runtime"])[0]
            kwargs = {}
            if m := re.search(r'variant="(\w+)"', call):
                kwargs["variant"] = m.group(1)
            if "fast=False" in call:
                kwargs["fast"] = False
            files = ticks(r["file it loads"])
            if kwargs.get("fast") is False:  # "model.onnx (or the variant's portable file)"
                expected = files[0]
                gen_v = Generator(d, device="cpu", variant="int8", fast=False)
                assert Path(gen_v.session._model_path).name == "model.int8.onnx"
            else:
                present = [f for f in files if (d / f).is_file()]
                if not present:
                    continue  # a variant this export does not have (lstm: no opt, no fp16)
                expected = present[0]
            gen = Generator(d, device="cpu", **kwargs)
            assert Path(gen.session._model_path).name == expected, (d.name, call)


# -- Examples ---------------------------------------------------------------------------------------------------
def run_example(heading: str, model_dir: Path) -> dict:
    source = code(heading, "python")
    assert 'model_dir = "path/to/model"' in source
    namespace: dict = {}
    exec(compile(source.replace('"path/to/model"', repr(str(model_dir))), heading, "exec"), namespace)  # noqa: S102
    return namespace


def test_python_examples_run(gpt):
    from lmforge.runtime import Generator

    ns = run_example("Python: lmforge.runtime", gpt)
    assert len(ns["greedy"]) >= 10
    ns = run_example("Python: onnxruntime alone", gpt)
    assert ns["text"] == Generator(gpt, fast=False).generate("Why", max_new_tokens=20, temperature=0)
    assert len(ns["text"]) >= 10
