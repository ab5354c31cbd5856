"""`lmforge run | prepare | generate | export-hf | presets | runs | promote | doctor | schedule | serve | web ...`. Heavy imports
happen inside each command, so `lmforge generate` never imports torch."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import textwrap

from lmforge.core.errors import LmforgeError
from lmforge.core.interrupt import Interrupted

EXAMPLES = {
    "run": "lmforge run --set data.source=my_jokes.csv            (registers model `my-jokes`)\n"
           "  lmforge run --preset shakespeare-char --set data.source=../shared/corpora/tinyshakespeare.txt "
           "--name shakespeare-char --json",
    "prepare": "lmforge prepare --preset lebanon-gru --set data.source=../shared/corpora/ArSenTD-LEV.tsv",
    "generate": 'lmforge generate --model models:/jokes-char@candidate --prompt "Why" --max-new-tokens 80',
    "presets": "lmforge presets",
    "bench": "lmforge bench decode --quick --json",
    "runs": "lmforge runs --limit 5\n  lmforge runs --follow      (the newest deployment run's log, live, to its end)",
    "report": "lmforge report 3f2a9c1b --out report.html\n  lmforge report --compare jokes-char@candidate jokes-char@champion",
    "promote": "lmforge promote jokes-char              (margin and gate: the candidate's [promote] section)\n"
               "  lmforge promote jokes-char --preset configs/jokes-char.toml --margin 0.02",
    "rollback": "lmforge rollback jokes-char",
    "doctor": "lmforge doctor --pool lmforge-cpu",
    "schedule": "lmforge schedule setup --stuck-after 900   (alerts go to $LMFORGE_ALERT_WEBHOOK)\n"
                "  lmforge schedule on jokes-char",
    "serve": "lmforge serve jokes-char shakespeare-char",
    "web": "lmforge web artifacts/runs/<run>/model --port 8765",
    "export-hf": "lmforge export-hf models:/jokes-char@champion jokes-char-hf --gguf q8_0",
    "serve-model": "lmforge serve-model models:/jokes-char@champion --port 8000",
}


def _overrides(pairs: list[str]) -> dict:
    from lmforge.core.config import _split

    return dict(_split(p) for p in pairs)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}:")
            for v in value:
                print("  " + textwrap.shorten(str(v), 160))
        else:
            print(f"{key}: {value}")


DASK_PARTS = 8  # data.parts under --dask unless set


def _flow_call(args, module: str, name: str) -> dict:
    """Validate the config before importing Prefect, then run flow `name` of `module` (lmforge.ops.orchestration:
    the API checked or a temporary server, Ctrl-C handled, on Dask workers with --dask)."""
    import importlib

    from lmforge.core.config import DEFAULT_PRESET, load_config
    from lmforge.ops.orchestration import prefect_env, run_flow

    prefect_env()
    overrides = _overrides(args.set)
    if args.name:
        overrides["name"] = args.name
    if args.dask:
        overrides.setdefault("data.parts", str(DASK_PARTS))
    if getattr(args, "continue_run", False):
        overrides["train.continue_run"] = "true"
    cfg = load_config(args.preset, overrides)  # the one parse: the flow takes this Config as it is
    flow = getattr(importlib.import_module(module), name)
    return run_flow(flow, args.dask, preset=args.preset or DEFAULT_PRESET, overrides=overrides,
                    wait=not args.no_wait, config=cfg)


def cmd_run(args) -> int:
    _emit(_flow_call(args, "lmforge.flows.pipeline", "pipeline"), args.json)
    return 0


def cmd_prepare(args) -> int:
    _emit(_flow_call(args, "lmforge.flows.prepare", "prepare"), args.json)
    return 0


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    """Send what native libraries write straight to file descriptor 2 (a Rust panic's message and backtrace from
    `tokenizers`, onnxruntime's C++ log lines) to /dev/null, while Python's sys.stderr and the logging handlers
    on it keep writing to the terminal through a duplicate of it: the CLI's stderr holds lmforge's lines only.
    A no-op when stderr is not file descriptor 2 (a test's capture) or when not `enabled` (--verbose)."""
    try:
        real = enabled and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False
    if not real:
        yield
        return
    old = sys.stderr
    old.flush()
    dup = os.fdopen(os.dup(2), "w", buffering=1, encoding=old.encoding, errors=old.errors)
    handlers = [h for h in logging.root.handlers if getattr(h, "stream", None) is old]
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(null, 2)
    os.close(null)
    sys.stderr = dup
    for h in handlers:
        h.setStream(dup)
    try:
        yield
    finally:
        dup.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old
        for h in handlers:
            h.setStream(old)


def cmd_generate(args) -> int:
    """Load, check the request, stream the text to stdout; speed on stderr (the order of onnxruntime-genai's
    model-generate.py: model, tokenizer, params, generate, tokens/s). Native libraries' own stderr lines are
    silenced unless --verbose."""
    with native_stderr_silenced(not args.verbose):
        return _generate(args)


def _generate(args) -> int:
    import time

    from lmforge.runtime import Generator, RowRequest
    from lmforge.runtime.requests import check_finished

    model = args.model
    if model.startswith("models:/"):
        from lmforge.registry.tracking import fetch_model_dir

        model = str(fetch_model_dir(model, quiet=not args.verbose))
    gen = Generator(model, variant=args.variant, device=args.device, threads=args.threads, lookahead=args.lookahead)
    request = RowRequest(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                         stop=args.stop, seed=args.seed)
    start = time.perf_counter()
    events = gen.stream_batch([request])  # checks the request (a non-UTF-8 prompt, a limit) before any output
    if not args.json:
        sys.stdout.write(args.prompt)
    pieces, first, last = [], None, None
    for ev in events:
        if first is None and ev.token_ids:
            first = time.perf_counter() - start  # the first token, as soon as it is text
        pieces.append(ev.text)
        last = ev
        if not args.json:
            sys.stdout.write(ev.text)
            sys.stdout.flush()
    seconds = time.perf_counter() - start
    check_finished(last)
    speed = last.completion_tokens / seconds if seconds > 0 else 0.0
    if args.json:
        print(json.dumps({"prompt": args.prompt, "text": "".join(pieces), "provider": gen.provider, "model": model,
                          "finish_reason": last.finish_reason, "prompt_tokens": last.prompt_tokens,
                          "completion_tokens": last.completion_tokens, "tokens_per_second": round(speed, 2),
                          "time_to_first_token_s": None if first is None else round(first, 4)}))
        return 0
    sys.stdout.write("\n")
    if not args.quiet:
        ttft = "-" if first is None else f"{first * 1000:.0f} ms"
        print(f"{last.completion_tokens} tokens in {seconds:.2f} s: {speed:.1f} tokens/s, time to first token {ttft}, "
              f"finish {last.finish_reason} [{gen.provider}, {gen.variant}]", file=sys.stderr)
    return 0


def cmd_export_hf(args) -> int:
    from pathlib import Path

    from lmforge.export.hf import export_hf

    source, registered = args.source, None
    if source.startswith("models:/"):
        from lmforge.registry.tracking import fetch_model_dir

        source, registered = fetch_model_dir(source), source
    elif (Path(source) / "model" / "lmforge.json").is_file():  # a run directory
        source = Path(source) / "model"
    result = export_hf(Path(source), Path(args.out), gguf=args.gguf, registered=registered,
                       push_to_hub=args.push_to_hub, private=not args.public)
    _emit(result, args.json)
    return 0


def cmd_presets(args) -> int:
    from lmforge.core.config import CHECKPOINT_HOWTO, list_presets, needs_checkpoint

    presets = list_presets()
    width = max(map(len, presets), default=0)
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")
    for name in needs_checkpoint():
        howto = CHECKPOINT_HOWTO[:1].upper() + CHECKPOINT_HOWTO[1:]
        print(f"\n{name} needs a local GPT-2 checkpoint (lmforge downloads no weights). {howto}; copy gpt2-local "
              f"to this machine, then:\n  lmforge run --preset {name} --set model.pretrained=/path/to/gpt2-local")
    return 0


def cmd_runs(args) -> int:
    if args.follow is not None:
        from lmforge.ops.follow import follow
        from lmforge.ops.orchestration import configured_api, prefect_env

        prefect_env()
        configured_api("runs --follow")
        return 0 if follow(args.follow or None) == "Completed" else 1
    from lmforge.registry.tracking import recent_runs

    rows = recent_runs(args.limit)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'started':<16}  {'run id':<12}  {'run':<28} {'status':<9} {'version':<8} {'aliases':<18} "
          f"{'val_loss':<8} val_bpb")
    for r in rows:
        version = f"v{r['version']}" if r["version"] else "-"
        val, bpb = r["metrics"].get("val_loss"), r["metrics"].get("val_bits_per_byte")
        print(f"{r['start']:<16}  {r['run_id'][:12]}  {r['name']:<28} {r['status']:<9} {version:<8} "
              f"{','.join(r['aliases']) or '-':<18} {'-' if val is None else f'{val:.4f}':<8} "
              f"{'-' if bpb is None else f'{bpb:.4f}'}")
    return 0


