"""Bad input: every case ends in one line naming the problem (exit 2 through the CLI) and leaves no partial
artifact or registered version behind. Real Prefect flows, files, MLflow and onnxruntime."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, assert_error_line, restore_closed_log_streams
from lmforge.cli import main
from lmforge.core.errors import LmforgeError


@pytest.fixture(autouse=True)
def restore_log_streams():
    yield
    restore_closed_log_streams()


def tiny_model_dir(path: Path, text: str = "hello world, why not? a joke.", block_size: int = 16) -> Path:
    """A tiny random GPT exported to `path` (seconds): the runtime's real input, without a training run."""
    import torch

    from lmforge.core.config import ModelConfig
    from lmforge.data.tokenize import special_ids, train_char
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models import build_model

    torch.manual_seed(0)
    tok = train_char([text])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok_file = path.parent / f"{path.name}-tokenizer.json"
    tok.save(str(tok_file))
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size), tok.get_vocab_size())
    manifest = {"name": "tiny", "tokenizer": {"kind": "char", "file": "tokenizer.json"}, "tokens": special_ids(tok),
                "generation": {"temperature": 1.0, "top_k": 0, "max_new_tokens": 20}}
    export_model_dir(model, tok_file, path, manifest, ExportConfig(int8=False))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def copy_of(model_dir, tmp_path):
    def copy() -> Path:
        dst = tmp_path / "model"
        shutil.copytree(model_dir, dst)
        return dst
    return copy


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def one_line_error(rc: int, err: str, *needles: str) -> None:
    last = err.splitlines()[-1] if err else ""
    assert rc == 2, err
    assert_error_line(last)  # `error: <problem> (hint: <fix>)`, one hint
    for n in needles:
        assert n in last, (n, last)


# -- config: before any flow starts -----------------------------------------------------------------------------
def test_unknown_preset(capsys):
    rc, err = cli(capsys, "prepare", "--preset", "jokes-chars")
    one_line_error(rc, err, "unknown preset 'jokes-chars'", "jokes-char")


@pytest.mark.parametrize("argv, problem", [
    (["run", "--set", "promote.margin=-1"], "promote.margin must be >= 0"),
    (["run", "--set", "promote.gate=-0.5"], "promote.gate must be >= 0"),
    (["run", "--set", "export.int8_kernel=fast"], "export.int8_kernel must be one of blocks, dynamic"),
    (["schedule", "on", "no-such"], "no deployment named 'no-such' in prefect.yaml"),
    (["schedule", "setup", "--stuck-after", "5"], "proactive triggers need at least 10 seconds"),
    (["serve"], "name the deployments to serve"),
    (["doctor", "--pool", "no-such"], "prefect.yaml names no work pool 'no-such'"),
])
def test_operating_commands_refuse_bad_input_before_any_server(capsys, argv, problem):
    rc, err = cli(capsys, *argv)
    one_line_error(rc, err, problem, "(hint: ")
    assert err.count("\n") == 0, err


def test_mistyped_set_key_suggests_the_close_match_and_lists_keys(capsys):
    rc, err = cli(capsys, "run", "--set", "train.max_step=5")
    one_line_error(rc, err, "unknown config key 'train.max_step'", "did you mean 'train.max_steps'",
                   "valid keys:", "model.block_size")


@pytest.mark.parametrize("key, value, type_name", [("train.max_steps", "many", "int"),
                                                   ("eval.prompts", "[oops", "list")])
def test_wrong_value_type_names_the_type_and_an_example(capsys, key, value, type_name):
    """README: a value of the wrong type is one line naming the type the key expects, with an example."""
    rc, err = cli(capsys, "run", "--set", f"{key}={value}")
    one_line_error(rc, err, f"{key} expects {type_name}", f"(hint: e.g. --set {key}=")
    assert "valid keys" not in err


def test_every_keys_type_example_has_that_type():
    """The example in a type error's hint is of the key's type, for every key that can have the wrong type (an
    example may still be out of range for the preset, e.g. model.n_head=100: that is another error)."""
    from lmforge.core.config import load_config, valid_keys
    from lmforge.core.errors import LmforgeError

    typed = 0
    for key in valid_keys():
        try:
            load_config("jokes-char", {key: "[not a value"})
            continue  # a text key takes anything
        except LmforgeError as e:
            if " expects " not in e.message:
                continue  # refused for another reason (a choice, a path): no type to show
            example = e.hint.removeprefix(f"e.g. --set {key}=")
            assert example != e.hint, e.hint
        typed += 1
        try:
            load_config("jokes-char", {key: example})
        except LmforgeError as e:
            assert " expects " not in e.message, (key, example, e.message)
    assert typed > 30  # ints, floats, bools and lists: most of the config


