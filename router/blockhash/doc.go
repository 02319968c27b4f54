// Package blockhash is the tokenization step of cache-aware routing: it turns an OpenAI
// request (chat messages or a completions prompt) into the chained block hashes the
// indexer is queried with.
//
// Three modes implement [Hasher]:
//
//   - [Engine] asks a worker's POST /tokenize, so the engine's own chat template and
//     tokenizer produce the token ids; results are cached (LRU) and identical concurrent
//     requests share one call; each call is bounded by a short timeout.
//   - [Local] runs an in-process [Tokenizer] (router/tokenize/chat's Encoder).
//   - [Approx] needs no tokenizer: it hashes fixed-size chunks of a canonical text of
//     the request (llm-d's approximate prefix scorer); its hashes match only the
//     router's own predicted entries.
//
// [Fallback] wraps engine or local mode and hashes a request in approx mode when they
// fail: this is how the router must use them. [Auto], the default mode, picks local mode
// for each model whose tokenizer it finds ([FindTokenizer]) and engine mode (with
// approx as its fallback) for the others. [ParseMode] reads the --tokenize flag.
//
// Invariants:
//
//   - Exact results (Result.Exact) are proto.HashBlocks(dst, proto.Seed(Model, LoRA,
//     CacheSalt), ids, BlockSize) over the engine's prompt token ids: the indexer builds
//     its entries from the workers' KV events with the same functions, so equal prefixes
//     give equal hashes. A trailing partial block is never hashed.
//   - A completions prompt given as token ids is hashed directly, exactly, in every mode.
//   - Approx hashes never equal exact hashes, save a 64-bit collision: their chain has
//     its own seed and every approx block input ends with a marker byte.
//   - For a conversation, the hashes of turn N are a prefix of those of turn N+1, in
//     every mode (in engine and local modes as far as the chat template renders earlier
//     turns identically, which templates do except where they strip past reasoning).
//   - Multimodal guard: a chat is hashed only up to its first non-text content part
//     (image_url, input_audio, video_url, file, ...; Result.Truncated): the engine hashes
//     such a part by its content (vLLM's multimodal extra keys), the index's own hash
//     does not cover it, and the placeholder tokens standing for it are alike for any
//     image, so nothing past it may match. Approx stops its text just before the part;
//     engine and local render only the messages before the one holding it, without a
//     generation prompt ([TextPrefix]), so /tokenize never sees (or fetches) the image.
//   - Hash appends to the caller's dst and keeps no reference to dst or to the request's
//     raw fields after returning; approx mode and the engine mode's cache hits allocate
//     nothing when dst has room.
//   - Decoding outside input (messages, prompts, /tokenize answers) never panics, runs in
//     linear time and bounds nesting; errors wrap ErrBadInput or ErrEngine.
package blockhash