def _promotion_call(flow_name: str, **parameters) -> dict:
    from lmforge.ops.orchestration import prefect_env, run_flow

    prefect_env()
    import flows.promote

    return run_flow(getattr(flows.promote, flow_name), **parameters)


def cmd_promote(args) -> int:
    from lmforge.registry.promote import candidate_version

    from lmforge.registry.promote import settings

    cand = candidate_version(args.name, args.version)  # a missing model or version fails before Prefect starts
    settings(cand, args.preset, margin=args.margin, gate=args.gate)  # so does a bad preset or margin
    result = _promotion_call("promote", name=args.name, margin=args.margin, force=args.force, version=args.version,
                             gate=args.gate, by=args.by, preset=args.preset)
    _emit(result, args.json)
    if not args.json:
        from lmforge.registry.promote import decision_line

        print(decision_line(result))
    return 0


def cmd_rollback(args) -> int:
    from lmforge.registry.promote import rollback_target

    rollback_target(args.name)  # nothing to roll back to: one line, before Prefect starts
    _emit(_promotion_call("rollback", name=args.name, by=args.by), args.json)
    return 0


def cmd_doctor(args) -> int:
    from lmforge.ops.deployments import load_deployments
    from lmforge.ops.doctor import passed, run_checks
    from lmforge.ops.orchestration import prefect_env
    from lmforge.ops.schedule import default_automations_path, load_automations

    prefect_env()
    checks = run_checks(load_deployments(args.file), load_automations(args.automations or default_automations_path()),
                        args.pool, args.worker_window, args.min_free_gb)
    if args.json:
        print(json.dumps({"ok": passed(checks), "checks": [c.as_dict() for c in checks]}))
    else:
        print("\n".join(c.line() for c in checks))
    return 0 if passed(checks) else 2


