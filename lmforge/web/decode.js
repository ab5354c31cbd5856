// Greedy / sampled decoding of an exported lmforge model directory with onnxruntime-web (wasm), batch 1, the same
// loop as lmforge.runtime.Generator: [bos] + prompt ids (the last block_size - 1 of them), prefill, one token per
// step, EOS ends, and past the context a re-prefill of the last block_size / 2 tokens.
//   gpt: the fast graph (model.fast.onnx: GroupQueryAttention over a fixed-capacity KV cache [1, H, capacity, D],
//        allocated once per call, fed back each step at that same shape) when the directory has it, else the
//        portable graph (model.onnx, whose present.* grows by one position per step);
//   lstm / gru: the step graph (model.onnx), state [n_layer, 1, n_hidden] fed back.
import * as ort from "/ort/ort.wasm.min.mjs";
import { Tokenizer } from "/tokenizer.js";

ort.env.wasm.wasmPaths = "/ort/";

const i64 = (values, dims) => new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), dims);
const i32 = (values, dims) => new ort.Tensor("int32", Int32Array.from(values), dims);
const f32zeros = (dims) => new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);

async function fetchJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// One call of a graph: `feeds` plus the state inputs fed `past`; returns [the state outputs (the next call's
// past), the logits of the last of the T positions].
async function runWithState(m, feeds, past, T) {
  m.io.state.forEach((s, i) => { feeds[s.input] = past[i]; });
  const out = await m.session.run(feeds);
  const V = m.vocab;
  return [m.io.state.map((s) => out[s.output]), out[m.io.logits].data.slice((T - 1) * V, T * V)];
}

// Graphs. Each: prefill(tokens) -> last logits (Float32Array [V]); step(token) -> logits; full() -> whether one
// more token would pass the cache / context.
class FastGPT {
  constructor(model, capacity) {
    this.m = model;
    this.capacity = capacity;
    const { n_head: H, head_dim: D } = model.spec;
    this.dims = [1, H, capacity, D];
  }
  async run(ids, positions, past) {
    const m = this.m, T = ids.length;
    const feeds = { input_ids: i64(ids, [1, T]), position_ids: i64(positions, [1, T]),
      seqlens_k: i32([this.length + T - 1], [1]), total_sequence_length: i32([this.length + T], []) };
    let logits;
    [this.state, logits] = await runWithState(m, feeds, past, T);
    this.length += T;
    return logits;
  }
  prefill(tokens) {
    this.length = 0;
    return this.run(tokens, range(0, tokens.length), this.m.io.state.map(() => f32zeros(this.dims)));
  }
  step(token) { return this.run([token], [this.length], this.state); }
  full() { return this.length + 1 > this.capacity; }
}

class PortableGPT {
  constructor(model) {
    this.m = model;
    const { n_head: H, head_dim: D } = model.spec;
    this.empty = [1, H, 0, D];
  }
  async run(ids, past) {
    const m = this.m, T = ids.length;
    const feeds = { input_ids: i64(ids, [1, T]), position_ids: i64(range(this.length, this.length + T), [1, T]),
      attention_mask: i64(new Array(this.length + T).fill(1), [1, this.length + T]) };
    let logits;
    [this.state, logits] = await runWithState(m, feeds, past, T);
    this.length += T;
    return logits;
  }
  prefill(tokens) {
    this.length = 0;
    return this.run(tokens, this.m.io.state.map(() => f32zeros(this.empty)));
  }
  step(token) { return this.run([token], this.state); }
  full() { return this.length + 1 > this.m.blockSize; }
}

class Recurrent {
  constructor(model) { this.m = model; }
  async run(ids, state) {
    const m = this.m, T = ids.length;
    const feeds = { input_ids: i64(ids, [1, T]) };
    let logits;
    [this.state, logits] = await runWithState(m, feeds, state, T);
    return logits;
  }
  prefill(tokens) {
    return this.run(tokens, this.m.io.state.map((s) => f32zeros([s.shape[0], 1, s.shape[2]])));
  }
  step(token) { return this.run([token], this.state); }
  full() { return false; }  // a recurrent state has no context limit
}

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function sample(logits, temperature, topK) {
  if (!(temperature > 0)) return argmax(logits);
  let order = Array.from(logits.keys());
  if (topK > 0 && topK < order.length) order = order.sort((a, b) => logits[b] - logits[a]).slice(0, topK);
  const top = Math.max(...order.map((i) => logits[i]));
  const p = order.map((i) => Math.exp((logits[i] - top) / temperature));
  let u = Math.random() * p.reduce((a, b) => a + b, 0);
  for (let j = 0; j < p.length; j++) { u -= p[j]; if (u < 0) return order[j]; }
  return order[order.length - 1];
}

