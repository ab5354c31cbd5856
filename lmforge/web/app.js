// The page: load the model directory the server serves under /model/, then generate in the page as the person
// types. The form starts from lmforge.json's generation defaults (max_new_tokens, temperature, top_k); URL
// parameters (used by tests, handy for links) override them: prompt, n, temperature, top_k, graph=portable,
// variant=int8, threads, auto=1 (generate once loaded). The last result is also left in window.lmforgeResult, and
// document.body.dataset.state says loading | ready | running | done | error.
import { Model, wasmThreads } from "/decode.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

function fail(err) {
  $("error").textContent = `error: ${err.message || err}`;
  document.body.dataset.state = "error";
  window.lmforgeResult = { error: String(err.message || err) };
}

async function run(model) {
  const prompt = $("prompt").value;
  const opts = { maxNewTokens: Math.max(1, parseInt($("n").value, 10) || 1),
    temperature: parseFloat($("temperature").value) || 0, topK: parseInt($("topk").value, 10) || 0, stats: {} };
  document.body.dataset.state = "running";
  $("go").disabled = true;
  $("out").replaceChildren();
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  const generated = document.createElement("span");
  generated.id = "generated";
  $("out").append(shown, generated);
  const ids = [];
  let text = "";
  for await (const t of model.generate(prompt, opts)) {
    ids.push(t.id);
    text = t.text;
    if (t.piece) generated.textContent += t.piece;
  }
  const s = opts.stats;
  const rate = s.steps > 0 ? s.steps / (s.decodeMs / 1000) : null;
  $("stats").textContent = `${ids.length} tokens · prefill ${s.promptIds.length} tokens in ${s.prefillMs.toFixed(1)} ms` +
    (rate ? ` · decode ${rate.toFixed(1)} tokens/s (batch 1)` : "");
  window.lmforgeResult = { prompt, promptIds: s.promptIds, ids, text, tokensPerSecond: rate, prefillMs: s.prefillMs,
    totalMs: s.totalMs, cacheDims: s.cacheDims, graph: model.graph, file: model.file, threads: wasmThreads(),
    crossOriginIsolated: self.crossOriginIsolated };
  document.body.dataset.state = "done";
  $("go").disabled = false;
}

async function main() {
  const model = await Model.load("/model/", { graph: params.get("graph") || "auto",
    threads: parseInt(params.get("threads"), 10) || undefined, variant: params.get("variant") || "fp32" });
  const defaults = model.manifest.generation || {};  // the directory's sampling defaults, then the URL's
  for (const [key, id, value] of [["prompt", "prompt"], ["n", "n", defaults.max_new_tokens],
    ["temperature", "temperature", defaults.temperature], ["top_k", "topk", defaults.top_k]]) {
    if (params.has(key)) $(id).value = params.get(key);
    else if (value != null) $(id).value = value;
  }
  window.lmforgeModel = model;
  $("model").textContent = `${model.manifest.name || "model"} · ${model.spec.family || "gpt"} · ${model.file} ` +
    `(${model.graph} graph) · onnxruntime-web wasm`;
  $("form").addEventListener("submit", (e) => { e.preventDefault(); run(model).catch(fail); });
  $("go").disabled = false;
  document.body.dataset.state = "ready";
  if (params.get("auto") === "1") await run(model);
}

main().catch(fail);
