package blockhash

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/jsonscan"
)

// CharsPerToken is the approx mode's bytes of canonical text per token: a block of
// BlockSize tokens is a chunk of BlockSize*CharsPerToken bytes (llm-d's approximate
// prefix scorer uses block_size*4 characters), and Result.Tokens is the text length
// divided by it, rounded up.
const CharsPerToken = 4

// Separators of the approx mode's canonical chat text. Control characters that do not
// occur in ordinary text keep roles, contents and fields from running into each other.
const (
	sepOption  = 0x1d // before each rendering option (tools, documents, ...)
	sepMessage = 0x1e // before each message
	sepField   = 0x1f // between a message's fields
)

// approxMarker ends every approx block input, so approx inputs (8 + 4*BlockSize + 1
// bytes) are never byte-equal to token-block inputs (8 + 4*BlockSize bytes).
var approxMarker = [1]byte{0xa5}

// Approx hashes requests without a tokenizer: chained xxhash64 over fixed chunks of
// BlockSize*CharsPerToken bytes of a canonical, prefix-stable text of the request.
//
// The canonical text of a string prompt is the prompt. That of a chat is, first, each
// present option that changes the whole rendering (tools, documents, chat_template,
// chat_template_kwargs: their raw JSON), then for each message in order: a separator, the
// role, a separator, the content (a string as is; text parts joined with "\n"), then name,
// tool_call_id and tool_calls when present. The text ends just before the first non-text
// content part (an image, audio, video, file...; Result.Truncated): the engine hashes such
// a part by its content, which the router does not see, so nothing past it is matched.
// Each message's text
// depends on that message only, so the text of turn N is a prefix of the text of turn
// N+1 and so are its full-chunk hashes. A trailing partial chunk is not hashed, as a
// trailing partial token block is not.
//
// The chain starts from a seed derived from proto.Seed(model, LoRA, cache salt) and each
// chunk's input ends with a marker byte token blocks never have, so approx hashes never
// equal hashes computed from engine events (save a 64-bit collision): they only ever
// match the router's own predicted entries (Index.Predict after a routing decision),
// exactly as the approximate modes of llm-d and Dynamo. Result.Exact is false, and
// Result.Tokens is the text length over CharsPerToken. A token-id prompt is still hashed
// exactly.
//
// The zero value is ready to use; it is safe for concurrent use. With a dst of enough
// capacity, Hash allocates nothing for chats and string prompts.
type Approx struct{}

// Hash implements [Hasher].
func (Approx) Hash(_ context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	k, lit, err := classify(req)
	if err != nil {
		return Result{}, err
	}
	if k == kindTokens {
		return hashTokenPrompt(req, lit, dst)
	}
	var s textSink
	s.init(approxSeed(req), req.BlockSize*CharsPerToken, dst)
	if k == kindText {
		if _, err := unescape(lit, 0, &s); err != nil {
			return Result{}, fmt.Errorf("%w: prompt: %w", ErrBadInput, err)
		}
		return Result{Hashes: s.out, Tokens: (s.total + CharsPerToken - 1) / CharsPerToken}, nil
	}
	cut, err := writeChat(&s, lit, &req.Options)
	if err != nil {
		return Result{}, err
	}
	return Result{Hashes: s.out, Tokens: (s.total + CharsPerToken - 1) / CharsPerToken, Truncated: cut}, nil
}

// maxBlkChunk is the largest chunk textSink hashes from its stack buffer in one shot;
// longer chunks (BlockSize above 256) stream through an xxhash.Digest. Both give the
// same hashes.
const maxBlkChunk = 1024

// textSink receives canonical text. In collect mode it appends to buf; otherwise it
// hashes the text in chunks of size bytes, chaining each chunk's hash into the next, and
// appends the hashes to out. A chunk's hash is xxhash64 over the parent hash (8 bytes,
// little-endian), the chunk and approxMarker.
type textSink struct {
	collect bool
	buf     []byte

	size  int
	n     int // bytes in the current chunk
	total int
	out   []proto.BlockHash
	// blk holds the parent, the current chunk and room for the marker when size <=
	// maxBlkChunk; d streams the chunk otherwise.
	blk [8 + maxBlkChunk + 1]byte
	d   xxhash.Digest
}

