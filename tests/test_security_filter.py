"""data.filter / data.val_filter (lmforge/core/rowfilter.py): the allow-listed language selects the same rows
pandas' query would, and every expression outside it is refused in one line without running anything."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, corpus
from lmforge.cli import main
from lmforge.core.config import load_config
from lmforge.data.formats import read_documents
from lmforge.core.rowfilter import all_of, parse
from lmforge.core.errors import LmforgeError

# A typed table, and the same table as read_table sees it (every column text, as read_csv(dtype=str) gives).
TYPED = pd.DataFrame({"Country": ["lebanon", "syria", "jordan", "lebanon", "palestine", "syria"],
                      "Score": [1, 2, 3, 4, 5, -1],
                      "Ratio": [0.5, 1.5, 2.5, -0.5, 3.0, 1.0],
                      "my col": ["a", "b", "c", "d", "e", "f"]})
TEXT = TYPED.astype(str)

ALLOWED = [
    'Country == "lebanon"',
    "Country != 'syria'",
    'Country in ["syria", "jordan"]',
    'Country not in ("syria",)',
    'not Country == "lebanon"',
    'Country == "lebanon" and Score > 1',
    'Country == "syria" or Score >= 4',
    '(Country == "syria" or Country == "jordan") and not Score < 2',
    "1 < Score <= 4",
    "Score == -1",
    "Ratio < 1.5",
    'Score in [1, 5] and `my col` != "a"',
    '`my col` in ["b", "c"]',
    "Score > 2 and True",
]


def rows_kept(mask) -> list[int]:
    return [i for i, keep in enumerate(mask.tolist()) if keep]


@pytest.mark.parametrize("expr", ALLOWED)
def test_allowed_expressions_keep_the_rows_pandas_query_keeps(expr):
    """pandas' own query on the typed table is the reference; ours runs on the all-text table read_table sees."""
    expected = [TYPED.index.get_loc(i) for i in TYPED.query(expr).index]
    assert rows_kept(parse(expr).mask(TEXT)) == expected
    assert rows_kept(parse(expr).mask(TYPED)) == expected


class Payload:
    """A marker file that appears if an expression ever runs code."""

    def __init__(self, tmp_path: Path):
        self.marker = tmp_path / "pwned"

    def command(self) -> str:
        return f"touch {self.marker}"


def test_the_at_payload_is_real_pandas_query_runs_it(tmp_path):
    """The reason for the module: DataFrame.query runs this payload (the marker appears); lmforge refuses it."""
    payload = Payload(tmp_path)
    expr = f'Country == @pd.io.common.os.system("{payload.command()}")'
    TEXT.query(expr)  # noqa: PD011 - the unsafe call this module replaces, run on purpose
    assert payload.marker.exists()
    payload.marker.unlink()
    table = tmp_path / "t.csv"
    TEXT.to_csv(table, index=False)
    with pytest.raises(LmforgeError, match=re.escape("`@` references to Python variables are not allowed")):
        read_documents(table, "csv", column="Country", row_filter=expr)
    assert not payload.marker.exists()


REFUSED = {  # expression -> the part of the one-line message that names what is not allowed
    'Country == @pd.io.common.os.system("{cmd}")': "`@` references to Python variables are not allowed "
                                                    '(`@pd.io.common.os.system("touch',
    '__import__("os").system("{cmd}") == 0': "function calls are not allowed (`__import__(\"os\").system(",
    "Country == os.getcwd()": "function calls are not allowed (`os.getcwd()`)",
    "Country.str.len() > 3": "function calls are not allowed (`Country.str.len()`)",
    'Country.str == "x"': "attribute access is not allowed (`Country.str`)",
    'Country[0] == "l"': "subscripts are not allowed (`Country[0]`)",
    "(lambda: 1)() == 1": "function calls are not allowed",
    "(lambda: 1) == 1": "lambdas are not allowed (`lambda: 1`)",
    "[c for c in Country] == 1": "comprehensions are not allowed (`[c for c in Country]`)",
    "{c: 1 for c in Country} == 1": "comprehensions are not allowed",
    'f"{Country}" == "lebanon"': "f-strings are not allowed (`f\"{Country}\"`)",
    "(x := 1) == 1": "assignment expressions (:=) are not allowed (`x := 1`)",
    "Score + 1 > 2": "arithmetic operators are not allowed (`Score + 1`)",
    '(Country == "a") & (Score == 1)': "`&` is not allowed; write `and`",
    '~(Country == "a")': "`~` is not allowed; write `not`",
    "Country is None": "`is` is not allowed; write == or !=",
    "Country == None": "only str, int, float and bool literals are allowed (`None`)",
    'Country == b"x"': "only str, int, float and bool literals are allowed (`b\"x\"`)",
    "Country in Score": "`in` / `not in` must be followed by a [list] of literals (`Score`)",
    "Country in [Score]": "only literals are allowed in the list after `in` (`Score`)",
    'Country == ["a"]': "a list is only allowed after `in` / `not in`",
    'Country == "a" if Score else "b"': "conditional expressions are not allowed",
    "Country": "a column on its own is not a condition",
    "import os": "not a valid expression",
    'Country == "a") or ("1" == "1': "not a valid expression: unmatched ')'",
}