def test_set_without_equals(capsys):
    rc, err = cli(capsys, "run", "--set", "train.max_steps")
    one_line_error(rc, err, "--set expects key=value")


# -- corpora: through `lmforge prepare` (a real Prefect flow) --------------------------------------------------
@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    """A copy of jokes-char under its own name, so nothing it registers collides with other tests."""
    path = tmp_path_factory.mktemp("presets") / "badinput.toml"
    path.write_text((REPO / "configs" / "jokes-char.toml").read_text())
    return path


def assert_nothing_left(preset: Path, overrides: dict) -> None:
    from lmforge.core.config import load_config
    from lmforge.core.layout import RunLayout
    from lmforge.registry.tracking import client

    cfg = load_config(str(preset), overrides)
    layout = RunLayout.for_config(cfg)
    assert not (layout.prepared / "meta.json").exists() and not list(layout.prepared.glob("*.bin"))
    for d in (layout.prepared, layout.cache):
        assert not list(d.rglob("*.tmp")) if d.exists() else True, d
    assert layout.run_dirs() == []  # no run directory: nothing trained, nothing exported
    assert client().search_model_versions(f"name='{cfg.name}'") == []


def prepare(capsys, preset: Path, overrides: dict) -> tuple[int, str]:
    args = ["prepare", "--preset", str(preset)]
    for k, v in overrides.items():
        args += ["--set", f"{k}={v}"]
    return cli(capsys, *args)


def test_missing_corpus_file(prefect_server, capsys, preset, tmp_path):
    o = {"data.source": str(tmp_path / "nope.txt")}
    rc, err = prepare(capsys, preset, o)
    one_line_error(rc, err, "nope.txt does not exist", "data.source")
    assert_nothing_left(preset, o)


