"""A newcomer's own data, as README.md's "Bring your own data" block runs it: a CSV, a JSONL and a text file the
test makes, each `lmforge run` as written (TINY settings appended), then `generate` from the registry. Each lands
in a model of its own named after the data (or --name), with a model card that describes that data, and trains
on the file's documents (the CSV's header row is no document). Also: jokes-gpt2's checkpoint, made by README's
command (a tiny local checkpoint standing in for the hub's name), is what lmforge loads; a model.pretrained that
is not a local directory stops `lmforge run` in one line before any run is recorded."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY, readme_commands

BLOCK = readme_commands("## Bring your own data")
ANIMALS = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "elk"]
JOKES = [f"Why did the {a} cross the {b}? To reach the other side." for a in ANIMALS
         for b in ("road", "river", "bridge", "field", "street")]  # 40 different documents: a document split
STORIES = [f"Once upon a time a {a} found a {b}. It was happy." for a in ANIMALS
           for b in ("key", "box", "star", "coin", "shoe")]
NOTES = [f"Note {i}: buy {w} and call {n}." for i, (w, n) in
         enumerate((w, n) for w in ("milk", "bread", "eggs", "tea", "rice") for n in ("Ann", "Bob", "Cy", "Di", "Ed",
                                                                                        "Flo", "Gus", "Hal"))]
EXPECTED = {"my_jokes.csv": ("my-jokes", JOKES), "stories.jsonl": ("stories", STORIES), "notes.txt": ("my-notes", NOTES)}


def tiny_args() -> list[str]:
    return [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


def make_files(d: Path) -> None:
    with open(d / "my_jokes.csv", "w", encoding="utf-8") as f:
        f.write("id,joke\n" + "".join(f'{i},"{j}"\n' for i, j in enumerate(JOKES)))
    (d / "stories.jsonl").write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(STORIES)))
    (d / "notes.txt").write_text("\n".join(NOTES) + "\n")


@pytest.fixture(scope="module")
def block(prefect_server, tmp_path_factory):
    """The README block, line by line, in a directory holding the three files; each line's result."""
    from prefect.settings import PREFECT_API_URL

    d = tmp_path_factory.mktemp("own-data")
    make_files(d)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's server, not a temporary one
           "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}", "LMFORGE_ARTIFACTS": str(d / "artifacts")}
    out = {}
    for line in BLOCK:
        words = shlex.split(line)
        assert words[0] == "lmforge", line
        if words[1] == "run":
            source = next(w.split("=", 1)[1] for w in words if w.startswith("data.source="))
            args = words[1:] + tiny_args() + ["--json"]
        else:
            args = words[1:]
        proc = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], cwd=d, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, f"{line}\n{proc.stderr[-3000:]}"
        out[source if words[1] == "run" else line] = proc
    return {"dir": d, "env": env, "out": out}


def first_document(run_dir: Path) -> str:
    """The first training document of a run: train.bin from its first <bos> to the next <eos>, decoded."""
    from tokenizers import Tokenizer

    from lmforge.data.shards import open_shard, read_meta

    data = run_dir / "data"
    ids = np.asarray(open_shard(data, "train"))
    special = read_meta(data)["special_ids"]
    start = int(np.flatnonzero(ids == special["bos"])[0]) + 1
    end = start + int(np.flatnonzero(ids[start:] == special["eos"])[0])
    return Tokenizer.from_file(str(data / "tokenizer.json")).decode(ids[start:end].tolist())


@pytest.mark.parametrize("source", list(EXPECTED))
def test_readme_own_data_block_lands_each_file_in_its_own_model(block, source, monkeypatch):
    from lmforge.registry.tracking import client

    proc = block["out"][source]
    name, documents = EXPECTED[source]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_name"] == name and result["model_uri"] == f"models:/{name}@candidate"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", block["env"]["MLFLOW_TRACKING_URI"])
    version = client().get_model_version(name, result["model_version"])
    card = version.description
    assert card.startswith(f"# {name}\n") and source in card
    assert "pyjokes" not in card and "one-liners" not in card  # never the preset's description of its own data
    if name == "my-notes":
        assert "\n\nMy notes, one a line.\n\n" in card
    else:
        assert f"trained with lmforge's `jokes-char` recipe on {source}: " in card
    assert "| prompt | temperature | seed | text |" in card and "| Why | 1 | 0 | Why" in card
    assert "lmforge's is `lmforge promote " + name + "`" in card
    assert version.tags["preset"] == "jokes-char" and version.tags["data_source"].endswith(source)
    first = first_document(Path(result["run_dir"]))
    assert first in documents  # a row's text: not the header, not the id column
    val = [json.loads(x) for x in (Path(result["run_dir"]) / "data" / "val.jsonl").read_text().splitlines()]
    assert first == next(doc for doc in documents if doc not in val)  # the file's first document not held out


