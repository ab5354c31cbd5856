"""`lmforge report RUN_ID`: one self-contained HTML page for an MLflow run: the loss curves (an inline PNG
drawn from the metric history), the final metrics, the samples and the parameters."""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import tempfile
from pathlib import Path

from lmforge.registry import tracking
from lmforge.core.atomic import write_text_atomic
from lmforge.core.errors import LmforgeError
from lmforge.core.redact import redact_text

CURVES = ("train_loss", "val_loss")


def get_run(run_id: str):
    c = tracking.client()
    try:
        return c.get_run(run_id)
    except Exception as exc:  # mlflow raises MlflowException for an unknown id
        raise LmforgeError(f"no MLflow run {run_id!r} at {redact_text(tracking.tracking_uri())}: "
                           f"{str(exc).splitlines()[0][:160]}", hint="`lmforge runs` lists run ids") from None


def loss_history(run_id: str) -> dict[str, list[tuple[int, float]]]:
    c = tracking.client()
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k) if m.step) for k in CURVES}


def loss_plot_png(history: dict[str, list[tuple[int, float]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, points in history.items():
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name.replace("_loss", ""))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if any(history.values()):
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_samples(run_id: str) -> list[dict]:
    """The samples/samples.json artifact the pipeline logs, or [] when the run has none."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="samples/samples.json",
                                                       dst_path=tmp)
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except Exception:  # no such artifact (run failed before sampling) or an unreadable one
            return []


def _table(rows: list[tuple[str, str]], head: tuple[str, str]) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{cells}</table>"


def build_report(run_id: str) -> str:
    run = get_run(run_id)
    png = base64.b64encode(loss_plot_png(loss_history(run_id))).decode()
    metrics = [(k, f"{v:.6g}") for k, v in sorted(run.data.metrics.items())]
    params = [(k, v) for k, v in sorted(run.data.params.items())]
    samples = run_samples(run_id)
    sample_html = "".join(f"<li><b>T={html.escape(str(s.get('temperature')))}</b> "
                          f"<pre>{html.escape(str(s.get('text', '')))}</pre></li>" for s in samples) or "<li>none</li>"
    started = datetime.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    title = html.escape(f"lmforge run {run.info.run_name or run_id}")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}pre{{white-space:pre-wrap;margin:0}}</style></head>
<body><h1>{title}</h1>
<p>run id <code>{html.escape(run_id)}</code>, status {html.escape(run.info.status)}, started {started}</p>
<h2>Loss</h2><img alt="loss curves" src="data:image/png;base64,{png}">
<h2>Metrics</h2>{_table(metrics, ("metric", "value"))}
<h2>Samples</h2><ul>{sample_html}</ul>
<h2>Parameters</h2>{_table(params, ("key", "value"))}
</body></html>
"""


def write_report(run_id: str, out: Path | None = None) -> Path:
    """Write the report atomically to `out` (default report-<run id>.html in the current directory)."""
    out = Path(out or f"report-{run_id[:12]}.html")
    return write_text_atomic(out, build_report(run_id))
