"""Data where teams keep it, on real parts: JSON lines, Parquet, a `datasets` save_to_disk folder, gzip/zstd
streams, directories and globs, and an S3 bucket on a real S3-compatible server (moto in server mode, as s3fs's
own tests use) started on loopback; `lmforge run` trains from it and the registry names the objects' versions."""
from __future__ import annotations

import gzip
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY, LogLines, restore_closed_log_streams
from lmforge.cli import main
from lmforge.core.config import load_config
from lmforge.core.errors import LmforgeError
from lmforge.data import columnar, jsonl
from lmforge.data.corpus import iter_batches
from lmforge.data.prepare import prepare_corpus

WORDS = ("the cat sat on a mat while rain fell over quiet hills and every old dog dreamed of bright red "
         "kites drifting past windows full of warm bread").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 14)))).capitalize() + "." for _ in range(n)]


def table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n), "text": sentences(n, seed), "lang": ["en" if i % 3 else "fr" for i in range(n)],
                         "score": [i % 7 for i in range(n)]})


def docs(path: Path, **overrides) -> list[str]:
    cfg = load_config("jokes-char", {"data.source": str(path), **overrides})
    return [d for b in iter_batches(Path(path), cfg.data) for d in b]


def prepared(path: Path, out: Path, **overrides) -> dict:
    cfg = load_config("jokes-char", {"data.source": str(path), **overrides})
    return prepare_corpus(Path(path), cfg, out)


def same_shards(a: dict, b: dict) -> None:
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (Path(a["dir"]) / name).read_bytes() == (Path(b["dir"]) / name).read_bytes(), name
    assert a["data_fingerprint"] == b["data_fingerprint"] and a["documents"] == b["documents"]


@pytest.fixture(autouse=True)
def restore_log_streams():
    yield
    restore_closed_log_streams()  # as in test_bad_input: the CLI's log handlers keep capsys's closed stream


# -- formats: the same documents and the same shards whatever the container ------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict:
    """One table written as CSV, JSON lines, parquet (many row groups), and their compressed forms."""
    d = tmp_path_factory.mktemp("plain")
    df = table()
    df.to_csv(d / "t.csv", index=False)
    (d / "t.csv.gz").write_bytes(gzip.compress((d / "t.csv").read_bytes()))
    with open(d / "t.jsonl", "w") as f:
        for r in df.to_dict("records"):
            f.write(json.dumps({"id": r["id"], "body": {"text": r["text"]}, "lang": r["lang"], "score": r["score"]})
                    + "\n")
    import zstandard

    (d / "t.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((d / "t.jsonl").read_bytes()))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), d / "t.parquet", row_group_size=50)
    return {"dir": d, "texts": df["text"].tolist()}


def test_every_format_reads_the_same_documents_choosing_the_one_text_column(plain):
    d = plain["dir"]
    for name in ("t.csv", "t.csv.gz", "t.jsonl", "t.jsonl.zst", "t.parquet"):
        assert docs(d / name) == plain["texts"], name  # jokes-char says lines: the file's own format wins
    assert docs(d / "t.jsonl", **{"data.column": "body.text"}) == plain["texts"]  # a nested key


def test_row_filter_works_on_every_table_format_and_is_pushed_down_into_parquet(plain):
    d = plain["dir"]
    want = [t for t, (i, lang) in zip(plain["texts"], ((i, "en" if i % 3 else "fr") for i in range(400)))
            if lang == "en" and i < 120]
    rule = {"data.filter": 'lang == "en" and id < 120'}
    assert docs(d / "t.csv", **rule) == want
    assert docs(d / "t.parquet", **rule) == want
    assert docs(d / "t.jsonl", **rule) == want
    assert docs(d / "t.jsonl.zst", **rule) == want
    # id < 120 rules out the row groups from 150 on by their statistics: they are never read
    rows = load_config("jokes-char", {"data.filter": rule["data.filter"]}).data.filter
    from lmforge.core.rowfilter import parse

    assert columnar.parquet_row_groups(d / "t.parquet", parse(rows)) == [0, 1, 2]
    # what pyarrow cannot decide on statistics (`!=`, `not`) is not pushed, and the answer is still exact
    assert columnar.parquet_row_groups(d / "t.parquet", parse('not id >= 120')) == list(range(8))
    assert docs(d / "t.parquet", **{"data.filter": 'not id >= 120 and lang != "fr"'}) == want


def test_compressed_and_save_to_disk_sources_prepare_to_the_same_shards_as_plain_files(plain, tmp_path):
    datasets = pytest.importorskip("datasets", reason="the test extra installs datasets (save_to_disk)")
    d = plain["dir"]
    csv, jsonl_plain = prepared(d / "t.csv", tmp_path / "csv"), prepared(d / "t.jsonl", tmp_path / "jsonl")
    same_shards(prepared(d / "t.csv.gz", tmp_path / "csvgz"), csv)
    same_shards(prepared(d / "t.jsonl.zst", tmp_path / "zst"), jsonl_plain)
    same_shards(prepared(d / "t.parquet", tmp_path / "parquet"), csv)
    folder = tmp_path / "hf"
    # save_to_disk by the `datasets` library itself, in two shards, read back without it
    datasets.Dataset.from_pandas(table(), preserve_index=False).save_to_disk(str(folder), num_shards=2)
    assert len(list(folder.glob("*.arrow"))) == 2
    same_shards(prepared(folder, tmp_path / "hf-out"), csv)
    dd = tmp_path / "hfdict"
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(table(), preserve_index=False)}).save_to_disk(str(dd))
    same_shards(prepared(dd, tmp_path / "hfdict-out"), csv)


