// Package decision holds the routing-decision benchmark of issue 21: tokenize, hash,
// match and score one chat request, turn by turn through 40-turn conversations, in the
// local tokenize mode (kvroute's pure-Go tokenizer with Qwen3's files) and in the engine
// mode (a fake worker's POST /tokenize on loopback), as the router does it per request.
// It has no code besides its benchmark.
package decision