def test_empty_corpus(prefect_server, capsys, preset, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    o = {"data.source": str(tmp_path / "empty.txt")}
    rc, err = prepare(capsys, preset, o)
    one_line_error(rc, err, "no documents", "empty.txt")
    assert_nothing_left(preset, o)


def test_csv_without_the_named_column(prefect_server, capsys, preset, tmp_path):
    (tmp_path / "t.csv").write_text("title,body\na,b\nc,d\n")
    o = {"data.source": str(tmp_path / "t.csv"), "data.format": "csv", "data.column": "text"}
    rc, err = prepare(capsys, preset, o)
    one_line_error(rc, err, "column 'text' not found", "columns are: title, body")
    assert_nothing_left(preset, o)


def test_tsv_read_as_csv_names_the_delimiter(prefect_server, capsys, preset, tmp_path):
    (tmp_path / "t.tsv").write_text("text\tlabel\nhello there\t1\ngood bye\t0\n")
    o = {"data.source": str(tmp_path / "t.tsv"), "data.format": "csv", "data.column": "text"}
    rc, err = prepare(capsys, preset, o)
    one_line_error(rc, err, "column 'text' not found", "data.format=tsv")
    assert_nothing_left(preset, o)


def test_non_utf8_names_file_and_offset(prefect_server, capsys, preset, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\nsecond line\n".encode("latin-1"))
    o = {"data.source": str(tmp_path / "latin1.txt")}
    rc, err = prepare(capsys, preset, o)
    one_line_error(rc, err, "latin1.txt is not valid UTF-8", "byte 0xe9 at offset 3", "encoding_errors=replace")
    assert_nothing_left(preset, o)


def test_corpus_shorter_than_one_context_window(prefect_server, capsys, preset, tmp_path):
    (tmp_path / "short.txt").write_text("ab\ncd\nef\ngh\n")
    o = {**TINY, "data.source": str(tmp_path / "short.txt")}
    rc, err = cli(capsys, "run", "--preset", str(preset), *[a for k, v in o.items() for a in ("--set", f"{k}={v}")])
    one_line_error(rc, err, "fewer than one context window (33)", "model.block_size")
    from lmforge.core.config import load_config
    from lmforge.core.layout import RunLayout
    from lmforge.registry.tracking import client

    cfg = load_config(str(preset), o)  # named after its data, short.txt: not the preset's own source
    layout = RunLayout.for_config(cfg)
    assert layout.run_dirs() == []  # the data did not fit: no run directory was made
    assert client().search_model_versions(f"name='{cfg.name}'") == []
    exp = client().get_experiment_by_name(f"lmforge-{cfg.name}")
    run_name = f"{cfg.name}-{layout.weights}"
    runs = client().search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    assert runs and {r.info.status for r in runs} == {"FAILED"}  # the flow's on_failure hook closed it


# -- data layer directly -----------------------------------------------------------------------------------------
def test_vocabulary_too_large_for_the_shard_dtype(tmp_path):
    from lmforge.data.shards import write_shards

    with pytest.raises(LmforgeError, match="does not fit a uint32 shard") as exc:
        write_shards(iter([(np.arange(4), np.array([4]))]), np.array([False]), tmp_path / "shards", 2**32 + 1)
    assert "vocab_size" in exc.value.hint
    assert not (tmp_path / "shards").exists()  # refused before anything was written


# -- runtime ------------------------------------------------------------------------------------------------------
def test_prompt_with_unseen_characters_generates(model_dir):
    from lmforge.runtime import Generator

    gen = Generator(model_dir)
    assert gen.unk in gen.encode("\u4e2d\u6587 zq\U0001f600")  # characters the tokenizer never saw -> <unk>
    text = gen.generate("\u4e2d\u6587 zq\U0001f600", max_new_tokens=10, seed=0)
    assert text == gen.generate("\u65e5\u672c zq\U0001f601", max_new_tokens=10, seed=0)  # other unseen ones: the same <unk>s


def test_max_new_tokens_past_the_context_slides_the_window(copy_of):
    """Decided behaviour: generation continues past the context with a sliding window (keeps the last half)."""
    from lmforge.runtime import Generator

    d = copy_of()
    manifest = json.loads((d / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = None  # never stop early, so every requested token is produced
    (d / "lmforge.json").write_text(json.dumps(manifest))
    gen = Generator(d)
    text = gen.generate("why", max_new_tokens=3 * gen.block_size, temperature=0.0)
    assert len(text) > gen.block_size


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    import torch

    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Checkpoints
    from lmforge.training.train import make_optimizer

    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 10)
    opt = make_optimizer(model, TrainConfig(), "cpu")
    ck = Checkpoints(tmp_path)
    ck.save("last", model, opt, {"step": 1, "data_rng": torch.Generator().get_state()})
    weights = tmp_path / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LmforgeError, match="checkpoint .* is corrupted") as exc:
        ck.load_model("last", model)
    assert "delete" in exc.value.hint and "\n" not in str(exc.value)
    ck.save("last", model, opt, {"step": 1, "data_rng": torch.Generator().get_state()})
    optim = tmp_path / "last" / "optimizer.pt"
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    with pytest.raises(LmforgeError, match="optimizer.pt is corrupted"):
        ck.load_training("last", model, opt)


def test_truncated_onnx_through_generate(copy_of, capsys):
    d = copy_of()
    for f in d.glob("*.onnx"):  # model.onnx and the fast graph the runtime prefers, when exported
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc, err = cli(capsys, "generate", "--model", str(d), "--prompt", "why")
    one_line_error(rc, err, "onnxruntime cannot load", ".onnx", "Protobuf parsing failed")
    assert len(err.splitlines()) == 1


def test_empty_onnx_through_generate(copy_of, capsys):
    d = copy_of()
    for f in d.glob("*.onnx"):
        f.write_bytes(b"")
    rc, err = cli(capsys, "generate", "--model", str(d))
    one_line_error(rc, err, ".onnx is empty", "re-export")


def test_corrupted_tokenizer_json(copy_of, capsys):
    d = copy_of()
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Wor')
    rc, err = cli(capsys, "generate", "--model", str(d))
    one_line_error(rc, err, "cannot read tokenizer", "tokenizer.json", "copy the model directory again")


def test_tokenizer_that_does_not_match_the_model(copy_of, capsys):
    from lmforge.data.tokenize import train_char

    d = copy_of()
    train_char(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"]).save(str(d / "tokenizer.json"))
    rc, err = cli(capsys, "generate", "--model", str(d))
    one_line_error(rc, err, "the tokenizer does not belong to this model", "put back the tokenizer.json")


def test_missing_model_directory(capsys, tmp_path):
    rc, err = cli(capsys, "generate", "--model", str(tmp_path / "nothing"))
    one_line_error(rc, err, "is not an lmforge model directory", "models:/NAME@ALIAS")


def test_runtime_errors_read_like_lmforge_errors():
    """The torch-free runtime's errors have LmforgeError's shape without importing it: message, hint, one line;
    still ValueErrors; the hint survives a pickle (LitServe's worker processes hand errors back)."""
    import pickle

    from lmforge.runtime import ModelDirError, RequestError, RuntimeInputError

    e = RequestError("top_p must be a number in (0, 1], got 2", hint="pass e.g. top_p 0.9")
    assert (e.message, e.hint, str(e)) == ("top_p must be a number in (0, 1], got 2", "pass e.g. top_p 0.9",
                                           "top_p must be a number in (0, 1], got 2 (hint: pass e.g. top_p 0.9)")
    assert str(LmforgeError(e.message, hint=e.hint)) == str(e)
    assert isinstance(e, RuntimeInputError) and isinstance(e, ValueError)
    back = pickle.loads(pickle.dumps(ModelDirError("x is empty", hint="re-export")))
    assert type(back) is ModelDirError and (back.message, back.hint) == ("x is empty", "re-export")
    assert str(RuntimeInputError("no hint")) == "no hint"


@pytest.mark.parametrize("argv, problem, fix", [
    (["--temperature", "-1"], "temperature must be a finite number >= 0", "0 for greedy decoding"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0", "pass max_new_tokens from 1 to"),
    (["--variant", "int4", "--max-new-tokens", "2"], "has no 'int4' model", "--set export.int4=true"),
])
def test_bad_requests_through_generate_name_the_fix(model_dir, capsys, argv, problem, fix):
    rc, err = cli(capsys, "generate", "--model", str(model_dir), "--prompt", "why", *argv)
    one_line_error(rc, err, problem, fix)


def test_a_runtime_error_under_any_command_is_one_line(monkeypatch, capsys, tmp_path):
    """`lmforge promote` and the evaluation load model directories with the runtime too: its errors are bad input
    (one line with the fix, exit 2) under every command, not only `generate`; any other ValueError stays a bug."""
    import lmforge.cli as cli_module
    from lmforge.runtime import read_model_dir

    monkeypatch.setattr(cli_module, "cmd_presets", lambda args: read_model_dir(tmp_path))  # as promote() does
    rc, err = cli(capsys, "presets")
    one_line_error(rc, err, "is not an lmforge model directory", "models:/NAME@ALIAS")
    monkeypatch.setattr(cli_module, "cmd_presets", lambda args: int("many"))
    with pytest.raises(ValueError, match="many"):
        main(["presets"])


# -- a full disk (a 64 KiB tmpfs; needs root) ----------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        pytest.skip("no mount command")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_while_writing_shards_leaves_nothing(tiny_disk):
    import errno

    from lmforge.data.shards import write_shards

    docs = [(np.arange(4096 * 4) % 100, np.full(4, 4096)) for _ in range(10)]  # 40 x 8 KiB of uint16 > 64 KiB
    with pytest.raises(OSError) as exc:
        write_shards(iter(docs), np.zeros(40, bool), tiny_disk / "shards", 100)
    assert exc.value.errno == errno.ENOSPC
    assert not list((tiny_disk / "shards").iterdir())


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_disk):
    import errno

    import torch

    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Checkpoints
    from lmforge.training.train import make_optimizer

    small = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8), 10)
    ck = Checkpoints(tiny_disk / "ckpt")
    ck.save("last", small, None, {"step": 1})
    big = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64), 100)  # ~400 KiB of weights
    with pytest.raises(OSError) as exc:
        ck.save("last", big, make_optimizer(big, TrainConfig(), "cpu"),
                {"step": 2, "data_rng": torch.Generator().get_state()})
    assert exc.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tiny_disk / "ckpt").iterdir()) == ["last"]
    assert ck.load_model("last", small)["step"] == 1


def test_full_disk_is_one_line_through_the_cli(prefect_server, tiny_disk, capsys, preset, monkeypatch, tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text("".join(f"line {i} of a corpus larger than the disk\n" for i in range(5000)))  # ~200 KB
    monkeypatch.setenv("LMFORGE_ARTIFACTS", str(tiny_disk))
    rc, err = cli(capsys, "prepare", "--preset", str(preset), "--set", f"data.source={corpus}")
    one_line_error(rc, err, "disk full writing", "LMFORGE_ARTIFACTS")
    assert not [p for p in tiny_disk.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".bin"]
