// The Hugging Face tokenizer.json kinds that lmforge exports, encoded and decoded in the page:
//   char  BPE over single characters, no merges, no pre-tokenizer; normalizer Replace(" " -> "▁"), decoder
//         Replace("▁" -> " ") + Fuse (lmforge/export/tokenizer.py; older exports: WordLevel + Split(Regex
//         "[\s\S]") + Fuse)
//   word  WordLevel + Split(Regex WORD_PATTERN) + Fuse    (words, digits, punctuation with their leading space)
//   bpe   BPE + ByteLevel pre-tokenizer + ByteLevel decoder (byte-level BPE; also GPT-2's tokenizer files)
// Added tokens (<pad> <unk> <bos> <eos>, <|endoftext|>) are matched literally first, as `tokenizers` does;
// the post-processor's template (TemplateProcessing: <bos> before the text) is applied by encode(text), as
// `tokenizers`' encode does by default; decode skips special tokens, as `tokenizers`' decode does by default.
// Anything else raises one error naming the part of tokenizer.json that is not supported here.

// Rust regex classes are Unicode-aware; JavaScript's \w \d \s are not, so the patterns lmforge writes are
// translated once, by hand, to their Unicode property equivalents (`v` flag for the set difference).
const WORD = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}"; // Rust's \w
const PATTERNS = {
  "[\\s\\S]": "[\\s\\S]",
  " ?[^\\W\\d_]+| ?\\d| ?[^\\w\\s]|\\s+":
    ` ?[[${WORD}]--[\\p{Nd}_]]+| ?\\p{Nd}| ?[^${WORD}\\p{White_Space}]|\\p{White_Space}+`,
};
// tokenizers' ByteLevel split (GPT-2's pattern), \s as Unicode White_Space like Rust's
const BYTE_LEVEL_PATTERN =
  "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\p{White_Space}\\p{L}\\p{N}]+|\\p{White_Space}+(?!\\P{White_Space})|\\p{White_Space}+";

export class UnsupportedTokenizer extends Error {}

function unsupported(what) {
  throw new UnsupportedTokenizer(`tokenizer.json: ${what} is not supported in the page ` +
    "(supported: lmforge's char, word and byte-level BPE tokenizers)");
}

// GPT-2's byte -> printable character table
function byteTable() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const toChar = new Array(256), toByte = new Map();
  bs.forEach((b, i) => { toChar[b] = String.fromCodePoint(cs[i]); toByte.set(String.fromCodePoint(cs[i]), b); });
  return { toChar, toByte };
}

