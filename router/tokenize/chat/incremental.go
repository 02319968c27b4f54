package chat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// maxHints is how many shorter conversation prefixes EncodeChat offers the prefix
// cache as the earlier turn this request extends: a turn usually adds two messages
// (the answer and the next question), a tool round a few more.
const maxHints = 8

// convKeys are a request's conversation keys: key[k] stands for its first k
// messages (their raw bytes, chained), so the previous turn of a conversation filed
// its prompt under a key this request also computes.
type convKeys []uint64

// nextKey chains a message's hash onto the key of the messages before it.
func nextKey(prev, msg uint64) uint64 {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], prev)
	binary.LittleEndian.PutUint64(b[8:], msg)
	return xxhash.Sum64(b[:])
}

// hints returns the keys of the request's prefixes to try, longest first: the
// whole request (a retry) and up to maxHints shorter ones.
func (k convKeys) hints(dst []uint64) []uint64 {
	for i := len(k) - 1; i >= 1 && i >= len(k)-1-maxHints; i-- {
		dst = append(dst, k[i])
	}
	return dst
}

// parseCached is ParseRequest with the messages' conversion cached by their raw
// bytes (msgCache): the body's members are walked in place (jsonscan), each message
// is looked up by its bytes and decoded (jinja.FromJSON, then convertMessage, as
// ParseRequest does) only on a miss, and the other members ParseRequest reads are
// decoded as it decodes them. The Request is the one ParseRequest returns for the
// same body; invalid JSON is an error in both (a message is validated by its decode
// when it enters the cache, and a hit has the same bytes). It also returns the
// conversation keys.
func (e *Encoder) parseCached(body []byte) (*Request, convKeys, error) {
	req, keys, _, err := e.parseConv(body)
	return req, keys, err
}

// convTurn is where a request stands in the conversation cache: prev, the entry of
// the earlier request it repeats (nil: none), and cur, the entry holding its own
// messages (prev itself when it adds none; nil when they are not kept).
type convTurn struct{ prev, cur *convEntry }

// parseConv is parseCached, also returning the request's convTurn.
func (e *Encoder) parseConv(body []byte) (*Request, convKeys, convTurn, error) {
	it, err := jsonscan.NewIter(body, jsonscan.SkipWS(body, 0))
	if err != nil {
		if len(jsonscan.TrimWS(body)) > 0 && jsonscan.Valid(body) {
			return nil, nil, convTurn{}, errors.New("decode chat request: not a JSON object")
		}
		return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
	}
	root := jinja.NewDict()
	var msgs []byte
	var bounds []msgBound
	var hit *convEntry // the conversation entry the messages start with (scanMessages)
	for {
		key, vs, ok, err := it.NextKey()
		if err != nil {
			return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
		}
		if !ok {
			break
		}
		if _, _, err := jsonscan.String(key, 0); err != nil {
			return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
		}
		isMsgs := jsonscan.KeyIs(key, "messages")
		var ve int
		if isMsgs && vs < len(body) && body[vs] == '[' {
			if bounds, hit, ve, err = e.scanMessages(body, vs, bounds[:0]); err == nil {
				it.ValueEnd(ve)
			}
		} else {
			ve, err = it.SkipValue()
		}
		if err != nil {
			return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
		}
		val := body[vs:ve]
		if isMsgs {
			if msgs != nil { // decoded when replaced, as ParseRequest decodes it
				if _, err := jinja.FromJSON(msgs); err != nil {
					return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
				}
			}
			msgs = val // the last one wins, as in a decoded object
			continue
		}
		name := ""
		for _, k := range optionKeys {
			if jsonscan.KeyIs(key, k) {
				name = k
				break
			}
		}
		// Every member is checked as ParseRequest's decode of the whole body does, so
		// the same bodies fail (a number out of float64's range, say); a member that is
		// not an option and is a scalar (model, stream, max_tokens...) is checked
		// without building its value.
		if name == "" {
			if scalar, err := checkScalar(val); scalar {
				if err != nil {
					return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
				}
				continue
			}
		}
		v, err := jinja.FromJSON(val)
		if err != nil {
			return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
		}
		if name != "" {
			root.Set(name, v)
		}
	}
	if end := jsonscan.SkipWS(body, it.End()); end != len(body) {
		return nil, nil, convTurn{}, errors.New("decode chat request: trailing data after JSON value")
	}
	if len(msgs) == 0 || msgs[0] != '[' {
		return nil, nil, convTurn{}, errors.New("chat request: messages must be a list")
	}
	req := &Request{Options: Options{AddGenerationPrompt: true}}
	// The conversation keys.
	keys := make(convKeys, 1, len(bounds)+1)
	for _, bd := range bounds {
		keys = append(keys, nextKey(keys[len(keys)-1], bd.hash))
	}
	n := len(bounds)
	// The longest earlier request of the conversation these messages repeat (convCache):
	// the one scanMessages found by the first two messages, else one found by the key
	// of a shorter prefix (an entry of one message has no start; a start shared by
	// many conversations keeps only the newest maxStarts). Then each message after it
	// through the message cache.
	var span []byte
	var prev *convEntry
	k := 0
	if n > 0 && e.convs != nil {
		span = msgs[bounds[0].start:bounds[n-1].end]
		if hit != nil {
			prev, k = hit, len(hit.msgs)
		}
		for j := n; prev == nil && j >= 1 && j >= n-maxHints; j-- {
			if ce := e.convs.get(keys[j], j, span[:bounds[j-1].end-bounds[0].start]); ce != nil {
				prev, k = ce, j
				break
			}
		}
		if prev != nil {
			e.convs.hits.Add(1)
		} else {
			e.convs.misses.Add(1)
		}
	}
	if n > 0 {
		req.Messages = make([]jinja.Value, 0, n)
		req.Options.ContentParts = make([][]string, 0, n)
	}
	if prev != nil {
		req.Messages = append(req.Messages, prev.msgs[:k]...)
		req.Options.ContentParts = append(req.Options.ContentParts, prev.parts[:k]...)
	}
	for idx := k; idx < n; idx++ {
		bd := bounds[idx]
		raw := msgs[bd.start:bd.end]
		var msg jinja.Value
		var parts []string
		if ce := e.msgs.get(bd.hash, raw); ce != nil {
			msg, parts = ce.msg, ce.parts
		} else {
			v, err := jinja.FromJSON(raw)
			if err != nil {
				return nil, nil, convTurn{}, fmt.Errorf("decode chat request: %w", err)
			}
			if msg, parts, err = convertMessage(v); err != nil {
				return nil, nil, convTurn{}, fmt.Errorf("chat request message %d: %w", idx, err)
			}
			e.msgs.put(bd.hash, raw, msg, parts)
		}
		req.Messages = append(req.Messages, msg)
		req.Options.ContentParts = append(req.Options.ContentParts, parts)
	}
	turn := convTurn{prev: prev}
	if span != nil && k < n {
		turn.cur = e.convs.put(keys[n], span, req.Messages, req.Options.ContentParts, bounds, bounds[0].start, prev, k)
	} else if k == n {
		turn.cur = prev
	}
	if req.Options.ContentParts == nil {
		req.Options.ContentParts = [][]string{}
	}
	if err := applyOptions(req, root); err != nil {
		return nil, nil, convTurn{}, err
	}
	return req, keys, turn, nil
}