def cmd_schedule(args) -> int:
    from lmforge.ops import schedule
    from lmforge.ops.deployments import load_deployments, select
    from lmforge.ops.orchestration import configured_api, prefect_env

    prefect_env()
    deployments = load_deployments(args.file)
    if args.action == "setup":
        automations = schedule.load_automations(args.automations or schedule.default_automations_path(),
                                                args.stuck_after)
        configured_api("schedule setup")
        lines = schedule.setup(deployments, automations, schedule.webhook_from_env())
    else:
        if not args.names:
            raise LmforgeError(f"`lmforge schedule {args.action}` needs the deployments' names",
                               hint=f"lmforge schedule {args.action} jokes-char")
        chosen = select(deployments, args.names)
        configured_api(f"schedule {args.action}")
        lines = [line for d in chosen for line in schedule.set_active(d, args.action == "on")]
    print("\n".join(lines))
    return 0


def cmd_serve(args) -> int:
    from lmforge.ops.deployments import load_deployments, select
    from lmforge.ops.orchestration import configured_api, prefect_env
    from lmforge.ops.runner import serve

    prefect_env()
    deployments = load_deployments(args.file)
    if not args.names and not args.all:
        raise LmforgeError("name the deployments to serve", hint="lmforge serve jokes-char, or lmforge serve --all")
    chosen = deployments if args.all else select(deployments, args.names)
    configured_api("serve")
    serve(chosen, args.limit)
    print(f"stopped serving {', '.join(d.name for d in chosen)}: their deployments are paused until served again",
          file=sys.stderr)
    return 0


