"""Data preparation in parts: the same bytes as the one-pass preparation for every tokenizer kind, and
`lmforge prepare --dask` fanning the parts out over a real local Dask cluster of 2 worker processes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyjokes
import pytest
from prefect import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from lmforge.cli import main
from lmforge.core.config import load_config
from lmforge.data import partition
from lmforge.data.prepare import prepare_corpus, source_fingerprint
from lmforge.core.errors import LmforgeError

PREPARED = ("tokenizer.json", "train.bin", "val.bin", "meta.json", "val.jsonl")


@pytest.fixture(scope="module")
def joke_files(tmp_path_factory) -> Path:
    """The pyjokes one-liners in 7 files of unequal size, 5 jokes repeated in every file (dedupe across parts)."""
    root = tmp_path_factory.mktemp("jokes")
    jokes = pyjokes.get_jokes(language="en", category="all")
    cuts = [0, 10, 60, 70, 150, 160, 230, len(jokes)]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        sub = root / f"shelf{i % 2}"
        sub.mkdir(exist_ok=True)
        (sub / f"jokes-{i}.txt").write_text("\n".join(jokes[a:b] + jokes[:5]) + "\n", encoding="utf-8")
    return root


def prepare_in_parts(path: Path, cfg, out_dir: Path, n_parts: int) -> dict:
    """Every step of the fan-out, one after another in this process."""
    groups = partition.plan_parts(path, cfg, n_parts)
    cleaned = partition.merge_cleaned([partition.clean_part(path, cfg, out_dir, g, i) for i, g in enumerate(groups)],
                                      cfg, out_dir, path)
    split, runs = partition.plan_tokenize(cleaned, cfg, out_dir, n_parts)
    encoded = [partition.encode_part(cleaned, split, out_dir, run, i) for i, run in enumerate(runs)]
    return {**partition.join_shards(cleaned, cfg, out_dir, encoded, source_fingerprint(path), split),
            "groups": groups, "encoded": encoded}


@pytest.mark.parametrize("kind,split", [("char", "documents"), ("word", "documents"), ("bpe", "documents"),
                                        ("char", "contiguous"), ("bpe", "contiguous")])
def test_parts_write_the_same_bytes_as_one_pass(joke_files, tmp_path, kind, split):
    cfg = load_config("jokes-char", {"data.source": str(joke_files), "data.format": "lines", "data.split": split,
                                     "tokenizer.kind": kind, "tokenizer.vocab_size": "300"})
    whole = prepare_corpus(joke_files, cfg, tmp_path / "whole")
    parts = prepare_in_parts(joke_files, cfg, tmp_path / "parts", 3)
    assert len(parts["groups"]) == 3 and len(parts["encoded"]) == 3
    for name in PREPARED:
        assert (tmp_path / "parts" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    dedupe = whole["clean_report"][-1]
    assert dedupe["step"] == "dedupe" and dedupe["docs_removed"] == 5 * 7  # the 5 repeats in each of 7 files
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(PREPARED)  # no part files left


def test_plan_parts_keeps_reading_order_and_balances_bytes(joke_files):
    cfg = load_config("jokes-char", {"data.source": str(joke_files), "data.format": "lines"})
    files = sorted(str(p) for p in joke_files.rglob("*.txt"))
    for n in (1, 2, 3, 7, 20):
        groups = partition.plan_parts(joke_files, cfg, n)
        if n == 1:
            assert groups == [None]
            continue
        assert [f for g in groups for f in g] == files and all(groups) and len(groups) <= n
    sizes = [sum(Path(f).stat().st_size for f in g) for g in partition.plan_parts(joke_files, cfg, 2)]
    assert max(sizes) < 0.75 * sum(sizes)
    single = load_config("jokes-char", {"data.source": str(files[0])})
    assert partition.plan_parts(Path(files[0]), single, 4) == [None]  # one file: cleaned whole, encoded in parts


def test_a_part_that_fails_leaves_no_spill_behind(joke_files, tmp_path):
    cfg = load_config("jokes-char", {"data.source": str(joke_files), "data.format": "lines"})
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff broken\n")
    with pytest.raises(LmforgeError, match="not valid UTF-8"):
        partition.clean_part(tmp_path, cfg, tmp_path / "out", [str(bad)], 0)
    assert not list((tmp_path / "out").iterdir())


def test_prepare_fans_out_over_a_local_dask_cluster_of_two_workers(prefect_server, joke_files):
    from distributed import Client, LocalCluster

    overrides = ["--set", f"data.source={joke_files}", "--set", "data.format=lines", "--set", "tokenizer.kind=word",
                 "--set", "data.val_fraction=0.2"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["prepare", "--preset", "jokes-char", "--json", "--dask", cluster.scheduler_address,
                         "--set", "data.parts=4", *overrides]) == 0
    fanned = json.loads(out.getvalue().strip().splitlines()[-1])
    ran_on = {int(w.rsplit(":", 1)[1]) for w in fanned["ran_on"]}
    assert ran_on == worker_pids and len(ran_on) == 2 and os.getpid() not in ran_on
    with get_client(sync_client=True) as prefect:  # the workers reported to this flow's server
        runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-part-")))
    assert sorted(r.name.split("-part-")[0] for r in runs) == ["clean"] * 4 + ["encode"] * 4
    assert all(r.state.is_completed() for r in runs)
    fanned_bytes = {name: (Path(fanned["dir"]) / name).read_bytes() for name in PREPARED}

    for name in PREPARED:  # the prepared directory is shared: remove it, prepare again in one pass
        (Path(fanned["dir"]) / name).unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["prepare", "--preset", "jokes-char", "--json", *overrides]) == 0
    whole = json.loads(out.getvalue().strip().splitlines()[-1])
    assert whole["dir"] == fanned["dir"] and whole["cached"] is False and whole["ran_on"] == []
    assert {name: (Path(whole["dir"]) / name).read_bytes() for name in PREPARED} == fanned_bytes


def test_dask_local_without_a_prefect_server_uses_one_temporary_server(joke_files, tmp_path):
    """No PREFECT_API_URL: the CLI starts Prefect's temporary server and names it to the Dask workers, which
    would otherwise each start one of their own and keep their task runs there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), LMFORGE_ARTIFACTS=str(tmp_path / "artifacts"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "prepare", "--json", "--dask", "local:2",
                           "--set", f"data.source={joke_files}", "--set", "data.format=lines"],
                          capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["ran_on"]) == 2 and result["train_tokens"] > 0
    assert (proc.stdout + proc.stderr).count("Starting temporary server") == 1


