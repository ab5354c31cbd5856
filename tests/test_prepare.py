"""`lmforge prepare` through the CLI's code path (real Prefect flow) on every real corpus format, an HTTP source
serving an aclImdb .tar.gz, reuse of prepared shards, determinism and early errors."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tokenizers import Tokenizer

from conftest import corpus, corpus_facts
from lmforge.cli import main
from lmforge.core.config import load_config
from lmforge.data import formats
from lmforge.data.prepare import prepare_corpus
from lmforge.data.shards import open_shard, read_meta
from lmforge.core.errors import LmforgeError


def cli_prepare(overrides: dict) -> dict:
    """`lmforge prepare --json` in-process; its JSON line. (No capsys: Prefect's log handlers outlive it.)"""
    args = ["prepare", "--preset", "jokes-char", "--json"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return json.loads([ln for ln in out.getvalue().splitlines() if ln.startswith("{")][-1])


def cli_error(args: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["prepare", *args]) == 2
    return err.getvalue()


def decoded_train_text(result: dict, n: int = 400, split: str = "train") -> str:
    tok = Tokenizer.from_file(str(Path(result["dir"]) / "tokenizer.json"))  # tokenizers alone
    return tok.decode(open_shard(Path(result["dir"]), split)[:n].tolist())


CASES = {  # corpus, overrides; each corpus' opening words (corpus_facts) are read back from the shards
    "tinystories-word": ("tinystories-sample.txt", {"data.format": "text", "tokenizer.kind": "word"}),
    "onelinefun-csv": ("onelinefun.csv", {"data.format": "csv", "data.column": "Joke"}),
    "imdb-csv-bpe": ("imdb-reviews.csv", {"data.format": "auto", "data.column": "review", "clean.strip_html": "true",
                                          "tokenizer.kind": "bpe", "tokenizer.vocab_size": 1000, "data.max_documents": 600}),
    "arabic-tsv-char": ("ArSenTD-LEV.tsv", {"data.format": "tsv", "data.column": "Tweet",
                                            "data.filter": 'Country == "lebanon"'}),
    "shakespeare-char": ("tinyshakespeare.txt", {"data.format": "text"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepare_real_corpus(prefect_server, case):
    name, overrides = CASES[case]
    result = cli_prepare({"data.source": str(corpus(name)), **overrides})
    text = decoded_train_text(result)
    # the first document opens the train shard, or the val shard where the split drew it into val
    assert corpus_facts(name)["opening"] in text + decoded_train_text(result, split="val") and "<br" not in text
    meta = read_meta(Path(result["dir"]))
    assert meta["train"]["tokens"] == result["train_tokens"] > meta["val"]["tokens"] > 0
    assert meta["dtype"] == "uint16" and meta["documents"] == result["documents"]
    assert max(open_shard(Path(result["dir"]), "train")) < result["vocab_size"]
    if case == "imdb-csv-bpe":
        assert result["vocab_size"] == 1000
        assert next(r for r in meta["clean_report"] if r["step"] == "strip_html")["chars_removed"] > 0
    if case == "arabic-tsv-char":
        assert result["documents"] == corpus_facts(name)["lebanon_unique"]  # the real file: 673


def test_prepare_http_imdb_archive(prefect_server, tmp_path):
    reviews = [f"Review number {i}: a film<br />with {'many ' * (i % 7)}moments, rated {i % 10}/10." for i in range(60)]
    tree = tmp_path / "tree"
    for i, text in enumerate(reviews):
        folder = tree / "aclImdb" / ("train" if i % 3 else "test") / ("pos" if i % 2 else "neg")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}_{i % 10}.txt").write_text(text, encoding="utf-8")
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "aclImdb_v1.tar.gz", "w:gz") as tar:
        tar.add(tree / "aclImdb", arcname="aclImdb")
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/aclImdb_v1.tar.gz"
        result = cli_prepare({"data.source": url, "data.format": "auto", "clean.strip_html": "true",
                              "model.block_size": 32})
    finally:
        server.shutdown()
    assert result["documents"] == 60
    text = decoded_train_text(result, 10_000)
    assert "Review number" in text and "<br" not in text and "a film with" in text


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_rerun_reuses_shards_and_changed_source_recomputes_identically(prefect_server, tmp_path):
    source = tmp_path / "shakespeare.txt"
    shutil.copyfile(corpus("tinyshakespeare.txt"), source)
    overrides = {"data.source": str(source), "tokenizer.kind": "bpe", "tokenizer.vocab_size": 500,
                 "data.max_documents": 8000}
    first = cli_prepare(overrides)
    train = Path(first["dir"]) / "train.bin"
    before = train.stat()
    content = train.read_bytes()
    tokenizer = (Path(first["dir"]) / "tokenizer.json").read_bytes()
    assert first["cached"] is False

    second = cli_prepare(overrides)
    assert second["cached"] is True and second["train_tokens"] == first["train_tokens"]
    after = train.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    os.utime(source, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))  # touched: the same bytes
    assert cli_prepare(overrides)["cached"] is True

    (Path(first["dir"]) / "meta.json").unlink()  # an incomplete directory is prepared again, identically
    third = cli_prepare(overrides)
    assert third["cached"] is False and train.stat().st_ino != before.st_ino
    assert train.read_bytes() == content  # deterministic: identical shards and tokenizer across runs
    assert (Path(first["dir"]) / "tokenizer.json").read_bytes() == tokenizer
    assert not list(Path(first["dir"]).glob(".*"))  # no spill or temp files left behind

    stat = source.stat()  # new content of the same size under the same mtime: new data, prepared again
    text = source.read_bytes()
    assert b"Citizen" in text
    source.write_bytes(text.replace(b"Citizen", b"Senator"))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.stat().st_size == stat.st_size
    fourth = cli_prepare(overrides)
    assert fourth["cached"] is False and train.read_bytes() != content


def test_shards_do_not_depend_on_read_chunk_size(tmp_path, monkeypatch):
    cfg = load_config("jokes-char", {"data.source": str(corpus("tinystories-sample.txt")), "tokenizer.kind": "word"})
    big = prepare_corpus(corpus("tinystories-sample.txt"), cfg, tmp_path / "big")
    monkeypatch.setattr(formats, "CHUNK_BYTES", 5000)  # many small batches
    small = prepare_corpus(corpus("tinystories-sample.txt"), cfg, tmp_path / "small")
    for split in ("train", "val"):
        assert np.array_equal(open_shard(tmp_path / "big", split), open_shard(tmp_path / "small", split))
    assert big["corpus_sha256"] == small["corpus_sha256"]


def test_prepare_errors_are_one_line_with_hint(prefect_server, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just a few words\n\nand another line\n\nthird", encoding="utf-8")
    err = cli_error(["--set", f"data.source={tiny}", "--set", "data.format=lines"])
    assert "fewer than one context window" in err and "model.block_size" in err
    err = cli_error(["--set", f"data.source={corpus('onelinefun.csv')}", "--set", "data.format=csv",
                     "--set", "data.column=joke"])
    assert "column 'joke' not found" in err and "ID, Joke" in err
    err = cli_error(["--set", f"data.source={tiny}", "--set", "data.column=Joke"])  # a text file is no table
    assert "tiny.txt is read as lines, not as a table" in err and "data.format=csv" in err


def test_val_filter_draws_val_only_from_matching_rows(tmp_path):
    table = tmp_path / "posts.csv"
    pd.DataFrame({"Country": ["A" if i % 3 == 0 else "B" for i in range(300)],
                  "Text": [f"{'alpha' if i % 3 == 0 else 'beta'} post number {i}" for i in range(300)]}).to_csv(table, index=False)
    base = {"data.source": str(table), "data.format": "csv", "data.column": "Text", "data.val_fraction": "0.3"}
    cfg = load_config("jokes-char", {**base, "data.val_filter": 'Country == "A"'})
    meta = prepare_corpus(table, cfg, tmp_path / "out")
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    val = tok.decode(open_shard(tmp_path / "out", "val").tolist())
    train = tok.decode(open_shard(tmp_path / "out", "train").tolist())
    assert "beta" not in val and val.count("alpha") == meta["val"]["documents"]
    assert 15 <= meta["val"]["documents"] <= 45  # ~30% of the 100 A rows
    assert train.count("beta") == 200 and train.count("alpha") == 100 - meta["val"]["documents"]
    assert meta["split"]["val_filter"] == 'Country == "A"' and not list((tmp_path / "out").glob(".*"))

    with pytest.raises(LmforgeError, match="matches data.val_filter"):
        prepare_corpus(table, load_config("jokes-char", {**base, "data.val_filter": 'Country == "C"'}), tmp_path / "none")
    text = tmp_path / "plain.txt"
    text.write_text("one\n\ntwo\n\nthree\n")
    with pytest.raises(LmforgeError, match="not read as a table"):
        prepare_corpus(text, load_config("jokes-char", {"data.source": str(text), "data.val_filter": "x == 1"}),
                       tmp_path / "text")
    assert not list((tmp_path / "none").glob(".*")) and not list((tmp_path / "text").glob(".*"))


def test_contiguous_split_is_the_last_tenth_of_the_text_as_nanogpt_cuts_it(tmp_path):
    """shakespeare-char: val is the text after character int(0.9 * n) of the stream (paragraphs joined by the
    blank line they were split on), train everything before it; one <bos> opens train, one <eos> closes val."""
    raw = corpus("tinyshakespeare.txt").read_text(encoding="utf-8")
    cfg = load_config("shakespeare-char", {"data.source": str(corpus("tinyshakespeare.txt"))})
    meta = prepare_corpus(corpus("tinyshakespeare.txt"), cfg, tmp_path / "out")
    stream = "\n\n".join(p.strip() for p in raw.split("\n\n") if p.strip())
    cut = int(len(stream) * 0.9)
    assert meta["split"] == {"method": "contiguous", "val_fraction": 0.1, "stream_chars": len(stream),
                             "cut_char": cut, "note": ""}
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    train, val = (open_shard(tmp_path / "out", s).tolist() for s in ("train", "val"))
    ids = meta["special_ids"]
    assert train[0] == ids["bos"] and val[-1] == ids["eos"]
    assert tok.decode(train[1:]) == stream[:cut] and tok.decode(val[:-1]) == stream[cut:]
    facts = corpus_facts("tinyshakespeare.txt")
    assert stream[cut:].endswith(facts["last_line"]) and meta["val_chars"] == len(stream) - cut
    # the stream is the file as written, but for 3 characters: 2 triple newlines and the final newline
    assert len(raw) - len(stream) == facts["dropped_chars"]


def test_a_file_without_the_separator_falls_back_to_a_contiguous_split(tmp_path):
    """One story per line, handed to tinystories-lstm (separator <|endoftext|>): one document, so val is the
    last 10% of the text, with a note saying why, instead of 'val split has 0 tokens'."""
    stories = [" ".join(s.split()) for s in corpus("tinystories-sample.txt").read_text().split("\n\n") if s.strip()]
    source = tmp_path / "one-per-line.txt"
    source.write_text("\n".join(stories[:60]) + "\n", encoding="utf-8")
    cfg = load_config("tinystories-lstm", {"data.source": str(source)})
    meta = prepare_corpus(source, cfg, tmp_path / "out")
    assert meta["documents"] == 1 and meta["split"]["method"] == "contiguous"
    assert "never occurs" in meta["split"]["note"] and "<|endoftext|>" in meta["split"]["note"]
    assert meta["val"]["tokens"] > cfg.model.block_size + 1
    assert 0.07 < meta["val"]["tokens"] / (meta["train"]["tokens"] + meta["val"]["tokens"]) < 0.13


def test_val_filter_and_contiguous_split_do_not_mix(tmp_path):
    table = tmp_path / "rows.csv"
    pd.DataFrame({"C": ["a", "b"] * 30, "T": [f"row {i}" for i in range(60)]}).to_csv(table, index=False)
    overrides = {"data.source": str(table), "data.format": "csv", "data.column": "T", "data.val_filter": 'C == "a"'}
    with pytest.raises(LmforgeError, match="splits by position"):  # refused with the config, before any work
        load_config("jokes-char", {**overrides, "data.split": "contiguous"})
    cfg = load_config("jokes-char", overrides)
    cfg.data.split = "contiguous"  # and by the library itself, for a config built in code
    with pytest.raises(LmforgeError, match="splits by position"):
        prepare_corpus(table, cfg, tmp_path / "out")
    assert not list((tmp_path / "out").glob(".*"))