export const wasmThreads = () => ort.env.wasm.numThreads;

export class Model {
  static async load(base = "/model/", { graph = "auto", threads, variant = "fp32" } = {}) {
    if (threads) ort.env.wasm.numThreads = threads;
    const manifest = await fetchJson(base + "lmforge.json");
    const tokenizer = new Tokenizer(await fetchJson(base + manifest.tokenizer.file));
    const m = new Model();
    m.manifest = manifest;
    m.tokenizer = tokenizer;
    m.spec = manifest.model;
    m.vocab = m.spec.vocab_size;
    m.rnn = manifest.io.state.some((s) => s.kind === "rnn");
    m.blockSize = m.rnn ? Infinity : m.spec.block_size;
    if (!["fp32", "int8"].includes(variant)) throw new Error(`variant must be fp32 or int8, got ${variant}`);
    const fastKey = variant === "int8" ? "fast-int8" : "fast";
    const fast = !m.rnn && manifest.io.fast && manifest.files[fastKey] && graph !== "portable";
    m.graph = m.rnn ? "rnn" : fast ? "fast" : "portable";
    m.io = fast ? manifest.io.fast : manifest.io;
    m.variant = variant;
    m.file = manifest.files[fast ? fastKey : variant];
    if (!m.file) throw new Error(`the model directory has no ${variant} graph (lmforge.json files)`);
    m.session = await ort.InferenceSession.create(base + m.file,
      { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    const t = manifest.tokens || {};
    [m.bos, m.eos, m.pad] = [t.bos, t.eos, t.pad];
    return m;
  }

  // [bos] + ids: tokenizer.json's post-processor adds it; an export without one gets it prepended here
  encode(text) {
    const ids = this.tokenizer.encode(text);
    return this.tokenizer.addsSpecialTokens || this.bos == null ? ids : [this.bos].concat(ids);
  }

  // Yields {id, piece, text} per generated token (piece: new whole characters, "" while a character is split).
  async *generate(prompt, { maxNewTokens = 100, temperature = 0, topK = 0, stats = {} } = {}) {
    let tokens = this.encode(prompt);
    if (Number.isFinite(this.blockSize)) tokens = tokens.slice(-(this.blockSize - 1));
    if (!tokens.length) tokens = [this.pad ?? 0];
    stats.promptIds = tokens.slice();
    const window = Math.max(1, Math.floor(this.blockSize / 2));
    const g = this.graph === "rnn" ? new Recurrent(this)
      : this.graph === "fast" ? new FastGPT(this, Math.min(this.blockSize, tokens.length + maxNewTokens))
        : new PortableGPT(this);
    const t0 = performance.now();
    let logits = await g.prefill(tokens);
    if (!prompt && this.eos != null) logits[this.eos] = -Infinity;  // as lmforge.runtime: never an empty text
    const t1 = performance.now();
    stats.prefillMs = t1 - t0;
    stats.steps = 0;
    const generated = [];
    let emitted = "";
    for (let step = 0; step < maxNewTokens; step++) {
      const next = sample(logits, temperature, topK);
      if (next === this.eos) break;
      generated.push(next);
      tokens.push(next);
      const text = this.tokenizer.decode(generated);
      let piece = "";
      if (!text.endsWith("\ufffd") && text.length > emitted.length && text.startsWith(emitted)) {
        piece = text.slice(emitted.length);
        emitted = text;
      }
      yield { id: next, piece, text };
      if (step === maxNewTokens - 1) break;
      logits = g.full() ? await g.prefill(tokens.slice(-window)) : await g.step(next);
      stats.steps++;
      stats.decodeMs = performance.now() - t1;
    }
    stats.totalMs = performance.now() - t0;
    stats.cacheDims = g.state[0].dims;  // the last state fed back (fast graph: [1, H, capacity, D] every step)
  }
}