func (s *textSink) init(seed proto.BlockHash, size int, dst []proto.BlockHash) {
	s.size = size
	s.out = dst
	s.startChunk(seed)
}

func (s *textSink) startChunk(parent proto.BlockHash) {
	binary.LittleEndian.PutUint64(s.blk[:8], uint64(parent))
	s.n = 0
	if s.size > maxBlkChunk {
		s.d.Reset()
		_, _ = s.d.Write(s.blk[:8])
	}
}

func (s *textSink) write(p []byte) {
	if s.collect {
		s.buf = append(s.buf, p...)
		return
	}
	s.total += len(p)
	if s.size <= maxBlkChunk {
		for len(p) > 0 {
			k := copy(s.blk[8+s.n:8+s.size], p)
			s.n += k
			p = p[k:]
			if s.n == s.size {
				s.blk[8+s.size] = approxMarker[0]
				h := proto.BlockHash(xxhash.Sum64(s.blk[:8+s.size+1]))
				s.out = append(s.out, h)
				s.startChunk(h)
			}
		}
		return
	}
	for len(p) > 0 {
		k := min(s.size-s.n, len(p))
		_, _ = s.d.Write(p[:k])
		s.n += k
		p = p[k:]
		if s.n == s.size {
			_, _ = s.d.Write(approxMarker[:])
			h := proto.BlockHash(s.d.Sum64())
			s.out = append(s.out, h)
			s.startChunk(h)
		}
	}
}

func (s *textSink) writeString(str string) {
	var b [64]byte
	for len(str) > 0 {
		n := copy(b[:], str)
		s.write(b[:n])
		str = str[n:]
	}
}

func (s *textSink) writeByte(c byte) {
	b := [1]byte{c}
	s.write(b[:])
}

// writeValue writes a JSON value: a string's contents, anything else as raw JSON.
func writeValue(s *textSink, v []byte) error {
	if len(v) > 0 && v[0] == '"' {
		_, err := unescape(v, 0, s)
		return err
	}
	s.write(v)
	return nil
}

// chatOptions are the options written at the head of the approx chat text, in order.
var chatOptions = [...]struct {
	name string
	get  func(*Options) []byte
}{
	{"tools", func(o *Options) []byte { return o.Tools }},
	{"documents", func(o *Options) []byte { return o.Documents }},
	{"chat_template", func(o *Options) []byte { return o.ChatTemplate }},
	{"chat_template_kwargs", func(o *Options) []byte { return o.ChatTemplateKwargs }},
}

// writeChat writes the canonical text of a chat (see [Approx]); cut reports that it
// stopped at a non-text content part, leaving the messages after it unread.
func writeChat(s *textSink, msgs []byte, o *Options) (cut bool, err error) {
	for _, opt := range chatOptions {
		if v := opt.get(o); present(v) {
			s.writeByte(sepOption)
			s.writeString(opt.name)
			s.writeByte(sepField)
			s.write(jsonscan.TrimWS(v))
		}
	}
	// Each message is read once, by writeMessage, which returns where it ends.
	if len(msgs) == 0 || msgs[0] != '[' {
		return false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
	}
	i := jsonscan.SkipWS(msgs, 1)
	if i < len(msgs) && msgs[i] == ']' {
		i++
	} else {
		for n := 0; ; n++ {
			end, cut, err := writeMessage(s, msgs, i)
			if err != nil {
				return false, fmt.Errorf("%w: message %d: %w", ErrBadInput, n, err)
			}
			if cut {
				return true, nil
			}
			i = jsonscan.SkipWS(msgs, end)
			if i >= len(msgs) {
				return false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
			}
			if msgs[i] == ']' {
				i++
				break
			}
			if msgs[i] != ',' {
				return false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
			}
			i = jsonscan.SkipWS(msgs, i+1)
		}
	}
	if jsonscan.SkipWS(msgs, i) != len(msgs) {
		return false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
	}
	return false, nil
}

// Message fields the canonical text includes, in the order written after role and
// content.
const (
	fRole = iota
	fContent
	fName
	fToolCallID
	fToolCalls
	nFields
)

var fieldNames = [nFields]string{"role", "content", "name", "tool_call_id", "tool_calls"}