def test_a_directory_or_glob_of_mixed_shards_is_one_corpus_in_a_stable_order(plain, tmp_path):
    df = table()
    root = tmp_path / "shards"
    (root / "b").mkdir(parents=True)
    df.iloc[:150].to_csv(root / "a-0.csv", index=False)
    pq.write_table(pa.Table.from_pandas(df.iloc[150:300], preserve_index=False), root / "a-1.parquet")
    with gzip.open(root / "b" / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in df["text"].iloc[300:])
    (root / "_SUCCESS").write_text("")
    assert docs(root) == plain["texts"]
    assert docs(Path(f"{root}/**/*.jsonl.gz")) == plain["texts"][300:]
    same_shards(prepared(root, tmp_path / "dir-out"), prepared(plain["dir"] / "t.csv", tmp_path / "csv-out"))


def test_a_preset_format_gives_way_to_the_file_but_a_users_format_does_not(plain, tmp_path):
    cfg = load_config("jokes-char", {"data.source": str(plain["dir"] / "t.csv")})
    lines, logger = LogLines(), logging.getLogger("lmforge.data")
    logger.addHandler(lines)
    try:
        list(iter_batches(plain["dir"] / "t.csv", cfg.data, warn=True))
    finally:
        logger.removeHandler(lines)
    assert any("t.csv is read as csv" in m and "data.format=lines" in m for m in lines.messages), lines.messages
    lines = docs(plain["dir"] / "t.csv", **{"data.format": "lines"})  # asked for: the raw lines, header included
    assert lines[0] == "id,text,lang,score"
    two = tmp_path / "two.csv"
    pd.DataFrame({"title": ["A short title here"] * 3, "body": ["some body text here"] * 3}).to_csv(two, index=False)
    with pytest.raises(LmforgeError, match=r"has 2 columns that hold text: title, body.*data.column=NAME"):
        docs(two)


# -- bounds: hostile input is one error, read no further ------------------------------------------------------