// scanMessages walks the messages array at body[vs] == '[' and returns its messages'
// bounds (from vs) and hashes, and the index just past it. After the first two
// messages it looks for a conversation entry the messages start with
// (convCache.byStart): when one is found, its messages' bounds and hashes are taken and
// the walk resumes after its bytes, which are not scanned again; hit is that entry.
func (e *Encoder) scanMessages(body []byte, vs int, bounds []msgBound) (_ []msgBound, hit *convEntry, end int, _ error) {
	ai, err := jsonscan.NewArrayIter(body, vs, 1)
	if err != nil {
		return nil, nil, 0, err
	}
	for {
		s, en, ok, err := ai.Next()
		if err != nil {
			return nil, nil, 0, err
		}
		if !ok {
			return bounds, hit, ai.End(), nil
		}
		bounds = append(bounds, msgBound{start: s - vs, end: en - vs, hash: hashMsg(body[s:en])})
		if len(bounds) != 2 || e.convs == nil {
			continue
		}
		off := bounds[0].start
		if ce := e.convs.byStart(nextKey(nextKey(0, bounds[0].hash), bounds[1].hash), body[vs+off:]); ce != nil {
			bounds = rebase(slices.Grow(bounds[:0], len(ce.bounds)+maxHints), ce.bounds, -off)
			ai.Skipped(vs + off + len(ce.raw))
			hit = ce
		}
	}
}

// msgBound is a message of a request: its bytes' bounds in the messages array and
// their hash.
type msgBound struct {
	start, end int
	hash       uint64
}

// checkScalar reports whether val, a member's raw value, is a JSON string, number,
// true, false or null, and if so returns the error jinja.FromJSON would return for it
// (nil when it decodes): invalid JSON, or a number out of float64's range (FromJSON
// tries an int64, then a float64; every int64 is in float64's range). It spares the
// per-request members a json.Decoder each: in a perf profile of kvroute in local mode
// (2 KB chat at 1000 req/s, both messages in the message cache) jinja.FromJSON was 8%
// of kvroute's CPU; BenchmarkParseCached 21-34 -> 2.0-3.7 us.
func checkScalar(val []byte) (bool, error) {
	if len(val) == 0 || val[0] == '{' || val[0] == '[' {
		return false, nil
	}
	if !jsonscan.Valid(val) {
		return true, fmt.Errorf("%w: member value", jsonscan.ErrSyntax)
	}
	if c := val[0]; c == '-' || (c >= '0' && c <= '9') {
		if _, err := strconv.ParseFloat(string(val), 64); err != nil {
			return true, fmt.Errorf("number %s: %w", val, err)
		}
	}
	return true, nil
}

// optionKeys are the members besides messages that ParseRequest reads.
var optionKeys = []string{"tools", "documents", "add_generation_prompt", "continue_final_message",
	"add_special_tokens", "chat_template", "chat_template_kwargs"}