def cmd_web(args) -> int:
    from lmforge.web.server import serve

    serve(args.dir, args.port)
    return 0


def cmd_serve_model(args) -> int:
    from lmforge.serving.server import serve

    model = args.model
    if model.startswith("models:/"):  # resolved once, at start: a later alias move does not change what is served
        from lmforge.registry.tracking import fetch_model_dir

        model = str(fetch_model_dir(model))
    limits = {"max_new_tokens": args.max_new_tokens, "max_prompt_bytes": args.max_prompt_bytes,
              "max_stop_strings": args.max_stop_strings, "max_stop_chars": args.max_stop_chars,
              "deadline_s": args.deadline}
    serve(model, host=args.host, port=args.port, log_level=args.log_level, name=args.name, limits=limits,
          variant=args.variant, device=args.device, threads=args.threads, max_batch=args.max_batch,
          max_queue=args.max_queue, flush_ms=args.flush_ms, source=args.model, lookahead=args.lookahead,
          batch_lookahead=args.batch_lookahead)
    return 0


def cmd_report(args) -> int:
    if args.compare:
        from lmforge.registry.report import write_comparison

        if args.run_id:
            raise LmforgeError("give either RUN_ID or --compare CANDIDATE CHAMPION",
                               hint="lmforge report --compare jokes-char@candidate jokes-char@champion")
        print(write_comparison(*args.compare, out=args.out, preset=args.preset))
        return 0
    from lmforge.registry.report import write_report
    from lmforge.registry.tracking import resolve_run_id

    if not args.run_id:
        raise LmforgeError("`lmforge report` needs a run id, or --compare CANDIDATE CHAMPION",
                           hint="`lmforge runs` lists run ids")
    print(write_report(resolve_run_id(args.run_id), args.out))
    return 0