// Split with behaviour "Isolated": every match is a piece, and so is every stretch between matches.
function splitIsolated(text, regex) {
  const pieces = [];
  let last = 0;
  for (const m of text.matchAll(regex)) {
    if (m[0].length === 0) continue;
    if (m.index > last) pieces.push(text.slice(last, m.index));
    pieces.push(m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) pieces.push(text.slice(last));
  return pieces;
}

// normalizer -> list of [pattern, replacement] string replacements (Replace, or a Sequence of them)
function replacements(node, what) {
  if (!node) return [];
  if (node.type === "Sequence") return (node.normalizers || node.decoders).flatMap((n) => replacements(n, what));
  if (node.type === "Replace" && node.pattern && node.pattern.String != null) return [[node.pattern.String, node.content]];
  unsupported(`${what} ${node.type}${node.type === "Replace" ? " with a regex pattern" : ""}`);
}

// post-processor -> [ids before the text, ids after it] (TemplateProcessing's single template; ByteLevel only
// trims offsets, which the page does not use)
function template(node) {
  if (!node || node.type === "ByteLevel") return [[], []];
  if (node.type === "Sequence") {
    return node.processors.map(template).reduce(([a, b], [c, d]) => [a.concat(c), d.concat(b)], [[], []]);
  }
  if (node.type !== "TemplateProcessing") unsupported(`post_processor ${node.type}`);
  const before = [], after = [];
  let seen = false;
  for (const piece of node.single) {
    if (piece.Sequence) { seen = true; continue; }
    (seen ? after : before).push(...node.special_tokens[piece.SpecialToken.id].ids);
  }
  return [before, after];
}

export class Tokenizer {
  constructor(json) {
    this.normalizer = replacements(json.normalizer, "normalizer");
    [this.prefix, this.suffix] = template(json.post_processor);
    this.addsSpecialTokens = this.prefix.length + this.suffix.length > 0;
    const model = json.model;
    this.vocab = new Map(Object.entries(model.vocab));
    this.idToToken = new Map();
    for (const [tok, id] of this.vocab) this.idToToken.set(id, tok);
    this.added = (json.added_tokens || []).slice().sort((a, b) => b.content.length - a.content.length);
    this.special = new Set();
    for (const t of this.added) {
      this.idToToken.set(t.id, t.content);
      if (t.special) this.special.add(t.id);
    }
    this.kind = model.type;
    if (model.type === "WordLevel") {
      this.unk = model.unk_token != null ? this.vocab.get(model.unk_token) : undefined;
    } else if (model.type === "BPE") {
      if (model.dropout) unsupported("BPE dropout");
      if (model.byte_fallback) unsupported("BPE byte_fallback");
      if (model.continuing_subword_prefix || model.end_of_word_suffix) unsupported("BPE subword affixes");
      this.unk = model.unk_token != null ? this.vocab.get(model.unk_token) : undefined;
      this.ignoreMerges = !!model.ignore_merges;
      this.ranks = new Map();
      model.merges.forEach((m, i) => {
        const [a, b] = Array.isArray(m) ? m : m.split(" ");
        this.ranks.set(a + " " + b, i);
      });
      this.cache = new Map();
    } else {
      unsupported(`model ${model.type}`);
    }
    const pre = json.pre_tokenizer;
    if (pre && pre.type === "Split" && pre.behavior === "Isolated" && !pre.invert && pre.pattern.Regex != null) {
      const js = PATTERNS[pre.pattern.Regex];
      if (js === undefined) unsupported(`Split pattern ${JSON.stringify(pre.pattern.Regex)}`);
      this.split = new RegExp(js, "gv");
    } else if (pre && pre.type === "ByteLevel") {
      this.byteLevel = byteTable();
      this.addPrefixSpace = !!pre.add_prefix_space;
      this.split = pre.use_regex === false ? null : new RegExp(BYTE_LEVEL_PATTERN, "gv");
    } else if (!pre && model.type === "BPE") {
      this.split = null;  // the whole (normalized) text is one word: a BPE over characters
    } else {
      unsupported(`pre_tokenizer ${pre ? pre.type : "none"}`);
    }
    const dec = json.decoder;
    const steps = dec && dec.type === "Sequence" ? dec.decoders : dec ? [dec] : [];
    const last = steps.length ? steps[steps.length - 1].type : "none";
    if (!["Fuse", "ByteLevel"].includes(last)) unsupported(`decoder ${last}`);
    this.decoder = last;
    this.decodeReplacements = replacements({ type: "Sequence", decoders: steps.slice(0, -1) }, "decoder");
    if (this.decoder === "ByteLevel" && !this.byteLevel) this.byteLevel = byteTable();
  }

  // text -> ids; with addSpecialTokens (the default, as in `tokenizers`) the post-processor's template puts
  // <bos> first; encode(text, false) is encode(text, add_special_tokens=False)
  encode(text, addSpecialTokens = true) {
    const ids = this.encodeText(text);
    return addSpecialTokens ? this.prefix.concat(ids, this.suffix) : ids;
  }

  encodeText(text) {
    const ids = [];
    let rest = text;
    while (rest.length) {  // leftmost, then longest, added token
      let at = -1, hit = null;
      for (const t of this.added) {
        const i = rest.indexOf(t.content);
        if (i >= 0 && (at < 0 || i < at)) { at = i; hit = t; }
      }
      if (!hit) { this.encodePlain(rest, ids); break; }
      if (at > 0) this.encodePlain(rest.slice(0, at), ids);
      ids.push(hit.id);
      rest = rest.slice(at + hit.content.length);
    }
    return ids;
  }

  encodePlain(text, ids) {
    for (const [pattern, content] of this.normalizer) text = text.replaceAll(pattern, content);
    if (this.kind === "BPE" && !this.byteLevel) {
      for (const piece of this.split ? splitIsolated(text, this.split) : [text]) {
        for (const id of this.bpe(piece)) ids.push(id);
      }
      return;
    }
    if (this.byteLevel) {
      if (this.addPrefixSpace && !/^\p{White_Space}/v.test(text)) text = " " + text;
      const pieces = this.split ? splitIsolated(text, this.split) : [text];
      const utf8 = new TextEncoder();
      for (const piece of pieces) {
        const word = Array.from(utf8.encode(piece), (b) => this.byteLevel.toChar[b]).join("");
        for (const id of this.bpe(word)) ids.push(id);
      }
      return;
    }
    for (const piece of splitIsolated(text, this.split)) {
      const id = this.vocab.get(piece);
      if (id !== undefined) ids.push(id);
      else if (this.unk !== undefined) ids.push(this.unk);
    }
  }

  bpe(word) {
    const cached = this.cache.get(word);
    if (cached) return cached;
    let out;
    if (this.ignoreMerges && this.vocab.has(word)) {
      out = [this.vocab.get(word)];
    } else {
      let symbols = Array.from(word);
      while (symbols.length > 1) {
        let best = -1, rank = Infinity;
        for (let i = 0; i < symbols.length - 1; i++) {
          const r = this.ranks.get(symbols[i] + " " + symbols[i + 1]);
          if (r !== undefined && r < rank) { rank = r; best = i; }
        }
        if (best < 0) break;
        const merged = symbols[best] + symbols[best + 1];
        const next = [];
        for (let i = 0; i < symbols.length; i++) {  // merge every occurrence of this pair, left to right
          if (i < symbols.length - 1 && symbols[i] + symbols[i + 1] === merged &&
              this.ranks.get(symbols[i] + " " + symbols[i + 1]) === rank) {
            next.push(merged); i++;
          } else {
            next.push(symbols[i]);
          }
        }
        symbols = next;
      }
      out = [];
      for (const s of symbols) {
        const id = this.vocab.get(s);
        if (id !== undefined) out.push(id);
        else if (this.unk !== undefined) out.push(this.unk);
      }
    }
    this.cache.set(word, out);
    return out;
  }

  // ids -> text, special tokens skipped; an incomplete UTF-8 sequence decodes to U+FFFD
  decode(ids) {
    const tokens = [];
    for (const id of ids) {
      if (this.special.has(id)) continue;
      const t = this.idToToken.get(id);
      if (t !== undefined) tokens.push(t);
    }
    let text = tokens.map((t) => this.decodeReplacements.reduce((s, [p, c]) => s.replaceAll(p, c), t)).join("");
    if (this.decoder === "Fuse") return text;
    const bytes = [];
    for (const ch of text) {
      const b = this.byteLevel.toByte.get(ch);
      if (b !== undefined) bytes.push(b);
      else bytes.push(...new TextEncoder().encode(ch));
    }
    return new TextDecoder("utf-8", { fatal: false }).decode(new Uint8Array(bytes));
  }
}