def test_readme_generate_line_reads_the_new_model(block):
    line = next(k for k in block["out"] if k.startswith("lmforge generate"))
    assert "my-jokes@candidate" in line and block["out"][line].stdout.startswith("Why")


def test_run_help_and_the_unknown_key_error_name_name_and_description():
    help_text = subprocess.run([sys.executable, "-m", "lmforge.cli", "run", "--help"], capture_output=True,
                               text=True, cwd=REPO, timeout=60).stdout
    assert "--name NAME" in help_text and "name=NAME" in help_text and "description=TEXT" in help_text
    bad = subprocess.run([sys.executable, "-m", "lmforge.cli", "run", "--set", "nmae=x"], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "did you mean 'name'?" in bad.stderr and "valid keys: name, description, data.source" in bad.stderr


def test_foreign_data_never_takes_a_presets_name(tmp_path):
    from lmforge.core.config import load_config
    from lmforge.core.errors import LmforgeError

    assert load_config("jokes-char").name == "jokes-char"
    assert load_config("jokes-char", {"data.source": "pyjokes"}).name == "jokes-char"  # the preset's own source
    assert load_config("jokes-char", {"data.source": str(tmp_path / "Reddit Jokes.CSV")}).name == "reddit-jokes"
    assert load_config("shakespeare-char", {"data.source": "https://h/x/input.txt?token=1"}).name == "input"
    assert load_config("jokes-char", {"data.source": "x.csv", "name": "mine"}).name == "mine"
    local_copy = {"data.source": "../shared/corpora/tinyshakespeare.txt"}  # README: --name PRESET keeps its name
    assert load_config("shakespeare-char", local_copy).name == "tinyshakespeare"
    assert load_config("shakespeare-char", {**local_copy, "name": "shakespeare-char"}).name == "shakespeare-char"
    with pytest.raises(LmforgeError, match="would be 'shakespeare-char', preset shakespeare-char's model"):
        load_config("jokes-char", {"data.source": str(tmp_path / "shakespeare-char.txt")})


# -- jokes-gpt2: a checkpoint from README's command -------------------------------------------------------------

def gpt2_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("**jokes-gpt2 needs a GPT-2 checkpoint**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_checkpoint_command_writes_what_jokes_gpt2_loads(tmp_path):
    pytest.importorskip("transformers")
    from test_models import save_tiny_gpt2

    from lmforge.core.config import CHECKPOINT_COMMAND, load_config
    from lmforge.models import build_model

    make, run_line = gpt2_commands()
    assert make == CHECKPOINT_COMMAND  # README and `lmforge presets` give the same command
    presets = subprocess.run([sys.executable, "-m", "lmforge.cli", "presets"], capture_output=True, text=True,
                             cwd=REPO, timeout=60).stdout
    assert CHECKPOINT_COMMAND in presets and "lmforge run --preset jokes-gpt2 --set model.pretrained=" in presets
    (tmp_path / "hub-copy").mkdir()
    hub = save_tiny_gpt2(tmp_path / "hub-copy")  # stands in for the hub's openai-community/gpt2, offline
    words = shlex.split(make.replace("openai-community/gpt2", str(hub)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    made = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    local = tmp_path / "gpt2-local"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in local.iterdir()}
    assert run_line == "lmforge run --preset jokes-gpt2 --set model.pretrained=$PWD/gpt2-local"
    cfg = load_config("jokes-gpt2", {"model.pretrained": str(local)})
    assert cfg.tokenizer.path == str(local)
    from tokenizers import Tokenizer

    model = build_model(cfg.model, Tokenizer.from_file(str(local / "tokenizer.json")).get_vocab_size())
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_pretrained_that_is_no_local_directory_stops_before_any_run(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "run", "--preset", "jokes-gpt2", "--set",
                          "model.pretrained=gpt2"], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: model.pretrained 'gpt2' is not a local directory: lmforge downloads no weights")
    assert "from_pretrained('openai-community/gpt2').save_pretrained('gpt2-local')" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded: no MLflow store, let alone a FAILED run