def cmd_bench(args) -> int:
    """Run benchmarks/<what>.py's main from the source tree (benchmarks are not installed)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.what}.py"
    if not script.is_file():
        raise LmforgeError(f"benchmark script {script} not found",
                           hint="run `lmforge bench` from a source checkout (pip install -e .)")
    import sys

    spec = importlib.util.spec_from_file_location(f"lmforge_bench_{args.what}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a module its own dataclasses can find while it loads
    spec.loader.exec_module(module)
    return module.main(args.args)


def build_parser() -> argparse.ArgumentParser:  # the CLI's table: one command, then its options, a line each
    p = argparse.ArgumentParser(prog="lmforge", description="Train, export and run small language models.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, fn) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    for name, help_, fn in (("run", "Run the whole pipeline once (Prefect flow).", cmd_run),
                            ("prepare", "Acquire, clean, tokenize and shard a corpus only.", cmd_prepare)):
        sp = add(name, help_, fn)
        sp.add_argument("--preset", help="preset name (`lmforge presets`) or a .toml path; default jokes-char")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key: SECTION.KEY=VALUE (train.max_steps=50, data.source=PATH), "
                             "name=NAME (the registered model), description=TEXT (the model card's first "
                             "paragraph); an unknown key lists the valid ones")
        sp.add_argument("--name", help="the registered model's name (same as --set name=NAME); default: the "
                        "preset's, or for data.source other than the preset's own, the data's file name "
                        "(my_jokes.csv -> my-jokes)")
        sp.add_argument("--json", action="store_true", help="print the result as one JSON line")
        sp.add_argument("--dask", metavar="local:N|tcp://HOST:PORT",
                        help=f"clean and encode data in parts on Dask workers (data.parts defaults to {DASK_PARTS})")
        sp.add_argument("--no-wait", action="store_true",
                        help="stop at once when another process holds this config's data or run directory")
        if name == "run":
            sp.add_argument("--continue", dest="continue_run", action="store_true",
                            help="train a finished run of this config and data on to a larger train.max_steps, from "
                                 "its last step (docs/scheduling.md); = --set train.continue_run=true")

    g = add("generate", "Generate text with onnxruntime from a model directory or models:/NAME@ALIAS.", cmd_generate)
    g.add_argument("--model", required=True, help="exported model directory or models:/NAME@ALIAS (or /VERSION)")
    g.add_argument("--prompt", default="", help="the text to continue (default: none, the model starts from <bos>)")
    g.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="tokens to generate at most (default: the model's lmforge.json `generation`)")
    g.add_argument("--temperature", type=float, metavar="T",
                   help="0 = greedy; higher = more random (default: the model's)")
    g.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest tokens only; 0 = off")
    g.add_argument("--top-p", type=float, metavar="P", help="sample from the likeliest tokens holding P of the "
                   "probability (nucleus); 1 = off")
    g.add_argument("--repetition-penalty", type=float, metavar="R", help="> 1 makes tokens already in the text "
                   "less likely (CTRL-style); 1 = off (default)")
    g.add_argument("--stop", action="append", metavar="TEXT", help="end the text before TEXT appears (repeatable)")
    g.add_argument("--seed", type=int, help="random seed: the same seed gives the same text (default: fresh)")
    g.add_argument("--variant", default="fp32", help="fp32 | int8 | int4 | fp16 | optimized (as exported)")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where onnxruntime runs: auto = CUDA when it loads, else CPU")
    g.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads (default: all cores)")
    g.add_argument("--lookahead", type=int, metavar="K", help="greedy: draft tokens checked per graph call "
                   "(prompt lookup, fp32 fast graph; the same text); 0 = off (default: lmforge.json's, else 4)")
    g.add_argument("--json", action="store_true", help="print one JSON line: text, provider, finish reason, "
                   "token counts, tokens/s, time to first token")
    g.add_argument("--quiet", action="store_true", help="no speed line on stderr (tokens/s, time to first token)")
    g.add_argument("--verbose", action="store_true", help="let MLflow show its download progress for models:/")

    h = add("export-hf", "Copy a model's Hugging Face folder (transformers, the Hub) out of its export, optionally "
            "with a GGUF file for llama.cpp and an upload to the Hub.", cmd_export_hf)
    h.add_argument("source", metavar="SOURCE", help="exported model directory, run directory or models:/NAME@ALIAS")
    h.add_argument("out", metavar="OUT", help="new directory to write (config.json, model.safetensors, ...)")
    h.add_argument("--gguf", choices=["f32", "f16", "q8_0"], help="also write OUT/model.<type>.gguf")
    h.add_argument("--push-to-hub", metavar="REPO", help="upload OUT to this Hub repo (needs a token; off by default)")
    h.add_argument("--public", action="store_true", help="with --push-to-hub: create the repo public (default private)")
    h.add_argument("--json", action="store_true", help="print the result as one JSON line")

    b = add("bench", "Run a benchmark side by side and write benchmarks/results/ (JSON + markdown).", cmd_bench)
    b.add_argument("what", choices=["decode"], help="decode: torch vs transformers vs onnxruntime decoding speed")
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark: --quick, --new-tokens N, --json")
    add("presets", "List the presets, one line each.", cmd_presets)
    r = add("runs", "List recent runs with their metrics; --follow: print a deployment run's log as it runs "
            "(losses, samples, the version it registers, the promotion) until it ends.", cmd_runs)
    r.add_argument("--limit", type=int, default=10, help="runs listed (default 10)")
    r.add_argument("--json", action="store_true", help="print the runs as one JSON list")
    r.add_argument("--follow", nargs="?", const="", metavar="FLOW_RUN",
                   help="follow this flow run (id or name; default: the newest run of an lmforge deployment) on "
                        "the Prefect server PREFECT_API_URL names; exit 0 when it completes, 1 otherwise")
    rep = add("report", "Write a self-contained HTML report of one run (loss plot, metrics, samples), or of two "
              "versions side by side (--compare).", cmd_report)
    rep.add_argument("run_id", metavar="RUN_ID", nargs="?",
                     help="MLflow run id or any unique prefix of it (`lmforge runs`)")
    rep.add_argument("--compare", nargs=2, metavar=("CANDIDATE", "CHAMPION"),
                     help="two registered versions (NAME@ALIAS, NAME/VERSION or models:/...): both loss curves on one "
                          "plot, their scores in bits per byte on the candidate's val text, and their continuations "
                          "of the same prompts side by side")
    rep.add_argument("--preset", help="--compare: read the prompts and sampling settings of this preset (default: "
                     "the candidate's config)")
    rep.add_argument("--out", help="output file; default report-<run id>.html (report-compare-....html)")
    pro = add("promote", "Move alias `champion` to `candidate` (or --version N) when it wins on held-out data "
              "neither was trained on.", cmd_promote)
    pro.add_argument("name", metavar="NAME", help="registered model name (the preset's name)")
    pro.add_argument("--version", help="promote this version instead of `candidate`")
    pro.add_argument("--preset", help="read the [promote] section (margin, gate, windows) and the prompts from this "
                     "preset (a name or .toml path) instead of the config the candidate was trained with")
    pro.add_argument("--margin", type=float, help="bits per byte of val text the candidate must win by (default: "
                     "promote.margin of the candidate's config, or of --preset)")
    pro.add_argument("--gate", type=float, help="with no champion yet: bits per byte it must beat the unigram model "
                     "of its own tokens by (default: promote.gate, as --margin)")
    pro.add_argument("--force", action="store_true", help="promote whatever the comparison says")
    pro.add_argument("--by", help="who decides (recorded on the version; default: your user name)")
    pro.add_argument("--json", action="store_true", help="print the result as one JSON line")
    rb = add("rollback", "Put back the champion the current one replaced (recorded on both versions).", cmd_rollback)
    rb.add_argument("name", metavar="NAME", help="registered model name")
    rb.add_argument("--by", help="who decides (default: your user name)")
    rb.add_argument("--json", action="store_true", help="print the result as one JSON line")
    w = add("web", "Serve a page on 127.0.0.1 that runs a model directory in the browser (onnxruntime-web): type "
            "a prompt, watch the tokens stream.", cmd_web)
    w.add_argument("dir", metavar="DIR", help="exported model directory")
    w.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    _add_serve_model_command(add)
    _add_operate_commands(add)
    return p


def _add_serve_model_command(add) -> None:
    s = add("serve-model", "Serve a model directory or models:/NAME@ALIAS over HTTP: OpenAI-compatible "
            "/v1/completions (streamed or not), concurrent requests decoded as one batch (docs/serving.md).",
            cmd_serve_model)
    s.add_argument("model", metavar="MODEL", help="exported model directory or models:/NAME@ALIAS (resolved at start)")
    s.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (default), 0.0.0.0 or :: (LitServe binds these)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--name", help="the model id clients send (default: the model's name in lmforge.json)")
    s.add_argument("--max-batch", type=int, help="requests decoded together (default 16; 8 with --batch-lookahead)")
    s.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting for a first token before new ones get 503 (0 = no limit)")
    lim = "a serving limit; lowers the model's own (lmforge.json `limits`), never raises it"
    s.add_argument("--max-new-tokens", type=int, help=f"most tokens one request may ask for: {lim}")
    s.add_argument("--max-prompt-bytes", type=int, help=f"largest prompt in UTF-8 bytes: {lim}")
    s.add_argument("--max-stop-strings", type=int, help=f"most stop strings per request: {lim}")
    s.add_argument("--max-stop-chars", type=int, help=f"longest stop string: {lim}")
    s.add_argument("--deadline", type=float, metavar="SECONDS", help=f"time from arrival to last token: {lim}")
    s.add_argument("--flush-ms", type=float, default=20.0,
                   help="after a request's first text, send its text at most this often (default 20 ms)")
    s.add_argument("--variant", default="fp32", help="fp32 | int8 | int4 | fp16 (as exported)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's)")
    s.add_argument("--lookahead", type=int, metavar="K", help="greedy requests: draft tokens checked per graph call "
                   "(prompt-lookup speculation; fp32: the same text; 0 = off; default: lmforge.json "
                   "`generation.lookahead`, else 4, int4 0)")
    s.add_argument("--batch-lookahead", action="store_true",
                   help="concurrent greedy requests check their drafts together, in one call of the rows graph "
                        "(a model exported with export.rows_graph, fp32 on the CPU; the batch is its 8 rows): pays "
                        "where text repeats, costs a little where it does not (docs/decode.md)")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def _add_operate_commands(add) -> None:
    """doctor, schedule, serve: the deployments of prefect.yaml on a Prefect server (lmforge/ops/doctor.py,
    lmforge/ops/schedule.py, lmforge/ops/runner.py)."""
    doc = add("doctor", "Check that the scheduled deployments will run: server, pools, workers, deployments, alerts, "
              "MLflow, disk, devices. One line per check, with its fix; exit 0 when all pass, 2 otherwise.", cmd_doctor)
    doc.add_argument("--pool", help="check this work pool and its deployments only, and this host as its worker")
    doc.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    doc.add_argument("--worker-window", type=float, default=300.0, metavar="SECONDS",
                     help="a worker counts when it polled within this many seconds (default 300)")
    doc.add_argument("--min-free-gb", type=float, default=2.0, help="free disk the artifacts directory needs")
    doc.add_argument("--automations", help="the alerts file; default automations.yaml in the repository")
    doc.add_argument("--file", help="the deployment file; default prefect.yaml in the repository")
    sch = add("schedule", "setup: GPU slots, alert webhook and late-run automations on the server; on/off NAME: "
              "turn a deployment's schedules on or off.", cmd_schedule)
    sch.add_argument("action", choices=["setup", "on", "off"])
    sch.add_argument("names", nargs="*", metavar="NAME", help="deployments (on/off)")
    sch.add_argument("--stuck-after", type=int, metavar="SECONDS",
                     help="setup: alert when a run stays Late or Pending this long (default: automations.yaml's)")
    sch.add_argument("--automations", help="the alerts file; default automations.yaml in the repository")
    sch.add_argument("--file", help="the deployment file; default prefect.yaml in the repository")
    srv = add("serve", "Run deployments' schedules in this process with Prefect's serve (no work pool or worker); "
              "Ctrl-C stops.", cmd_serve)
    srv.add_argument("names", nargs="*", metavar="NAME", help="deployments of prefect.yaml to serve")
    srv.add_argument("--all", action="store_true", help="serve every deployment of prefect.yaml")
    srv.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1)")
    srv.add_argument("--file", help="the deployment file; default prefect.yaml in the repository")


PIPELINE_MODULES = {"torch", "prefect", "prefect_dask", "distributed", "mlflow", "onnx", "pandas", "pyjokes",
                    "safetensors", "rich", "matplotlib"}

SERVE_MODULES = {"litserve", "prometheus_client", "fastapi", "uvicorn", "zmq"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("lmforge").setLevel(logging.INFO)  # progress lines, downloads, <unk> notices
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
        sys.stdout.flush()  # here, not at exit: a reader that has gone (`| head`) is handled below
        return rc
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # Ctrl-C / SIGTERM: the work up to here is saved
        print(exc.message, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a loop that saves its work
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge presets | head -2`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:  # a runtime-only install (`pip install lmforge`) asked for pipeline work
        if exc.name == "onnxruntime":
            print(f"error: `lmforge {args.command}` needs onnxruntime, which lmforge leaves to you to pick (hint: "
                  'pip install "lmforge[cpu]", or "lmforge[cuda]" on a CUDA host)', file=sys.stderr)
            return 2
        if exc.name in SERVE_MODULES:
            print(f"error: `lmforge {args.command}` needs {exc.name}, which only the serve extra installs "
                  '(hint: pip install "lmforge[serve,cpu]")', file=sys.stderr)
            return 2
        if exc.name not in PIPELINE_MODULES:
            raise
        print(f"error: `lmforge {args.command}` needs {exc.name}, which the runtime-only install leaves out "
              '(hint: pip install "lmforge[pipeline,cpu]")', file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            if args.command == "generate" and isinstance(exc, FileNotFoundError):
                print(f"error: {exc}", file=sys.stderr)
                return 2
            raise
        print(f"error: disk full writing {exc.filename or 'a file'} (hint: free some space, or point "
              "LMFORGE_ARTIFACTS at a larger disk)", file=sys.stderr)
        return 2
    except ValueError as exc:
        runtime = sys.modules.get("lmforge.runtime.errors")  # loaded whenever the runtime raised one of its errors
        if args.command != "generate" and not (runtime and isinstance(exc, runtime.RuntimeInputError)):
            raise  # a bug, not bad input: the traceback says where
        print(f"error: {exc}", file=sys.stderr)  # a RuntimeInputError names its fix: `<problem> (hint: <fix>)`
        return 2


if __name__ == "__main__":
    sys.exit(main())
