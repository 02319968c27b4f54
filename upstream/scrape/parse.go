package scrape

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Engine names reported in [Sample.Engine].
const (
	EngineVLLM   = "vllm"
	EngineSGLang = "sglang"
)

// Sample is what the router reads from one worker's /metrics: the engine's KV-cache
// geometry, its queues, its KV-cache usage and its prefix-cache counters. When the
// worker exposes several series of a metric (one per model_name or per data-parallel
// engine index), counts and counters are summed over them and usage is their mean.
type Sample struct {
	// Engine is EngineVLLM or EngineSGLang, from the metric name prefix; "" when the body
	// holds neither engine's metrics (every other field is then zero).
	Engine string
	// BlockSize is the KV-cache block size in tokens: vllm:cache_config_info{block_size},
	// or sglang:cache_config_info{page_size}, or the sglang:page_size gauge. 0 = unknown.
	BlockSize int
	// NumBlocks is the KV-cache capacity in blocks, summed over engines:
	// vllm:cache_config_info{num_gpu_blocks} ("None" before the engine profiled memory:
	// unknown), sglang:cache_config_info{num_pages} or the sglang:num_pages gauge.
	// 0 = unknown.
	NumBlocks int
	// Running and Waiting are the requests in the engine's batch and in its queue:
	// vllm:num_requests_running / vllm:num_requests_waiting, or sglang:num_running_reqs /
	// sglang:num_queue_reqs.
	Running, Waiting float64
	// KVUsage is the fraction of KV-cache blocks in use, in [0, 1]:
	// vllm:kv_cache_usage_perc (vllm:gpu_cache_usage_perc when the newer name is absent),
	// or sglang:token_usage. Values above 1 are clamped to 1.
	KVUsage float64
	// PrefixQueries and PrefixHits are the engine's cumulative prompt tokens looked up in
	// and found in its prefix cache: vllm:prefix_cache_queries_total and
	// vllm:prefix_cache_hits_total (the vllm:gpu_prefix_cache_* names when the newer
	// ones are absent), or sglang:prompt_tokens_total and sglang:cached_tokens_total
	// (summed over its cache_source label, device/host/storage, where a release has it).
	// Counters: they only grow until the engine restarts.
	PrefixQueries, PrefixHits float64
}

// ErrNoSamples is returned by [Parse] for a body without a single sample line, such as
// an empty 200 reply.
var ErrNoSamples = errors.New("no samples in metrics body")

// Limits on the cache geometry read from labels, so a hostile body cannot make the
// router size anything absurdly.
const (
	maxBlockSize = 1 << 20
	maxNumBlocks = 1 << 40
)

// Parse reads a Prometheus text exposition (format 0.0.4, as vLLM and SGLang serve it
// through prometheus_client; OpenMetrics bodies are accepted too: "# EOF" ends the
// body, float timestamps and exemplars are skipped) and returns the engine metrics in
// it. Every line is checked for syntax, so garbage (HTML, JSON, truncated lines) is an
// error naming the line; so is a non-finite or negative value of a metric the Sample
// reads, a block size that is not a positive integer, and a body mixing vLLM and SGLang
// metrics. Metrics the Sample does not read are checked but ignored. Parse never
// panics and keeps nothing of body.
func Parse(body []byte) (Sample, error) {
	var a acc
	lineNo := 0
	for len(body) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			line, body = body, nil
		}
		line = skipBlank(line)
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if len(line) == 0 {
			continue
		}
		if line[0] == '#' {
			if isEOF(line) {
				break
			}
			continue
		}
		name, labels, v, err := parseLine(line)
		if err != nil {
			return Sample{}, fmt.Errorf("line %d: %w", lineNo, err)
		}
		if err := a.sample(name, labels, v); err != nil {
			return Sample{}, fmt.Errorf("line %d: %s: %w", lineNo, name, err)
		}
	}
	return a.result()
}

// isEOF reports whether a comment line is OpenMetrics' end marker "# EOF".
func isEOF(line []byte) bool {
	rest := skipBlank(line[1:])
	return bytes.Equal(bytes.TrimRight(rest, " \t"), []byte("EOF"))
}

