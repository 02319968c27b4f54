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
//   - EncodeChat returns the same ids as ParseRequest, Config.Render and
//     Tokenizer.Encode of the whole request, however much of the conversation its
//     caches hold: converted messages are reused only for byte-identical raw JSON
//     (an edit of an earlier message is a miss), and the prompt's ids through
//     tokenize.PrefixCache.EncodeKeyed, whose hints (the conversation's shorter
//     prefixes) only choose which cached text to compare against.
//     TestEncodeChatIncremental and FuzzParseCached check it, and blockhash's
//     TestLocalIncrementalHashes the block hashes.
//   - The caches are bounded by NewEncoder's cacheBytes (Load: DefaultCacheBytes),
//     a quarter for messages (accounted as twice their raw bytes plus 256 bytes
//     each, so at most cacheBytes/1024 of them; CLOCK eviction), an eighth for recent
//     requests' message lists and their renders (convCache, oldest first) and the
//     rest for prompts and ids (FIFO). CacheStats reports them.
//   - The template runs at every turn; its loop over the messages resumes from the
//     conversation's previous render (jinja.Template.RenderFrom), copying only what
//     the template shows renders as before: templates read later messages when
//     rendering earlier ones (Qwen3's last_query_index, DeepSeek-V3's system prompt
//     gathered from every message, Gemma-3's role alternation check), and the
//     resume checks each such read. TestEncodeChatIncremental and
//     TestEncodeChatConcurrent compare with full renders.
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
