"""Config-derived paths stay inside their root: `name` is a safe slug, run directories are confined to the
artifacts root, and names taken from archive files or URLs cannot climb out of the cache."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.core.config import Config, load_config
from lmforge.data.download import cache_path
from lmforge.data.sources import acquire
from lmforge.core.errors import LmforgeError
from lmforge.core.layout import RunLayout

HOSTILE_NAMES = ["../../x", "../escape", "/etc/cron.d/x", "a/b", ".hidden", "..", ".", "", "x" * 101, "name with space",
                 "semi;colon", "nul\x00byte", "back\\slash"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_unsafe_name_is_refused_at_config_load(name):
    with pytest.raises(LmforgeError) as info:
        load_config("jokes-char", {"name": name})
    assert info.value.message.startswith(f"name {name!r} is not a safe name")
    assert "--set name=" in info.value.hint


@pytest.mark.parametrize("name", ["jokes-char", "my_run.2", "A-1", "x" * 100])
def test_safe_names_load(name):
    assert load_config("jokes-char", {"name": name}).name == name


def test_set_name_with_dot_dot_through_the_cli_writes_nothing(capsys, artifacts):
    before = set(artifacts.parent.iterdir())
    rc = main(["prepare", "--set", "name=../../x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: name '../../x' is not a safe name"), err
    assert set(artifacts.parent.iterdir()) == before


def test_deployment_parameter_name_is_refused_by_the_flow(prefect_server, artifacts):
    """A deployment passes `overrides` straight to the flow: the same check runs inside it."""
    from lmforge.flows.prepare import prepare

    escapes = lambda: set(Path("/tmp").glob("x*")) | set(artifacts.parent.glob("x*"))  # noqa: E731 - where ../ lands
    before, inside = escapes(), set(artifacts.rglob("*"))
    with pytest.raises(LmforgeError, match="is not a safe name"):
        prepare(preset="jokes-char", overrides={"name": "../../../tmp/x"})
    assert escapes() == before and not {p for p in set(artifacts.rglob("*")) - inside if "x" in p.name}


@pytest.mark.parametrize("name", ["../../outside", "/abs/olute", "a/../../b"])
def test_run_layout_refuses_paths_outside_the_artifacts_root(tmp_path, name):
    """Belt and braces: a Config built without load_config (no slug check) still cannot place a run outside."""
    with pytest.raises(LmforgeError, match="lies outside"):
        RunLayout.for_config(Config(name=name), tmp_path / "artifacts")


def test_run_layout_inside_the_root(tmp_path):
    where = RunLayout.for_config(load_config("jokes-char"), tmp_path / "artifacts")
    assert where.run_dir("0" * 64).root.parent == tmp_path / "artifacts" / "runs"
    assert where.prepared.parent == tmp_path / "artifacts" / "prepared"


def tiny_tar(path: Path) -> Path:
    data = b"hello world\n" * 10
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("doc.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("filename", ["..tar.gz", ".tar.gz", "...tar.gz", "we ird;name.tar.gz"])
def test_extraction_directory_named_after_a_local_archive_stays_in_the_cache(tmp_path, filename):
    archive = tiny_tar(tmp_path / filename)
    cache = tmp_path / "cache"
    out = acquire(str(archive), cache)
    assert out.parent == cache / "extracted" and out.name and not out.name.startswith(".")
    assert (out / "doc.txt").read_text().startswith("hello world")


@pytest.mark.parametrize("url", ["http://h/../../etc/passwd", "http://h/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                                 "http://h/..", "http://h/", "http://h/a/%2F..%2F..%2Fx", "http://h/.bashrc"])
def test_download_cache_names_stay_in_the_cache(tmp_path, url):
    path = cache_path(url, tmp_path)
    assert path.parent == tmp_path and not path.name.startswith(".") and "/" not in path.name
