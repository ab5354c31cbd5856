"""`pip install .` (a wheel, not the editable checkout) as an app installs lmforge: its presets come with it,
`lmforge generate` runs an exported directory, and nothing resolves to the source tree. Run from a directory
outside the checkout, in a fresh venv whose only lmforge is the wheel (its dependencies come from this test
environment's site-packages, appended after the venv's own, so nothing is downloaded)."""
from __future__ import annotations

import json
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, expected_provider, tiny_random_gpt


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("lmforge-*.whl")
    venv = tmp / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    # dependencies only: a path listed in a .pth file does not run that directory's own .pth files, so the test
    # environment's editable lmforge (a .pth finder) stays invisible to the venv
    (Path(own) / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "lmforge"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_every_package_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lmforge").rglob("__init__.py")
             if "node_modules" not in p.parts}
    # flows/ and tasks/ install inside the package, never as top-level `flows` and `tasks` in site-packages
    found |= {"lmforge.flows", "lmforge.tasks", "lmforge.presets"}
    assert found <= listed and not {"flows", "tasks"} & listed


def test_the_installed_package_lists_its_presets_and_generates(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import lmforge, lmforge.core.config as c; "
                            "import lmforge.core.layout as l; print(lmforge.__file__); print(c.presets_dir()); print(lmforge.__version__); "
                            "print(l.artifacts_root())"],
                           capture_output=True, text=True, cwd=tmp_path, check=True,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout.splitlines()
    assert all(str(installed) in line for line in where[:2]) and where[2] != "0+unknown"
    assert where[3] == str(tmp_path / "artifacts")  # the working directory's, never site-packages
    tops = subprocess.run([str(installed / "bin" / "python"), "-c", "import importlib.util as u; "
                           "print(u.find_spec('flows'), u.find_spec('tasks'), u.find_spec('lmforge.flows.pipeline').origin)"],
                          capture_output=True, text=True, cwd=tmp_path, check=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout.split()
    assert tops[:2] == ["None", "None"] and tops[2].endswith("pipeline.py")  # no top-level flows/tasks installed
    presets = run(installed, "presets", cwd=tmp_path)
    assert presets.returncode == 0, presets.stderr
    table = presets.stdout.split("\n\n")[0].splitlines()  # the table, then notes after a blank line
    assert {ln.split()[0] for ln in table} == {p.stem for p in (REPO / "configs").glob("*.toml")}

    from lmforge.data.tokenize import special_ids, train_char
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir

    (tmp_path / "tok").mkdir()
    tok = train_char(["abcdefgh"])
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    manifest = {"name": "t", "tokenizer": {"kind": "char", "file": "tokenizer.json"}, "tokens": special_ids(tok),
                "generation": {}}
    out, _ = export_model_dir(model, tmp_path / "tok" / "tokenizer.json", tmp_path / "model", manifest,
                              ExportConfig(int8=False, optimize=False))
    got = run(installed, "generate", "--model", str(out), "--prompt", "abc", "--max-new-tokens", "5",
              "--temperature", "0", "--json", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    answer = json.loads(got.stdout)
    assert answer["provider"] == expected_provider() and set(answer["text"]) <= set("abcdefgh")
    assert not (tmp_path / "artifacts").exists() and not list(installed.rglob("artifacts"))


def test_the_wheel_ships_the_web_page_but_not_node_modules(installed, tmp_path):
    """`lmforge web` from the wheel: the page is there, onnxruntime-web is not (154 MB of node_modules stay out),
    and asking for it is one line naming the npm command that installs it beside the page."""
    web = subprocess.run([str(installed / "bin" / "python"), "-c", "import lmforge.web.server as s; print(s.WEB)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}).stdout.strip()
    assert str(installed) in web
    assert {p.name for p in Path(web).iterdir()} >= {"index.html", "app.js", "decode.js", "tokenizer.js",
                                                       "package.json", "package-lock.json"}
    assert not (Path(web) / "node_modules").exists()
    (tmp_path / "m").mkdir()
    r = run(installed, "web", str(tmp_path / "m"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "onnxruntime-web is not installed" in r.stderr and f"npm ci --prefix {web}" in r.stderr
