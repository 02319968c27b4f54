package workload

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// MooncakeBlock is the tokens per hash id in the Mooncake trace format.
const MooncakeBlock = 512

// MooncakeRecord is one line of a Mooncake trace.
type MooncakeRecord struct {
	Timestamp    int64    `json:"timestamp"` // ms from the start
	InputLength  int      `json:"input_length"`
	OutputLength int      `json:"output_length"`
	HashIDs      []uint64 `json:"hash_ids"`
}

// MooncakeConfig selects the part of a trace to replay.
type MooncakeConfig struct {
	// Skip drops the first Skip records (before MaxInput's filter); the kept ones'
	// timestamps are then counted from the first kept record's. 0 skips none.
	Skip int
	// Limit keeps the first Limit records (after Skip); 0 keeps all.
	Limit int
	// MaxOutput caps forced output lengths; 0 keeps the trace's.
	MaxOutput int
	// MaxInput drops records whose input is longer (they would not fit a worker); 0 keeps
	// all.
	MaxInput int
}

// maxMooncakeBlocks bounds one prompt to 1M tokens, far above any model's context.
const maxMooncakeBlocks = 2048

// maxMooncakeLine bounds one trace line (a 1M-token prompt is ~2000 ids of 7 bytes).
const maxMooncakeLine = 1 << 20

// ParseMooncake reads a trace in the Mooncake format: one JSON object a line. Each hash id
// becomes 512 deterministic token ids (equal ids give equal tokens); the prompt is cut to
// input_length. Malformed lines are errors naming the line.
func ParseMooncake(r io.Reader, c MooncakeConfig) (*Workload, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxMooncakeLine)
	w := &Workload{Name: "mooncake"}
	line := 0
	records := 0   // well-formed records read
	var base int64 // with Skip: the first kept record's timestamp
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(b) == 0 {
			continue
		}
		var rec MooncakeRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("mooncake line %d: %w", line, err)
		}
		if rec.Timestamp < 0 || rec.InputLength < 1 || rec.OutputLength < 0 {
			return nil, fmt.Errorf("mooncake line %d: timestamp %d, input_length %d, output_length %d out of range", line, rec.Timestamp, rec.InputLength, rec.OutputLength)
		}
		if len(rec.HashIDs) > maxMooncakeBlocks {
			return nil, fmt.Errorf("mooncake line %d: %d hash ids, more than %d", line, len(rec.HashIDs), maxMooncakeBlocks)
		}
		if rec.InputLength > len(rec.HashIDs)*MooncakeBlock || rec.InputLength <= (len(rec.HashIDs)-1)*MooncakeBlock {
			return nil, fmt.Errorf("mooncake line %d: input_length %d does not match %d hash ids", line, rec.InputLength, len(rec.HashIDs))
		}
		if records++; records <= c.Skip {
			continue
		}
		if c.MaxInput > 0 && rec.InputLength > c.MaxInput {
			continue
		}
		prompt := make([]uint32, 0, len(rec.HashIDs)*MooncakeBlock)
		for _, id := range rec.HashIDs {
			prompt = fillTokens(prompt, "mooncake", id, MooncakeBlock)
		}
		out := max(rec.OutputLength, 1)
		if c.MaxOutput > 0 {
			out = min(out, c.MaxOutput)
		}
		if c.Skip > 0 && len(w.Requests) == 0 {
			base = rec.Timestamp
		}
		at := time.Duration(rec.Timestamp-base) * time.Millisecond
		if n := len(w.Requests); n > 0 && at < w.Requests[n-1].At {
			return nil, fmt.Errorf("mooncake line %d: timestamp %d before the previous line's", line, rec.Timestamp)
		}
		w.Requests = append(w.Requests, Request{At: at, Prompt: prompt[:rec.InputLength], MaxTokens: out, Prev: -1})
		if c.Limit > 0 && len(w.Requests) == c.Limit {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mooncake line %d: %w", line+1, err)
	}
	if len(w.Requests) == 0 {
		return nil, fmt.Errorf("mooncake: no requests")
	}
	return w, nil
}