// writeMessage writes the message object starting at m[start] and returns the index
// just past it; cut reports that its content holds a non-text part, before which the
// text stops (the fields after the content are not written).
func writeMessage(s *textSink, m []byte, start int) (end int, cut bool, err error) {
	var spans [nFields][2]int // value spans; the last occurrence of a key wins
	it, err := jsonscan.NewIter(m, start)
	if err != nil {
		return 0, false, fmt.Errorf("not an object: %w", err)
	}
	for {
		key, vs, ve, ok, err := it.Next()
		if err != nil {
			return 0, false, err
		}
		if !ok {
			break
		}
		for f := range nFields {
			if jsonscan.KeyIs(key, fieldNames[f]) {
				spans[f] = [2]int{vs, ve}
				break
			}
		}
	}
	val := func(f int) []byte { return m[spans[f][0]:spans[f][1]] }
	s.writeByte(sepMessage)
	if err := writeValue(s, val(fRole)); err != nil {
		return 0, false, err
	}
	s.writeByte(sepField)
	if c := val(fContent); len(c) > 0 && c[0] == '[' {
		cut, err := writeParts(s, c)
		if err != nil || cut {
			return 0, cut, err
		}
	} else if !isNull(c) {
		if err := writeValue(s, c); err != nil {
			return 0, false, err
		}
	}
	for f := fName; f < nFields; f++ {
		v := val(f)
		if len(v) == 0 || (f == fToolCalls && isNull(v)) {
			continue
		}
		s.writeByte(sepField)
		s.writeString(fieldNames[f])
		s.writeByte('=')
		if err := writeValue(s, v); err != nil {
			return 0, false, err
		}
	}
	return it.End(), false, nil
}

// writeParts writes content parts, text parts' text joined with "\n" (vLLM joins text
// parts with newlines too), up to the first non-text part: cut reports one was found. c is
// a whole array value.
func writeParts(s *textSink, c []byte) (cut bool, err error) {
	i := jsonscan.SkipWS(c, 1)
	if i < len(c) && c[i] == ']' {
		return false, nil
	}
	for n := 0; ; n++ {
		text, end, ok, err := partText(c, i)
		if err != nil {
			return false, err
		}
		if !ok {
			return true, nil
		}
		if n > 0 {
			s.writeByte('\n')
		}
		if _, err := unescape(text, 0, s); err != nil {
			return false, err
		}
		i = jsonscan.SkipWS(c, end)
		if i >= len(c) {
			return false, jsonscan.ErrSyntax
		}
		if c[i] == ']' {
			return false, nil
		}
		if c[i] != ',' {
			return false, jsonscan.ErrSyntax
		}
		i = jsonscan.SkipWS(c, i+1)
	}
}

// partText reads the content part starting at c[i] and returns the index just past it
// and, when it is a text part, its text's string literal: a string, or an object that
// [textPart] reads as text. Anything else (image_url, input_audio, video_url, file, ...)
// is not text: ok is false.
func partText(c []byte, i int) (text []byte, end int, ok bool, err error) {
	if i < len(c) && c[i] == '{' {
		return textPart(c, i)
	}
	end, err = jsonscan.Skip(c, i)
	if err != nil {
		return nil, 0, false, err
	}
	if c[i] == '"' {
		return c[i:end], end, true, nil
	}
	return nil, end, false, nil
}

// textPart reads the part object starting at p[start] and returns the index just past
// it and, when its type is text, input_text or output_text (or absent, as vLLM infers a
// part's type from its keys) and it has a "text" string, that string's literal.
func textPart(p []byte, start int) (text []byte, end int, ok bool, err error) {
	it, err := jsonscan.NewIter(p, start)
	if err != nil {
		return nil, 0, false, err
	}
	var typ []byte
	for {
		key, vs, ve, more, err := it.Next()
		if err != nil {
			return nil, 0, false, err
		}
		if !more {
			break
		}
		switch {
		case jsonscan.KeyIs(key, "type"):
			typ = p[vs:ve]
		case jsonscan.KeyIs(key, "text"):
			text = p[vs:ve]
		}
	}
	if len(text) == 0 || text[0] != '"' {
		return nil, it.End(), false, nil
	}
	if typ == nil || jsonscan.KeyIs(typ, "text") || jsonscan.KeyIs(typ, "input_text") || jsonscan.KeyIs(typ, "output_text") {
		return text, it.End(), true, nil
	}
	return nil, it.End(), false, nil
}

var _ Hasher = Approx{}