@pytest.mark.parametrize("expr", REFUSED)
def test_expressions_outside_the_allow_list_are_refused_and_never_run(expr, tmp_path):
    payload = Payload(tmp_path)
    text = expr.replace("{cmd}", payload.command())
    with pytest.raises(LmforgeError) as info:
        parse(text, "data.filter")
    message = str(info.value)
    assert message.startswith("data.filter: ") and "\n" not in message
    assert REFUSED[expr].replace("{cmd}", payload.command()) in message
    assert "e.g. --set data.filter=" in info.value.hint  # a valid example to copy
    assert not payload.marker.exists()


def test_bad_filter_fails_at_config_load_through_the_cli_before_prefect(capsys):
    """No prefect_server fixture: the one-line error comes from load_config, before any flow starts."""
    rc = main(["prepare", "--preset", "lebanon-gru", "--set", "data.val_filter=Country == os.getcwd()"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: data.val_filter: function calls are not allowed (`os.getcwd()`)")


def test_unknown_column_names_the_columns(tmp_path):
    table = tmp_path / "t.csv"
    TEXT.to_csv(table, index=False)
    with pytest.raises(LmforgeError) as info:
        read_documents(table, "csv", column="Country", row_filter='Contry == "lebanon"')
    assert f"data.filter: no column 'Contry' in {table}; did you mean 'Country'?" == info.value.message
    assert "columns are: Country, Score, Ratio, my col" in info.value.hint


def test_filter_reads_a_real_table_like_pandas_query():
    """The lebanon-gru preset's expression on the real ArSenTD-LEV file, against pandas' query on the same rows."""
    path = corpus("ArSenTD-LEV.tsv")
    cfg = load_config("lebanon-gru")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    expected = [t.strip() for t in table.query(cfg.data.val_filter)["Tweet"] if t.strip()]
    assert read_documents(path, "tsv", column="Tweet", row_filter=cfg.data.val_filter) == expected
    assert 0 < len(expected) < len(table)


def test_filter_and_val_filter_combine_as_trees(tmp_path):
    """mark_val_eligible: only rows kept by data.filter AND matching data.val_filter can go to val."""
    from lmforge.data.prepare import clean_to_spill, finish_cleaning, read_spill

    import numpy as np

    rows = [(f"document number {i} from {c}", c) for i, c in enumerate(["A", "B", "C"] * 20)]
    table = tmp_path / "t.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("text", "Country"), *rows])
    cfg = load_config("jokes-char", {"data.source": str(table), "data.format": "csv", "data.column": "text",
                                     "data.filter": 'Country != "C"', "data.val_filter": 'Country == "B"'})
    cleaned = finish_cleaning(clean_to_spill(table, cfg, tmp_path / "out"), table, cfg)
    docs = [d for batch in read_spill(cleaned.spill) for d in batch]
    eligible = np.load(cleaned.val_ok).tolist()
    country = dict(rows)
    assert docs == [t for t, c in rows if c != "C"]
    assert eligible == [country[d] == "B" for d in docs]
    combined = all_of(("data.filter", cfg.data.filter), ("data.val_filter", cfg.data.val_filter))
    assert [p.key for p in combined.parts] == ["data.filter", "data.val_filter"]


def test_a_filter_cannot_reach_into_val_filter():
    """With the old string concatenation `(filter) and (val_filter)`, this filter would have turned the AND
    into an OR; as its own tree it is simply not an expression."""
    with pytest.raises(LmforgeError, match="data.filter: not a valid expression"):
        load_config("lebanon-gru", {"data.filter": 'Country == "syria") or ("1" == "1'})


def test_no_query_or_eval_left_on_config_strings():
    """Source scan: filters never reach DataFrame.query / eval / numexpr."""
    offenders = []
    for path in sorted((REPO / "lmforge").rglob("*.py")) + sorted((REPO / "tasks").rglob("*.py")):
        src = path.read_text()
        offenders += [f"{path.name}: {m}" for m in re.findall(r"\.query\(|(?<![.\w])(?:eval|exec)\(|numexpr", src)]
    assert offenders == []