def test_dask_address_that_is_not_one_is_a_one_line_error():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["prepare", "--dask", "localhost"]) == 2
    assert err.getvalue().count("\n") == 1 and "--dask local:2" in err.getvalue()


def test_a_table_with_val_filter_encoded_in_parts_writes_the_same_bytes(tmp_path, monkeypatch):
    import pandas as pd

    from lmforge.data import formats

    monkeypatch.setattr(formats, "TABLE_ROWS", 40)  # several spill lines, so several encode runs
    table = tmp_path / "posts.tsv"
    jokes = pyjokes.get_jokes(language="en", category="all")
    pd.DataFrame({"Country": ["A", "B", "C"] * (len(jokes) // 3), "Tweet": jokes[:len(jokes) // 3 * 3]}).to_csv(
        table, sep="\t", index=False)
    cfg = load_config("jokes-char", {"data.source": str(table), "data.format": "tsv", "data.column": "Tweet",
                                     "data.val_filter": 'Country == "B"', "data.val_fraction": "0.3"})
    whole = prepare_corpus(table, cfg, tmp_path / "whole")
    parts = prepare_in_parts(table, cfg, tmp_path / "parts", 3)
    assert parts["groups"] == [None] and len(parts["encoded"]) == 3
    for name in PREPARED:
        assert (tmp_path / "parts" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert 0 < whole["val"]["documents"] < len(jokes) // 3
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(PREPARED)
