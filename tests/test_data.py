"""Reading formats, cleaning and shards on real corpora and on small hand-made files."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import corpus, corpus_facts
from lmforge.core.config import CleanConfig
from lmforge.data import formats
from lmforge.data.clean import clean_batches, clean_documents, normalize_whitespace, normalize_whitespace_one
from lmforge.data.formats import iter_batches, read_documents
from lmforge.data.shards import content_split, open_shard, read_meta, shard_dtype, write_shards
from lmforge.core.errors import LmforgeError

# ---- formats ---------------------------------------------------------------------------------------------


def test_text_blank_lines_one_per_line_and_separator(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a b\nc\r\n\r\nd\n\n\n e \n", encoding="utf-8")
    assert read_documents(p, "text") == ["a b\nc", "d", "e"]
    assert read_documents(p, "lines") == ["a b", "c", "d", "e"]
    s = tmp_path / "s.txt"
    s.write_text("one\n\ntwo<|endoftext|>three<|endoftext|>  <|endoftext|>", encoding="utf-8")
    assert read_documents(s, "text", separator="<|endoftext|>") == ["one\n\ntwo", "three"]


def test_streaming_split_matches_whole_file_across_tiny_chunks(tmp_path, monkeypatch):
    text = "مرحبا بالعالم\n\nhello wörld\n\n" * 50 + "end"
    p = tmp_path / "c.txt"
    p.write_text(text, encoding="utf-8")
    whole = read_documents(p, "text")
    monkeypatch.setattr(formats, "CHUNK_BYTES", 7)  # splits multi-byte characters and separators
    assert read_documents(p, "text") == whole
    assert len(whole) == 101 and whole[0] == "مرحبا بالعالم"
    assert read_documents(p, "text", separator="\n\n") == whole


def test_invalid_utf8_names_file_and_offset_or_is_replaced(tmp_path, monkeypatch):
    p = tmp_path / "bad.txt"
    p.write_bytes("héllo\n".encode() * 3 + b"bad \xff byte\n")
    with pytest.raises(LmforgeError, match=r"bad.txt is not valid UTF-8: byte 0xff at offset 25") as e:
        read_documents(p, "lines")
    assert "encoding_errors=replace" in e.value.hint
    monkeypatch.setattr(formats, "CHUNK_BYTES", 3)
    with pytest.raises(LmforgeError, match=r"offset 25"):
        read_documents(p, "lines")
    assert read_documents(p, "lines", errors="replace")[-1] == "bad \ufffd byte"
    t = tmp_path / "bad.csv"
    t.write_bytes(b"text\nok\n" + b"caf\xe9\n")
    with pytest.raises(LmforgeError, match=r"bad.csv is not valid UTF-8: byte 0xe9 at offset 11"):
        read_documents(t, "csv", column="text")
    assert read_documents(t, "csv", column="text", errors="replace") == ["ok", "caf\ufffd"]


def test_onelinefun_csv_quoted_multiline_fields():
    docs = read_documents(corpus("onelinefun.csv"), "csv", column="Joke")
    facts = corpus_facts("onelinefun.csv")
    assert len(docs) == facts["documents"]  # the real file: 2950 jokes
    assert docs[1] == facts["second"] and '"' in docs[1]  # "" inside a quoted field is one quote
    assert sum('"' in d for d in docs) == facts["with_quotes"] and sum("\n" in d for d in docs) == facts["multiline"]
    assert not any("\r" in d for d in docs)  # the file ends its lines with CRLF (the generated one: a few LF)


def test_csv_multiline_quoted_fields_across_chunks(tmp_path, monkeypatch):
    rows = [f'{i},"line one of {i}\nline ""two"" of {i}"' for i in range(7)]
    p = tmp_path / "m.csv"
    p.write_text("ID,Joke\r\n" + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    monkeypatch.setattr(formats, "TABLE_ROWS", 3)
    docs = read_documents(p, "csv", column="Joke", row_filter="ID != '4'")
    assert len(docs) == 6 and docs[5] == 'line one of 6\nline "two" of 6'


def test_imdb_csv_keeps_html_until_cleaning():
    docs = read_documents(corpus("imdb-reviews.csv"), "csv", column="review")  # ten empty trailing columns
    facts = corpus_facts("imdb-reviews.csv")  # the real file: 2000 reviews, 1144 with <br />
    assert len(docs) == facts["documents"] and sum("<br />" in d for d in docs) == facts["with_html"]
    assert "<br />" in docs[0]
    cleaned, report = clean_documents(docs, CleanConfig(strip_html=True))
    assert not any("<br" in d for d in cleaned)
    assert report[0]["step"] == "strip_html" and report[0]["chars_removed"] > 0


def test_arabic_tsv_filter_and_unharmed_by_cleaning():
    path = corpus("ArSenTD-LEV.tsv")
    facts = corpus_facts("ArSenTD-LEV.tsv")  # the real file: 1000 Lebanese tweets, 673 of them unique
    docs = read_documents(path, "tsv", column="Tweet", row_filter='Country == "lebanon"')
    assert len(docs) == facts["lebanon_rows"]
    assert docs[0].startswith(facts["lebanon_first"])  # "" inside a quoted field is one quote
    cleaned, report = clean_documents(docs, CleanConfig())
    by_step = {r["step"]: r for r in report}
    assert by_step["unicode_nfc"]["chars_removed"] == 0
    assert len(cleaned) == facts["lebanon_unique"] < len(docs)  # duplicate tweets (retweets) removed
    assert by_step["dedupe"]["docs_removed"] == len(docs) - len(cleaned)
    assert cleaned[0] == " ".join(docs[0].split())
    assert all(unicodedata.is_normalized("NFC", d) for d in cleaned)


def test_table_errors_wrong_delimiter_missing_column_bad_filter(tmp_path):
    tsv, csv = corpus("ArSenTD-LEV.tsv"), corpus("onelinefun.csv")
    with pytest.raises(LmforgeError, match="column 'Tweet' not found in .*ArSenTD-LEV.tsv") as e:
        read_documents(tsv, "csv", column="Tweet")  # read as CSV, its tab-separated header is one column
    assert "it may be TSV; --set data.format=tsv" in e.value.hint
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(LmforgeError, match="cannot parse .*bad.csv as CSV: a row has 3 fields, the header 2") as e:
        read_documents(bad, "csv", column="a")
    assert "delimiter" in e.value.hint
    with pytest.raises(LmforgeError, match="column 'Joke' not found") as e:
        read_documents(csv, "tsv", column="Joke")
    assert "data.format=csv" in e.value.hint
    with pytest.raises(LmforgeError, match="column 'Jokes' not found") as e:
        read_documents(csv, "csv", column="Jokes")
    assert "ID, Joke" in e.value.hint
    # no data.column: the one column that holds text (ID holds numbers); several is an error (test_data_sources)
    assert read_documents(csv, "csv") == read_documents(csv, "csv", column="Joke")
    with pytest.raises(LmforgeError, match="data.filter"):
        read_documents(tsv, "tsv", column="Tweet", row_filter="Nation == 'x'")


def test_imdb_tree_and_empty(tmp_path):
    for split, label, text in (("train", "pos", "Great <br />film"), ("train", "neg", "Bad"), ("test", "pos", "Ok")):
        (tmp_path / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "aclImdb" / split / label / f"0_{len(text)}.txt").write_text(text)
    (tmp_path / "aclImdb" / "README").write_text("not a review")
    assert formats.detect_format(tmp_path / "aclImdb") == "imdb"
    assert sorted(read_documents(tmp_path / "aclImdb")) == ["Bad", "Great <br />film", "Ok"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(LmforgeError, match="no documents"):
        read_documents(empty)


def test_hard_wrapped_book_is_one_text_document_or_a_document_a_line(monkeypatch):
    """A book wrapped at ~70 columns without blank lines (wizard-of-oz.txt): `text` reads it as one document, line
    breaks kept, `lines` as a document per line; the same through read chunks far smaller than the document."""
    path = corpus("wizard-of-oz.txt")
    facts = corpus_facts("wizard-of-oz.txt")
    monkeypatch.setattr(formats, "CHUNK_BYTES", 4096)
    (book,) = read_documents(path, "text")
    assert book == path.read_text(encoding="utf-8").strip() and book.startswith(facts["opening"])
    lines = read_documents(path, "lines")
    assert len(lines) == facts["lines"] and lines == [line.strip() for line in book.split("\n")]


def test_batches_are_lazy_and_bounded(monkeypatch):
    monkeypatch.setattr(formats, "CHUNK_BYTES", 1 << 16)
    batches = iter_batches(corpus("tinyshakespeare.txt"), "lines")
    first = next(batches)
    assert 0 < sum(map(len, first)) <= 1 << 16


# ---- cleaning --------------------------------------------------------------------------------------------


def test_clean_steps_and_report():
    docs = ["<p>Hello</p>  World", "e\u0301t\u00e9\t ok \n\n  next", "hi", "HELLO WORLD", "Hello World", "x" * 50]
    out, report = clean_documents(docs, CleanConfig(strip_html=True, lowercase=True, min_chars=3, max_chars=40))
    assert out == ["hello world", "\u00e9t\u00e9 ok\nnext"]
    assert [r["step"] for r in report] == ["strip_html", "unicode_nfc", "normalize_whitespace", "lowercase",
                                           "drop_short", "drop_long", "dedupe"]
    rows = {r["step"]: r for r in report}
    assert rows["drop_short"]["docs_removed"] == 1 and rows["drop_long"]["docs_removed"] == 1
    assert rows["dedupe"]["docs_removed"] == 2 and rows["dedupe"]["docs"] == 2
    assert rows["unicode_nfc"]["chars_removed"] == 1  # e + combining acute -> é
    kept, _ = clean_documents(["Hello", "HELLO"], CleanConfig())
    assert kept == ["Hello", "HELLO"]  # lowercase is off by default


def test_whitespace_fast_path_equals_per_document_rule():
    one = normalize_whitespace_one
    assert one("  a \t b \n\n  c\u3000") == "a b\nc" and one("مرحبا   بالعالم \n سلام") == "مرحبا بالعالم\nسلام"
    docs = read_documents(corpus("tinystories-sample.txt"), "text")[:300]
    odd = ["  lead", "trail \t", " \n ", "", "a \u3000 b", "a\u00a0\u00a0b\n\n\nc", "x\ry", "ok", "ok too"]
    for batch in (docs, docs + odd, odd, [d + " " for d in docs[:5]], ["a", " b", "c "]):
        assert normalize_whitespace(batch) == [one(d) for d in batch]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("ab \n\t\u00a0\u3000\u2028\rم"), max_size=8), max_size=6))
def test_fuzz_whitespace_fast_path(batch):
    assert normalize_whitespace(batch) == [normalize_whitespace_one(d) for d in batch]


def test_dedupe_across_batches():
    report: list[dict] = []
    out = list(clean_batches([["a", "b"], ["b", "c", "a"], ["d"]], CleanConfig(), report))
    assert out == [["a", "b"], ["c"], ["d"]]
    assert report[-1] == {"step": "dedupe", "docs_removed": 2, "chars_removed": 2, "docs": 4, "chars": 4}


# ---- shards ----------------------------------------------------------------------------------------------


def test_document_split_follows_content_not_position():
    from lmforge.data.prepare import document_hashes

    docs = [f"document number {i}" for i in range(1000)]
    a = content_split(document_hashes([docs], 7), 0.1)
    assert (a == content_split(document_hashes([docs[:500], docs[500:]], 7), 0.1)).all()  # batching is irrelevant
    assert 50 < a.sum() < 150
    assert not (a == content_split(document_hashes([docs], 8), 0.1)).all()  # the seed re-draws
    # the corpus gains documents at the front and loses some: every surviving document keeps its side
    changed = [f"new {i}" for i in range(300)] + docs[::2]
    b = content_split(document_hashes([changed], 7), 0.1)
    assert (b[300:] == a[::2]).all()
    for n in (2, 3):
        m = content_split(document_hashes([docs[:n]], 1), 0.01)
        assert m.any() and not m.all()
    eligible = np.arange(1000) % 2 == 0  # data.val_filter: only these may be drawn into val
    assert not (content_split(document_hashes([docs], 7), 0.5, eligible) & ~eligible).any()


def test_shards_route_documents_and_pick_dtype(tmp_path):
    batches = [(np.array([1, 2, 3, 4, 5]), np.array([2, 3])), (np.array([7, 8]), np.array([2]))]
    is_val = np.array([False, True, False])
    meta = write_shards(iter(batches), is_val, tmp_path, vocab_size=70000)
    assert meta["dtype"] == "uint32" and read_meta(tmp_path)["train"]["documents"] == 2
    assert open_shard(tmp_path, "train").tolist() == [1, 2, 7, 8]
    assert open_shard(tmp_path, "val").tolist() == [3, 4, 5]
    assert shard_dtype(65536) == np.uint16 and shard_dtype(65537) == np.uint32
    with pytest.raises(LmforgeError, match="does not fit"):
        shard_dtype(2**32 + 1)
    with pytest.raises(LmforgeError, match="no prepared shards"):
        read_meta(Path(tmp_path) / "missing")


def test_strip_urls_removes_links_and_mentions_only():
    from lmforge.core.config import CleanConfig
    from lmforge.data.clean import clean_documents

    docs = ["شو حلو https://t.co/AbC123 @user_1 الشعور", "mail a@b.com stays", "www.example.com/x gone"]
    out, report = clean_documents(docs, CleanConfig(strip_urls=True))
    assert out == ["شو حلو الشعور", "mail a@b.com stays", "gone"]
    row = next(r for r in report if r["step"] == "strip_urls")
    assert row["chars_removed"] == (19 - 1) + (7 - 1) + (17 - 1)  # each link or mention becomes one space
