// Package chat turns OpenAI chat completion requests into the exact prompt tokens
// an engine (vLLM) computes: convert the request as vLLM does, render the model's
// chat template from tokenizer_config.json with the jinja sub-package, and encode
// the prompt with router/tokenize.
//
// Invariants:
//
//   - Load and ParseConfig parse every chat template up front: a template that
//     cannot be parsed is a load error, so a model is either served in local mode
//     or rejected at startup (the router's fallback is to ask the engine).
//   - ParseRequest refuses what it cannot reproduce (image or audio parts,
//     continue_final_message, a per-request chat_template) with an error wrapping
//     ErrUnsupportedContent rather than guessing.
//   - EncodeChat returns the same ids for the same request whether or not the
//     conversation cache holds an earlier turn: the cache (tokenize.PrefixCache)
//     reuses ids only up to an added-token boundary, which BPE never crosses. Its
//     doc comment holds the full argument.
//   - An Encoder is safe for concurrent use.
//
// Golden tests compare prompts with Python's jinja2 rendering in transformers'
// environment (testdata/gen/render.py) and ids with @huggingface/tokenizers, on the
// real Llama-3, Qwen3, DeepSeek-V3 and Gemma-3 templates, 160 requests or more
// each (testdata/gen/gen.mjs writes the goldens). @huggingface/jinja is rendered
// as a cross-check; it disagrees with Python where templates pass characters to
// strip/lstrip/rstrip (it ignores them), e.g. Qwen3's content.lstrip('\n'), and
// this package follows Python, as the engines do.
package chat