func skipBlank(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

// parseLine parses one sample line: name[{labels}] value [timestamp] [# exemplar], where
// the name may also be a quoted string, outside the braces or as a bare item inside
// them. It returns the unescaped name, the raw label text between the braces and the
// value.
func parseLine(line []byte) (name, labels []byte, v float64, err error) {
	inBraces := line[0] == '{'
	if !inBraces {
		if name, line, err = scanName(line); err != nil {
			return nil, nil, 0, err
		}
		line = skipBlank(line)
	}
	if len(line) > 0 && line[0] == '{' {
		var bareName []byte
		labels, bareName, line, err = scanLabels(line, inBraces)
		if err != nil {
			return nil, nil, 0, err
		}
		if inBraces {
			if bareName == nil {
				return nil, nil, 0, errors.New("no metric name inside braces")
			}
			name = bareName
		}
		line = skipBlank(line)
	}
	if len(name) == 0 {
		return nil, nil, 0, errors.New("empty metric name")
	}
	tok, line := token(line)
	if len(tok) == 0 {
		return nil, nil, 0, errors.New("missing value")
	}
	if v, err = parseFloat(tok); err != nil {
		return nil, nil, 0, fmt.Errorf("value %q is not a float", tok)
	}
	line = skipBlank(line)
	if len(line) > 0 && line[0] != '#' {
		tok, line = token(line)
		if _, err := parseFloat(tok); err != nil {
			return nil, nil, 0, fmt.Errorf("timestamp %q is not a number", tok)
		}
		line = skipBlank(line)
		if len(line) > 0 && line[0] != '#' {
			return nil, nil, 0, fmt.Errorf("unexpected %q after the timestamp", line)
		}
	}
	return name, labels, v, nil
}

// token splits b at the first blank.
func token(b []byte) (tok, rest []byte) {
	i := bytes.IndexAny(b, " \t")
	if i < 0 {
		return b, nil
	}
	return b[:i], b[i:]
}

// parseFloat parses a sample value as the text format defines it: Go float syntax
// without hex-float exponents or digit separators.
func parseFloat(b []byte) (float64, error) {
	if bytes.ContainsAny(b, "pP_") {
		return 0, errors.New("unsupported character in float")
	}
	return strconv.ParseFloat(string(b), 64)
}

func isNameStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isNameChar(c byte) bool { return isNameStart(c) || c >= '0' && c <= '9' }

// scanName reads a metric name at the start of b: [a-zA-Z_:][a-zA-Z0-9_:]* or a quoted
// string. The name must be followed by a blank, '{' or the end of the line.
func scanName(b []byte) (name, rest []byte, err error) {
	if b[0] == '"' {
		return scanQuoted(b)
	}
	i := 0
	for i < len(b) && (isNameChar(b[i]) || b[i] == ':') && (i > 0 || b[i] < '0' || b[i] > '9') {
		i++
	}
	if i == 0 {
		return nil, nil, fmt.Errorf("invalid metric name at %q", clip(b))
	}
	if i < len(b) && b[i] != ' ' && b[i] != '\t' && b[i] != '{' {
		return nil, nil, fmt.Errorf("invalid character %q in metric name", b[i])
	}
	return b[:i], b[i:], nil
}

// scanQuoted reads a double-quoted string at the start of b with the escapes \\, \"
// and \n. It returns the unescaped content, which aliases b unless it had escapes.
func scanQuoted(b []byte) (s, rest []byte, err error) {
	// Fast path: no backslash before the closing quote (two vectorized scans).
	if q := bytes.IndexByte(b[1:], '"'); q >= 0 && bytes.IndexByte(b[1:1+q], '\\') < 0 {
		return b[1 : 1+q], b[2+q:], nil
	}
	var buf []byte
	start := 1
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '"':
			if buf == nil {
				return b[1:i], b[i+1:], nil
			}
			return append(buf, b[start:i]...), b[i+1:], nil
		case '\\':
			if i+1 == len(b) {
				return nil, nil, errors.New("unterminated quoted string")
			}
			buf = append(buf, b[start:i]...)
			switch b[i+1] {
			case '\\', '"':
				buf = append(buf, b[i+1])
			case 'n':
				buf = append(buf, '\n')
			default:
				return nil, nil, fmt.Errorf("invalid escape sequence %q", b[i:i+2])
			}
			i++
			start = i + 1
		}
	}
	return nil, nil, errors.New("unterminated quoted string")
}

// scanLabels reads a label set {k="v",...} at the start of b and returns the text
// between the braces. When bareNameOK, one item may be a bare quoted string: the metric
// name, returned as bareName.
func scanLabels(b []byte, bareNameOK bool) (labels, bareName, rest []byte, err error) {
	it := labelIter{rest: b[1:]}
	for {
		k, _, bare, ok, err := it.next()
		if err != nil {
			return nil, nil, nil, err
		}
		if !ok {
			break
		}
		if bare {
			if !bareNameOK || bareName != nil {
				return nil, nil, nil, fmt.Errorf("expected '=' after label name %q", k)
			}
			bareName = k
		}
	}
	return b[1 : len(b)-len(it.rest)-1], bareName, it.rest, nil
}

// labelIter walks the items of a label set. rest starts after the '{' and, once next
// has reported the end, holds what follows the '}'.
type labelIter struct {
	rest []byte
	done bool
	// raw is true when rest is label text without the closing brace (as returned by
	// scanLabels): its end ends the set.
	raw bool
}