def test_hostile_inputs_are_refused_within_their_bounds(plain, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.txt.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(200):
            f.write(b"a\n" * (1 << 19))  # 200 MiB of short lines in ~200 KB
    with pytest.raises(LmforgeError, match="expands past"):
        docs(bomb, **{"data.format": "lines"})
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"text": "word " * 400}) + "\n")
    with pytest.raises(LmforgeError, match="line 1 of .* is longer than 1000 bytes"):
        docs(long_line, **{"data.max_record_chars": "1000"})
    with pytest.raises(LmforgeError, match="over the limit of 20"):
        docs(plain["dir"] / "t.parquet", **{"data.column": "text", "data.max_record_chars": "20"})
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../../etc/passwd"}]}))
    (evil / "dataset_info.json").write_text("{}")
    with pytest.raises(LmforgeError, match="outside"):
        docs(evil)
    stream = tmp_path / "data-00000-of-00001.arrow"
    with pa.ipc.new_stream(stream, pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": plain["texts"]}))
    stream.write_bytes(stream.read_bytes()[:-300])  # cut inside its record batch
    with pytest.raises(LmforgeError, match="not a readable Arrow"):
        docs(stream)
    monkeypatch.setattr(jsonl, "MAX_ARRAY_BYTES", 1000)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": t} for t in plain["texts"]]))
    with pytest.raises(LmforgeError, match="one JSON array larger than 1000 bytes"):
        docs(array)
    trunc = tmp_path / "trunc.jsonl.zst"
    trunc.write_bytes((plain["dir"] / "t.jsonl.zst").read_bytes()[:-200])
    with pytest.raises(LmforgeError, match="not a valid compressed file"):
        docs(trunc)


def test_a_parquet_file_larger_than_the_memory_bound_prepares_under_it(tmp_path):
    """Peak RSS of a real preparation, measured by the process itself (VmHWM), against a file larger than the
    bound: the reader holds about one batch of one row group, never the file."""
    bound = 300 << 20
    path = tmp_path / "big.parquet"
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz      ", dtype=np.uint8)
    rows, width = 4000, 2000
    schema = pa.schema([("text", pa.string()), ("keep", pa.string())])
    with pq.ParquetWriter(path, schema, compression="none") as w:
        while w.file_size if hasattr(w, "file_size") else False:
            break
        for g in range(42):
            data = pa.py_buffer(letters[rng.integers(0, len(letters), rows * width)].tobytes())
            offsets = pa.py_buffer((np.arange(rows + 1, dtype=np.int32) * width).tobytes())
            text = pa.StringArray.from_buffers(rows, offsets, data)
            keep = pa.array(np.where(np.arange(rows) % 400 == g % 400, "yes", "no"))
            w.write_table(pa.table({"text": text, "keep": keep}, schema=schema), row_group_size=rows)
    assert path.stat().st_size > bound
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from lmforge.core.config import load_config
        from lmforge.data.prepare import prepare_corpus
        cfg = load_config("jokes-char", {{"data.source": "{path}", "data.filter": 'keep == "yes"',
                                          "data.split": "contiguous"}})
        meta = prepare_corpus(Path("{path}"), cfg, Path("{tmp_path / 'out'}"))
        hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
        print(json.dumps({{"documents": meta["documents"], "peak_rss": hwm}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["documents"] == 42 * 10  # every row group was read: 10 kept rows in each
    print(f"parquet of {path.stat().st_size >> 20} MiB prepared with peak RSS {result['peak_rss'] >> 20} MiB")
    assert result["peak_rss"] < bound, (result["peak_rss"] >> 20, path.stat().st_size >> 20)


# -- object stores: a real S3-compatible server on loopback -----------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server in its own process on 127.0.0.1, and the standard AWS environment pointing at it."""
    pytest.importorskip("s3fs", reason="the test extra installs s3fs")
    pytest.importorskip("moto", reason="the test extra installs moto[server]")
    import boto3

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    mp = pytest.MonkeyPatch()
    empty = tmp_path_factory.mktemp("aws")
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                 "AWS_CONFIG_FILE": str(empty / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(empty / "creds")}.items():
        mp.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="corpora")
    client.put_bucket_versioning(Bucket="corpora", VersioningConfiguration={"Status": "Enabled"})
    yield client
    mp.undo()
    server.terminate()
    server.wait(10)


def put_shards(client, texts: list[str]) -> dict:
    """Two parquet shards and a gzipped JSON-lines shard under jokes/; {key: (version id, etag)}."""
    thirds = [texts[:len(texts) // 3], texts[len(texts) // 3:2 * len(texts) // 3], texts[2 * len(texts) // 3:]]
    bodies = {}
    for i, part in enumerate(thirds[:2]):
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": list(range(len(part))), "text": part}), sink)
        bodies[f"jokes/part-{i}.parquet"] = sink.getvalue().to_pybytes()
    bodies["jokes/part-2.jsonl.gz"] = gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in thirds[2]).encode(),
                                                    mtime=0)
    return {k: put(client, k, b) for k, b in bodies.items()}


def put(client, key: str, body: bytes) -> tuple[str, str]:
    r = client.put_object(Bucket="corpora", Key=key, Body=body)
    return r["VersionId"], r["ETag"].strip('"')


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip()


def sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def test_lmforge_run_trains_from_an_s3_prefix_and_retrains_only_when_an_object_changes(prefect_server, s3, capsys,
                                                                                       tmp_path, monkeypatch):
    from lmforge.core.layout import RunLayout
    from lmforge.registry.tracking import client

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    texts = sentences(600, seed=1)
    versions = put_shards(s3, texts)
    overrides = {**TINY, "name": "s3jokes", "data.source": "s3://corpora/jokes/"}
    layout = RunLayout.for_config(load_config("jokes-char", overrides))

    def copies() -> dict:
        """The cached copies of the objects: name -> (inode, mtime); a copy made again is a new file."""
        found = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (layout.cache / "objects").rglob("*")
                 if p.is_file() and p.parent.name == "files"}
        return found

    def run() -> tuple[list[str], object]:
        before = copies() if (layout.cache / "objects").is_dir() else {}
        rc, err = cli(capsys, "run", *sets(overrides))
        assert rc == 0, err
        exp = client().get_experiment_by_name("lmforge-s3jokes")
        latest = client().search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
        return sorted(k for k, v in copies().items() if before.get(k) != v), latest

    copied, first = run()
    assert copied == ["part-0.parquet", "part-1.parquet", "part-2.jsonl.gz"]
    mv = client().get_model_version("s3jokes", "1")
    for key, (version, etag) in versions.items():
        name = key.removeprefix("jokes/")
        assert f"{name}@version_id={version},etag={etag}" in mv.tags["data_object_versions"], mv.tags
    assert mv.tags["data_objects"] == "3" and len(layout.run_dirs()) == 1

    copied, second = run()  # nothing changed: nothing copied, the same run resumed, no new version
    assert copied == [] and second.data.metrics["resumed_from"] == TINY["train.max_steps"]
    assert len(layout.run_dirs()) == 1 and len(client().search_model_versions("name='s3jokes'")) == 1

    new_version, new_etag = put(s3, "jokes/part-2.jsonl.gz", gzip.compress(
        "".join(json.dumps({"text": t.upper()}) + "\n" for t in texts[400:]).encode(), mtime=0))
    copied, third = run()
    assert copied == ["part-2.jsonl.gz"]  # only the replaced object was copied again
    assert third.data.metrics["resumed_from"] == 0 and len(layout.run_dirs()) == 2  # new data: a run of its own
    mv2 = client().get_model_version("s3jokes", "2")
    assert f"part-2.jsonl.gz@version_id={new_version},etag={new_etag}" in mv2.tags["data_object_versions"]
    assert mv2.tags["data_fingerprint"] != mv.tags["data_fingerprint"]


@pytest.fixture(scope="module")
def bad_preset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "badsources.toml"
    path.write_text((Path(__file__).resolve().parents[1] / "configs" / "jokes-char.toml").read_text())
    return path


def one_line(rc: int, err: str, *needles: str) -> None:
    last = err.splitlines()[-1] if err else ""
    assert rc == 2, err
    assert last.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in last, (n, last)


def test_bad_sources_are_one_error_line_through_the_cli(prefect_server, s3, capsys, bad_preset, plain, tmp_path,
                                                        monkeypatch):
    def prepare(**overrides) -> tuple[int, str]:
        return cli(capsys, "prepare", "--preset", str(bad_preset), *sets(overrides))

    pq_file = plain["dir"] / "t.parquet"
    one_line(*prepare(**{"data.source": pq_file, "data.column": "nope"}), "column 'nope' not found",
             "columns are: id, text, lang, score")
    one_line(*prepare(**{"data.source": pq_file, "data.column": "score"}), "column 'score'", "holds int64, not text")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(pq_file.read_bytes()[:-20])  # the footer cut off
    one_line(*prepare(**{"data.source": broken}), "broken.parquet is not a readable parquet file")
    one_line(*prepare(**{"data.source": "s3://corpora/no-such-prefix/"}), "s3://corpora/no-such-prefix/ does not exist")
    one_line(*prepare(**{"data.source": "s3://key:secret@corpora/jokes/"}), "credentials in an object-store URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    rc, err = prepare(**{"data.source": "s3://corpora/jokes/"})
    one_line(rc, err, "no credentials to read s3://corpora/jokes/", "AWS_ACCESS_KEY_ID")


def test_object_store_sources_go_through_the_operators_policy(tmp_path):
    """A deployment run's default policy allows https:// only: an s3:// source is refused before any request."""
    from lmforge.core.policy import Policy, PolicyError
    from lmforge.data.sources import acquire

    with pytest.raises(PolicyError, match="s3://corpora/jokes/.* is not allowed"):
        acquire("s3://corpora/jokes/", tmp_path, policy=Policy(sources=("https://*",), deployment=True))
    assert not (tmp_path / "objects").exists()


def test_object_store_guarantees_byte_cap_sha256_pin_and_gone_objects(s3, tmp_path):
    """The http(s) guarantees for an S3 prefix, straight through acquire (no training): the listed total over
    data.max_bytes is refused before anything is copied; data.sha256 pins one object's bytes, or a prefix's
    manifest digest; an object deleted upstream leaves the local mirror too."""
    import hashlib

    from lmforge.data.objectstore import MANIFEST
    from lmforge.data.sources import acquire

    for i in range(3):
        put(s3, f"pins/doc-{i}.txt", f"document number {i}\n".encode() * 50)
    with pytest.raises(LmforgeError, match="holds 2700 bytes, over the limit of 1000"):
        acquire("s3://corpora/pins/", tmp_path, max_bytes=1000)
    assert not list((tmp_path / "objects").rglob("doc-*"))  # refused before any copy

    one = acquire("s3://corpora/pins/doc-1.txt", tmp_path,
                  sha256=hashlib.sha256(b"document number 1\n" * 50).hexdigest())
    assert one.read_bytes() == b"document number 1\n" * 50
    with pytest.raises(LmforgeError, match="does not match data.sha256"):
        acquire("s3://corpora/pins/doc-1.txt", tmp_path / "other", sha256="0" * 64)

    folder = acquire("s3://corpora/pins/", tmp_path)
    digest = json.loads((folder.parent / MANIFEST).read_text())["digest"]
    assert acquire("s3://corpora/pins/", tmp_path, sha256=digest) == folder
    s3.delete_object(Bucket="corpora", Key="pins/doc-2.txt")
    acquire("s3://corpora/pins/", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["doc-0.txt", "doc-1.txt"]
    with pytest.raises(LmforgeError, match="does not match data.sha256"):  # the prefix changed: the pin says so
        acquire("s3://corpora/pins/", tmp_path, sha256=digest)
