package chat

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvroute/kvroute/router/tokenize"
	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// Encoder turns chat requests into token ids: render with the model's template,
// then encode. It is safe for concurrent use.
//
// With a cache budget (NewEncoder's cacheBytes) EncodeChat works incrementally
// across the turns of a conversation: converted messages are cached by their raw
// JSON bytes (a quarter of the budget, CacheStats), the message lists of recent
// requests by their conversation (an eighth, convCache), and the prompt's ids by the
// conversation prefix (tokenize.PrefixCache, the rest of the budget), so a new turn
// takes its earlier messages in one piece, decodes only its new ones and splits and
// encodes only the text after the previous turn's last reusable special token. The
// template's loop over the messages resumes from the previous turn's render
// (jinja.Template.RenderFrom), copying what the earlier messages rendered to where
// the template shows they render the same; the rest of the template runs in full
// (templates read later messages when they render earlier ones: Qwen3's
// last_query_index, DeepSeek-V3's system prompt gathered from every message).
type Encoder struct {
	tok   *tokenize.Tokenizer
	cfg   *Config
	cache *tokenize.PrefixCache
	msgs  *msgCache
	convs *convCache
}

// Load reads a model directory holding tokenizer.json and tokenizer_config.json
// (or a tokenizer.json path, whose directory holds the config). Both files are
// parsed and every chat template compiled here, so a template that cannot be parsed
// fails at load time. Without tokenizer_config.json the encoder still encodes text;
// EncodeChat then fails with ErrNoTemplate.
func Load(path string) (*Encoder, error) {
	dir := path
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		dir = filepath.Dir(path)
	}
	tok, err := tokenize.Load(path)
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	cfg := &Config{Templates: map[string]*jinja.Template{}, SpecialTokens: map[string]string{}}
	if _, err := os.Stat(cfgPath); err == nil {
		if cfg, err = LoadConfig(cfgPath); err != nil {
			return nil, err
		}
	}
	return NewEncoder(tok, cfg, DefaultCacheBytes), nil
}

// DefaultCacheBytes is the conversation cache budget Load uses.
const DefaultCacheBytes = 64 << 20

// NewEncoder combines a tokenizer and a chat config. cacheBytes bounds the
// conversation caches together, in accounted bytes (0 disables them): a quarter
// for converted messages, an eighth for recent requests' message lists, the rest for
// prompts and their ids.
func NewEncoder(tok *tokenize.Tokenizer, cfg *Config, cacheBytes int) *Encoder {
	e := &Encoder{tok: tok, cfg: cfg}
	if cacheBytes > 0 {
		e.cache = tokenize.NewPrefixCache(tok, cacheBytes-cacheBytes/4-cacheBytes/8)
		e.msgs = newMsgCache(cacheBytes / 4)
		e.convs = newConvCache(cacheBytes / 8)
	}
	return e
}

// CacheStats reports the message and conversation caches; all zero when caching is
// off.
func (e *Encoder) CacheStats() CacheStats {
	if e.msgs == nil {
		return CacheStats{}
	}
	s := e.msgs.stats()
	e.convs.stats(&s)
	return s
}

// Tokenizer returns the encoder's tokenizer.
func (e *Encoder) Tokenizer() *tokenize.Tokenizer { return e.tok }

// Config returns the encoder's chat config.
func (e *Encoder) Config() *Config { return e.cfg }

// Encode returns the ids of plain text (a completion prompt); see
// tokenize.Tokenizer.Encode. As EncodeChat's, the ids must not be modified.
func (e *Encoder) Encode(text string, addSpecial bool) []uint32 {
	if e.cache != nil {
		return e.cache.Encode(text, addSpecial)
	}
	return e.tok.Encode(text, addSpecial)
}

// Render renders an OpenAI chat completion request body to the prompt text.
func (e *Encoder) Render(body []byte) (string, *Request, error) {
	req, err := ParseRequest(body)
	if err != nil {
		return "", nil, err
	}
	prompt, err := e.cfg.Render(req.Messages, req.Options)
	if err != nil {
		return "", nil, err
	}
	return prompt, req, nil
}

// EncodeChat returns the prompt token ids of an OpenAI chat completion request
// body, as vLLM computes them: render the template, then encode with
// add_special_tokens from the request (default false). Successive turns of a
// conversation reuse the previous turn's ids through the conversation cache. The ids
// may be held by the cache (tokenize.PrefixCache): the caller must not modify them.
func (e *Encoder) EncodeChat(body []byte) ([]uint32, error) {
	ids, _, err := e.EncodeChatReuse(body)
	return ids.Slice(), err
}

// EncodeChatReuse is EncodeChat with the ids in parts shared with the prefix cache's
// earlier results (tokenize.IDs: a turn does not copy the ids it repeats), and which of
// those results the ids repeat the leading ids of (tokenize.Reuse; zero without a
// cache), so the caller can keep what it derives from the ids in the results' memos and
// derive it for the new ids only (blockhash.Local: block hashes).
func (e *Encoder) EncodeChatReuse(body []byte) (tokenize.IDs, tokenize.Reuse, error) {
	if e.cache == nil {
		prompt, req, err := e.Render(body)
		if err != nil {
			return tokenize.IDs{}, tokenize.Reuse{}, fmt.Errorf("encode chat: %w", err)
		}
		return tokenize.MakeIDs(e.Encode(prompt, req.AddSpecialTokens)), tokenize.Reuse{}, nil
	}
	req, keys, turn, err := e.parseConv(body)
	if err != nil {
		return tokenize.IDs{}, tokenize.Reuse{}, fmt.Errorf("encode chat: %w", err)
	}
	var prior *jinja.Prior
	if turn.prev != nil {
		prior = turn.prev.prior.Load()
	}
	prompt, next, err := e.cfg.RenderFrom(req.Messages, req.Options, prior)
	if err != nil {
		return tokenize.IDs{}, tokenize.Reuse{}, fmt.Errorf("encode chat: %w", err)
	}
	copied, ran := next.Iterations()
	e.convs.copied.Add(int64(copied))
	e.convs.ran.Add(int64(ran))
	if turn.cur != nil {
		e.convs.setPrior(turn.cur, next)
	}
	var hb [maxHints + 1]uint64
	ids, r := e.cache.EncodeKeyedReuse(prompt, req.AddSpecialTokens, keys.hints(hb[:0]), keys[len(keys)-1])
	return ids, r, nil
}
