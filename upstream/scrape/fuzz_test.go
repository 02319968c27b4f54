package scrape

import (
	"bytes"
	"path/filepath"
	"testing"
)

// FuzzParse feeds Parse arbitrary bodies, seeded with the engine bodies rendered by
// prometheus_client (testdata/*.txt) and the table tests' lines. Parse must not panic,
// a Sample it returns must satisfy the package invariants, and whenever
// prometheus/common's parser also accepts the body, both must read the same Sample.
// Run it with a short minimization time, since minimizing a multi-kilobyte body takes
// the default minute per new input:
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 5m -fuzzminimizetime 3s ./upstream/scrape
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		f.Fatalf("seed bodies: %v %v", files, err)
	}
	for _, file := range files {
		f.Add(excerpt(readTestdata(f, filepath.Base(file))))
	}
	for _, s := range []string{
		"vllm:num_requests_running{engine=\"0\"} 3\nvllm:num_requests_running{engine=\"1\"} 2 1700000000000\n",
		`vllm:cache_config_info{block_size="16",num_gpu_blocks="100",x="a\"b\\c\n"} 1` + "\n",
		"sglang:cache_config_info{page_size=\"1\",num_pages=\"9\"} 1\nsglang:token_usage 0.5\n",
		"sglang:page_size 64\nsglang:num_pages{dp_rank=\"0\"} 10\n# EOF\n",
		`{"vllm:kv_cache_usage_perc",engine="0"} 0.5 # {trace_id="x"} 1` + "\n",
		"# TYPE vllm:num_requests_running histogram\nvllm:num_requests_running_bucket{le=\"1\"} 1\n",
		"<html>502</html>\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		s, err := Parse(body)
		if !bytes.Equal(body, orig) {
			t.Fatal("Parse modified its input")
		}
		if err != nil {
			return
		}
		checkInvariants(t, s)
		if hasEOF(body) {
			return // expfmt reads on past OpenMetrics' end marker
		}
		ref, ok, refErr := parseExpfmt(body)
		if !ok {
			return
		}
		if refErr != nil {
			t.Fatalf("Parse accepted %q as %+v, the expfmt reference fails: %v", body, s, refErr)
		}
		if !sampleEqual(s, ref) {
			t.Fatalf("body %q:\n   Parse %+v\n  expfmt %+v", body, s, ref)
		}
	})
}

// excerpt keeps the lines of a body that concern the engine metrics, without histogram
// buckets: the whole bodies (up to 77 KB) stall Go's mutator.
func excerpt(body []byte) []byte {
	var out []byte
	for line := range bytes.SplitAfterSeq(body, []byte("\n")) {
		if (bytes.Contains(line, []byte("vllm:")) || bytes.Contains(line, []byte("sglang:")) ||
			bytes.HasPrefix(line, []byte("# EOF"))) && !bytes.Contains(line, []byte("_bucket")) {
			out = append(out, line...)
		}
	}
	return out
}

func hasEOF(body []byte) bool {
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		line = skipBlank(line)
		if len(line) > 0 && line[0] == '#' && isEOF(bytes.TrimSuffix(line, []byte("\r"))) {
			return true
		}
	}
	return false
}
