"""The command line: help with examples, presets, runs --json and the HTML run report, on one tiny real run."""
from __future__ import annotations

import base64
import json
import re

import pytest
from conftest import BEATS_UNIFORM, REPO, TINY, assert_error_line, uniform_loss
from test_bad_input import restore_log_streams  # noqa: F401 (autouse fixture)

from lmforge.cli import build_parser, main


@pytest.fixture(scope="module")
def run_result(prefect_server, tmp_path_factory):
    """jokes-char under its own name: its run directory (and checkpoint) is not test_pipeline's, which a second
    run of the same config would resume from, finished, logging no training history."""
    from lmforge.flows.pipeline import pipeline

    preset = tmp_path_factory.mktemp("presets") / "clireport.toml"
    preset.write_text((REPO / "configs" / "jokes-char.toml").read_text())
    return pipeline(preset=str(preset), overrides=TINY)


def logged_metrics(run_id: str) -> dict:
    from lmforge.registry.tracking import client

    return client().get_run(run_id).data.metrics


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_help_shows_an_example(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    example = out.split("example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"lmforge {name}"), out


def test_presets_lists_jokes_char_with_its_description(capsys):
    assert main(["presets"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("jokes-char "))
    assert "pyjokes" in line


def test_runs_json_lists_the_run_with_val_loss(run_result, capsys):
    assert main(["runs", "--limit", "50", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = next(r for r in rows if r["run_id"] == run_result["run_id"])
    assert 0 < row["metrics"]["val_loss"] < uniform_loss(run_result["model_dir"]) - BEATS_UNIFORM
    assert row["metrics"]["val_loss"] == logged_metrics(run_result["run_id"])["val_loss"]
    assert row["status"] == "FINISHED"
    assert row["version"] == run_result["model_version"] and row["aliases"] == ["candidate"]


def test_runs_table_shows_version_aliases_and_val_loss(run_result, capsys):
    assert main(["runs", "--limit", "50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["started", "run", "id", "run", "status", "version", "aliases", "val_loss", "val_bpb"]
    line = next(ln for ln in out if run_result["run_id"][:12] in ln)
    val, bpb = (logged_metrics(run_result["run_id"])[k] for k in ("val_loss", "val_bits_per_byte"))
    assert f"v{run_result['model_version']} " in line and " candidate " in line
    assert line.endswith(f"{val:.4f}   {bpb:.4f}")


def test_report_takes_the_run_id_prefix_that_runs_shows(run_result, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", run_result["run_id"][:8], "--out", str(out)]) == 0
    assert run_result["run_id"] in out.read_text(encoding="utf-8")


def test_report_is_a_self_contained_page(run_result, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    assert main(["report", run_result["run_id"], "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # written atomically: no temp file left
    page = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:|/)""", page)  # nothing fetched from elsewhere
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000  # a drawn plot, not an empty canvas
    val_loss = re.search(r"<td>val_loss</td><td>([^<]+)</td>", page).group(1)
    assert float(val_loss) == pytest.approx(logged_metrics(run_result["run_id"])["val_loss"], rel=1e-5)
    assert "<td>model.n_embd</td><td>32</td>" in page
    import html

    assert html.escape(run_result["samples"][0]) in page


def test_report_of_an_unknown_run_is_one_line(prefect_server, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "0123456789abcdef", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no lmforge run id starts with '0123456789abcdef'") and assert_error_line(err)
    assert not out.exists()