// next returns the next label; bare is true for an item that is a quoted string
// without '=' (a metric name inside the braces), ok false at the closing brace.
func (it *labelIter) next() (k, v []byte, bare, ok bool, err error) {
	if it.done {
		return nil, nil, false, false, nil
	}
	b := skipBlank(it.rest)
	if len(b) > 0 && b[0] == '}' || len(b) == 0 && it.raw {
		if len(b) > 0 {
			b = b[1:]
		}
		it.rest, it.done = b, true
		return nil, nil, false, false, nil
	}
	if len(b) == 0 {
		return nil, nil, false, false, errors.New("unterminated label set")
	}
	quoted := b[0] == '"'
	if quoted {
		if k, b, err = scanQuoted(b); err != nil {
			return nil, nil, false, false, fmt.Errorf("label name: %w", err)
		}
	} else {
		i := 0
		for i < len(b) && isNameChar(b[i]) && (i > 0 || isNameStart(b[i])) {
			i++
		}
		if i == 0 {
			return nil, nil, false, false, fmt.Errorf("invalid label name at %q", clip(b))
		}
		k, b = b[:i], b[i:]
	}
	b = skipBlank(b)
	if len(b) > 0 && (b[0] == ',' || b[0] == '}') || len(b) == 0 && it.raw {
		bare = true
	} else {
		if len(b) == 0 || b[0] != '=' {
			return nil, nil, false, false, fmt.Errorf("expected '=' after label name %q", k)
		}
		b = skipBlank(b[1:])
		if len(b) == 0 || b[0] != '"' {
			return nil, nil, false, false, fmt.Errorf("expected '\"' to start the value of label %q", k)
		}
		if v, b, err = scanQuoted(b); err != nil {
			return nil, nil, false, false, fmt.Errorf("value of label %q: %w", k, err)
		}
		b = skipBlank(b)
	}
	switch {
	case len(b) > 0 && b[0] == ',':
		it.rest = b[1:]
	case len(b) > 0 && b[0] == '}', len(b) == 0 && it.raw:
		it.rest = b // the next call ends the set
	default:
		return nil, nil, false, false, fmt.Errorf("expected ',' or '}' after label %q", k)
	}
	return k, v, bare, true, nil
}

// clip shortens b for an error message.
func clip(b []byte) []byte {
	if len(b) > 32 {
		return b[:32]
	}
	return b
}

// metric identifies a metric the Sample reads.
type metric uint8

const (
	mNone metric = iota
	mRunning
	mWaiting
	mKVUsage
	mKVUsageOld
	mQueries
	mHits
	mQueriesOld
	mHitsOld
	mInfo      // vllm:cache_config_info or sglang:cache_config_info
	mPageSize  // sglang:page_size gauge
	mNumPages  // sglang:num_pages gauge
	numMetrics // must be last
)

// lookup maps a sample name to the metric it feeds and its engine.
func lookup(name []byte) (metric, string) {
	switch string(name) {
	case "vllm:num_requests_running":
		return mRunning, EngineVLLM
	case "vllm:num_requests_waiting":
		return mWaiting, EngineVLLM
	case "vllm:kv_cache_usage_perc":
		return mKVUsage, EngineVLLM
	case "vllm:gpu_cache_usage_perc":
		return mKVUsageOld, EngineVLLM
	case "vllm:prefix_cache_queries_total":
		return mQueries, EngineVLLM
	case "vllm:prefix_cache_hits_total":
		return mHits, EngineVLLM
	case "vllm:gpu_prefix_cache_queries_total":
		return mQueriesOld, EngineVLLM
	case "vllm:gpu_prefix_cache_hits_total":
		return mHitsOld, EngineVLLM
	case "vllm:cache_config_info":
		return mInfo, EngineVLLM
	case "sglang:num_running_reqs":
		return mRunning, EngineSGLang
	case "sglang:num_queue_reqs":
		return mWaiting, EngineSGLang
	case "sglang:token_usage":
		return mKVUsage, EngineSGLang
	case "sglang:prompt_tokens_total":
		return mQueries, EngineSGLang
	case "sglang:cached_tokens_total":
		return mHits, EngineSGLang
	case "sglang:cache_config_info":
		return mInfo, EngineSGLang
	case "sglang:page_size":
		return mPageSize, EngineSGLang
	case "sglang:num_pages":
		return mNumPages, EngineSGLang
	}
	switch {
	case bytes.HasPrefix(name, []byte("vllm:")):
		return mNone, EngineVLLM
	case bytes.HasPrefix(name, []byte("sglang:")):
		return mNone, EngineSGLang
	}
	return mNone, ""
}

// acc accumulates the samples of one body.
type acc struct {
	samples int
	engine  string
	sum     [numMetrics]float64
	n       [numMetrics]int
	// blockSize is the block size agreed on so far by the info metric (info) and the
	// page-size gauge (gauge); 0 = none seen.
	blockSize, gaugeBlockSize int
	// numBlocks sums num_gpu_blocks / num_pages over info series that carry one.
	numBlocks, infoBlocks int
}

// sample adds one sample line: its name, raw labels and value.
func (a *acc) sample(name, labels []byte, v float64) error {
	a.samples++
	m, engine := lookup(name)
	if engine != "" {
		if a.engine != "" && a.engine != engine {
			return errors.New("the body mixes vLLM and SGLang metrics")
		}
		a.engine = engine
	}
	switch m {
	case mNone:
		return nil
	case mInfo:
		return a.info(engine, labels)
	}
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return fmt.Errorf("value %v is not a finite non-negative number", v)
	}
	switch m {
	case mPageSize:
		if v < 1 || v > maxBlockSize || v != math.Trunc(v) {
			return fmt.Errorf("page size %v is not an integer in [1, %d]", v, maxBlockSize)
		}
		return agree(&a.gaugeBlockSize, int(v))
	case mNumPages:
		if v > maxNumBlocks || v != math.Trunc(v) {
			return fmt.Errorf("page count %v is not an integer in [0, %d]", v, int64(maxNumBlocks))
		}
	}
	a.sum[m] += v
	a.n[m]++
	return nil
}

// agree records a block size, which every series must agree on.
func agree(dst *int, bs int) error {
	if *dst != 0 && *dst != bs {
		return fmt.Errorf("conflicting block sizes %d and %d", *dst, bs)
	}
	*dst = bs
	return nil
}

// info reads the cache geometry labels of a cache_config_info series.
func (a *acc) info(engine string, labels []byte) error {
	sizeKey, countKey := "block_size", "num_gpu_blocks"
	if engine == EngineSGLang {
		sizeKey, countKey = "page_size", "num_pages"
	}
	it := labelIter{rest: labels, raw: true}
	for {
		// scanLabels validated the label text already.
		k, v, bare, ok, err := it.next()
		if err != nil || !ok {
			return nil
		}
		if bare {
			continue
		}
		switch string(k) {
		case sizeKey:
			if isUnknown(v) {
				continue
			}
			bs, err := strconv.Atoi(string(v))
			if err != nil || bs < 1 || bs > maxBlockSize {
				return fmt.Errorf("label %s=%q is not an integer in [1, %d]", sizeKey, v, maxBlockSize)
			}
			if err := agree(&a.blockSize, bs); err != nil {
				return err
			}
		case countKey:
			if isUnknown(v) {
				continue
			}
			nb, err := strconv.Atoi(string(v))
			if err != nil || nb < 0 || nb > maxNumBlocks {
				return fmt.Errorf("label %s=%q is not an integer in [0, %d]", countKey, v, int64(maxNumBlocks))
			}
			a.numBlocks += nb
			a.infoBlocks++
			if a.numBlocks > maxNumBlocks {
				return fmt.Errorf("total blocks %d exceed %d", a.numBlocks, int64(maxNumBlocks))
			}
		}
	}
}

// isUnknown reports a label value prometheus_client renders for a Python None.
func isUnknown(v []byte) bool { return len(v) == 0 || string(v) == "None" }

func (a *acc) result() (Sample, error) {
	if a.samples == 0 {
		return Sample{}, ErrNoSamples
	}
	s := Sample{
		Engine:        a.engine,
		BlockSize:     a.blockSize,
		NumBlocks:     a.numBlocks,
		Running:       a.sum[mRunning],
		Waiting:       a.sum[mWaiting],
		PrefixQueries: a.sum[mQueries],
		PrefixHits:    a.sum[mHits],
	}
	if s.BlockSize == 0 {
		s.BlockSize = a.gaugeBlockSize
	}
	if a.infoBlocks == 0 && a.n[mNumPages] > 0 {
		if a.sum[mNumPages] > maxNumBlocks {
			return Sample{}, fmt.Errorf("sglang:num_pages: total %v exceeds %d", a.sum[mNumPages], int64(maxNumBlocks))
		}
		s.NumBlocks = int(a.sum[mNumPages])
	}
	switch {
	case a.n[mKVUsage] > 0:
		s.KVUsage = a.sum[mKVUsage] / float64(a.n[mKVUsage])
	case a.n[mKVUsageOld] > 0:
		s.KVUsage = a.sum[mKVUsageOld] / float64(a.n[mKVUsageOld])
	}
	s.KVUsage = min(s.KVUsage, 1)
	if a.n[mQueries] == 0 && a.n[mHits] == 0 {
		s.PrefixQueries, s.PrefixHits = a.sum[mQueriesOld], a.sum[mHitsOld]
	}
	return s, nil
}
