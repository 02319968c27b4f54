package scrape

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseEngineBodies parses bodies rendered by prometheus_client with the engines'
// metric definitions (testdata/engine_metrics.py; the spec of each is in the comment).
func TestParseEngineBodies(t *testing.T) {
	tests := []struct {
		file string
		want Sample
	}{
		// vllm, Qwen3-32B, 1 engine: running 7, usage 0.5125, 998877 queries, 554433 hits.
		{"vllm.txt", Sample{Engine: "vllm", BlockSize: 16, NumBlocks: 53192, Running: 7,
			KVUsage: 0.5125, PrefixQueries: 998877, PrefixHits: 554433}},
		// vllm, 2 DP engines: (3, 1, 0.25, 123456, 45678, 27000) + (5, 2, 0.75, 1000, 10, 27000).
		{"vllm_dp2.txt", Sample{Engine: "vllm", BlockSize: 16, NumBlocks: 54000, Running: 8,
			Waiting: 3, KVUsage: 0.5, PrefixQueries: 124456, PrefixHits: 45688}},
		{"vllm_dp2.openmetrics.txt", Sample{Engine: "vllm", BlockSize: 16, NumBlocks: 54000,
			Running: 8, Waiting: 3, KVUsage: 0.5, PrefixQueries: 124456, PrefixHits: 45688}},
		// vllm before memory profiling: num_gpu_blocks="None".
		{"vllm_unprofiled.txt", Sample{Engine: "vllm", BlockSize: 16}},
		// vLLM v0 names: gpu_cache_usage_perc, no prefix counters, block size 32.
		{"vllm_v0.txt", Sample{Engine: "vllm", BlockSize: 32, NumBlocks: 2048, Running: 2,
			Waiting: 4, KVUsage: 0.9}},
		// sglang, cache_config_info{page_size="1",num_pages="450000"}.
		{"sglang.txt", Sample{Engine: "sglang", BlockSize: 1, NumBlocks: 450000, Running: 12,
			Waiting: 3, KVUsage: 0.28, PrefixQueries: 8128902, PrefixHits: 61234}},
		// sglang >= 0.5.11 gauges, 2 DP ranks: (4, 0, 0.1, 100, 50) + (6, 1, 0.3, 200, 70),
		// page size 64, 7000 pages each.
		{"sglang_dp2_gauges.txt", Sample{Engine: "sglang", BlockSize: 64, NumBlocks: 14000,
			Running: 10, Waiting: 1, KVUsage: 0.2, PrefixQueries: 300, PrefixHits: 120}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Parse(readTestdata(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if !sampleEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// sampleEqual compares samples, floats to a relative 1e-9 (sums may be taken in a
// different order).
func sampleEqual(a, b Sample) bool {
	near := func(x, y float64) bool {
		return x == y || math.Abs(x-y) <= 1e-9*math.Max(math.Abs(x), math.Abs(y))
	}
	return a.Engine == b.Engine && a.BlockSize == b.BlockSize && a.NumBlocks == b.NumBlocks &&
		near(a.Running, b.Running) && near(a.Waiting, b.Waiting) && near(a.KVUsage, b.KVUsage) &&
		near(a.PrefixQueries, b.PrefixQueries) && near(a.PrefixHits, b.PrefixHits)
}

func TestParseSyntax(t *testing.T) {
	tests := []struct {
		name, body string
		want       Sample
	}{
		{"minimal", "vllm:num_requests_running 3\n", Sample{Engine: "vllm", Running: 3}},
		{"no trailing newline", "vllm:num_requests_waiting 2", Sample{Engine: "vllm", Waiting: 2}},
		{"crlf and blanks", "  vllm:num_requests_running\t4 \r\n\r\n", Sample{Engine: "vllm", Running: 4}},
		{"timestamp", "vllm:num_requests_running 4 1700000000000\n", Sample{Engine: "vllm", Running: 4}},
		{"openmetrics float timestamp and exemplar",
			"sglang:num_queue_reqs{a=\"b\"} 5 1700000000.5 # {trace_id=\"x\"} 1\n# EOF\n",
			Sample{Engine: "sglang", Waiting: 5}},
		{"after EOF ignored", "sglang:num_queue_reqs 5\n# EOF\nsglang:num_queue_reqs 7\n",
			Sample{Engine: "sglang", Waiting: 5}},
		{"sum over label sets", "vllm:num_requests_running{model_name=\"a\"} 1\nvllm:num_requests_running{model_name=\"b\"} 2\n",
			Sample{Engine: "vllm", Running: 3}},
		{"usage mean", "vllm:kv_cache_usage_perc{engine=\"0\"} 0.2\nvllm:kv_cache_usage_perc{engine=\"1\"} 0.4\n",
			Sample{Engine: "vllm", KVUsage: 0.3}},
		{"new usage name wins", "vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.1\n",
			Sample{Engine: "vllm", KVUsage: 0.1}},
		{"usage clamped", "sglang:token_usage 1.02\n", Sample{Engine: "sglang", KVUsage: 1}},
		{"old prefix names", "vllm:gpu_prefix_cache_queries_total 10\nvllm:gpu_prefix_cache_hits_total 4\n",
			Sample{Engine: "vllm", PrefixQueries: 10, PrefixHits: 4}},
		{"new prefix names win", "vllm:gpu_prefix_cache_queries_total 10\nvllm:prefix_cache_queries_total 11\nvllm:prefix_cache_hits_total 5\n",
			Sample{Engine: "vllm", PrefixQueries: 11, PrefixHits: 5}},
		{"escaped label values", `vllm:cache_config_info{x="a\"b\\c\n",block_size="16",num_gpu_blocks="100"} 1` + "\n",
			Sample{Engine: "vllm", BlockSize: 16, NumBlocks: 100}},
		{"quoted name in braces", `{"vllm:num_requests_running",engine="0"} 2` + "\n", Sample{Engine: "vllm", Running: 2}},
		{"quoted name", `"vllm:num_requests_running"{engine="0"} 2` + "\n", Sample{Engine: "vllm", Running: 2}},
		{"trailing comma", `vllm:num_requests_running{engine="0",} 2` + "\n", Sample{Engine: "vllm", Running: 2}},
		{"other metrics only", "up 1\nprocess_cpu_seconds_total 0.5\n", Sample{}},
		{"NaN in other metrics", "foo NaN\nbar +Inf\n", Sample{}},
		{"engine from any metric", "vllm:time_to_first_token_seconds_count 3\n", Sample{Engine: "vllm"}},
		{"info with None", `vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1` + "\n", Sample{Engine: "vllm", BlockSize: 16}},
		{"sglang info beats gauges", "sglang:cache_config_info{page_size=\"16\",num_pages=\"10\"} 1\nsglang:page_size 16\nsglang:num_pages 99\n",
			Sample{Engine: "sglang", BlockSize: 16, NumBlocks: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if !sampleEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"empty", "", "no samples"},
		{"comments only", "# HELP x y\n# TYPE x gauge\n", "no samples"},
		{"html", "<html><body>502 Bad Gateway</body></html>\n", "line 1: invalid metric name"},
		{"json", `{"error":"not found"}` + "\n", "line 1: expected '='"},
		{"words", "Not Found\n", `line 1: value "Found" is not a float`},
		{"missing value", "vllm:num_requests_running\n", "line 1: missing value"},
		{"junk after timestamp", "a 1 2 3\n", `unexpected "3"`},
		{"bad timestamp", "a 1 x\n", `timestamp "x"`},
		{"hex float", "a 0x1p3\n", "not a float"},
		{"unterminated labels", `a{b="c" 1` + "\n", "expected ',' or '}'"},
		{"unterminated value", `a{b="c} 1` + "\n", "unterminated quoted string"},
		{"bad escape", `a{b="\x"} 1` + "\n", "invalid escape sequence"},
		{"missing equals", `a{b} 1` + "\n", "expected '='"},
		{"digit name", "1a 1\n", "invalid metric name"},
		{"bad name char", "a-b 1\n", "invalid character '-'"},
		{"two bare names", `{"a","b"} 1` + "\n", "expected '='"},
		{"empty quoted name", `{""} 1` + "\n", "empty metric name"},
		{"no name in braces", `{a="b"} 1` + "\n", "no metric name"},
		{"line number", "a 1\n\nb 2\nc{\n", "line 4:"},
		{"negative gauge", "vllm:num_requests_running -1\n", "vllm:num_requests_running: value -1"},
		{"NaN usage", "vllm:kv_cache_usage_perc NaN\n", "not a finite"},
		{"Inf counter", "sglang:cached_tokens_total +Inf\n", "not a finite"},
		{"mixed engines", "vllm:num_requests_running 1\nsglang:num_running_reqs 1\n", "mixes vLLM and SGLang"},
		{"bad block size", `vllm:cache_config_info{block_size="abc"} 1` + "\n", `block_size="abc"`},
		{"zero block size", `vllm:cache_config_info{block_size="0"} 1` + "\n", "block_size"},
		{"conflicting block sizes", "vllm:cache_config_info{engine=\"0\",block_size=\"16\"} 1\nvllm:cache_config_info{engine=\"1\",block_size=\"32\"} 1\n",
			"conflicting block sizes 16 and 32"},
		{"negative blocks", `vllm:cache_config_info{num_gpu_blocks="-5"} 1` + "\n", "num_gpu_blocks"},
		{"huge blocks", `vllm:cache_config_info{num_gpu_blocks="99999999999999999999"} 1` + "\n", "num_gpu_blocks"},
		{"fractional page size", "sglang:page_size 1.5\n", "page size 1.5"},
		{"fractional pages", "sglang:num_pages 1.5\n", "page count 1.5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.body))
			if err == nil {
				t.Fatalf("Parse returned %+v, want an error containing %q", s, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
	if _, err := Parse(nil); !errors.Is(err, ErrNoSamples) {
		t.Errorf("Parse(nil) = %v, want ErrNoSamples", err)
	}
}

// TestParseTruncated parses every prefix of a real body: each is a valid sample or an
// error, never a panic, and a body cut at a line end parses.
func TestParseTruncated(t *testing.T) {
	body := readTestdata(t, "vllm_v0.txt")
	for i := range len(body) {
		s, err := Parse(body[:i])
		if err == nil {
			checkInvariants(t, s)
		} else if i > 0 && body[i-1] == '\n' && !errors.Is(err, ErrNoSamples) {
			t.Fatalf("prefix of %d bytes ending a line: %v", i, err)
		}
	}
}

func checkInvariants(t testing.TB, s Sample) {
	t.Helper()
	for _, v := range []float64{s.Running, s.Waiting, s.KVUsage, s.PrefixQueries, s.PrefixHits} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			t.Fatalf("sample %+v has a value out of range", s)
		}
	}
	if s.KVUsage > 1 || s.BlockSize < 0 || s.BlockSize > maxBlockSize || s.NumBlocks < 0 || s.NumBlocks > maxNumBlocks {
		t.Fatalf("sample %+v out of range", s)
	}
	if s.Engine != "" && s.Engine != EngineVLLM && s.Engine != EngineSGLang {
		t.Fatalf("engine %q", s.Engine)
	}
	if s.Engine == "" && s != (Sample{}) {
		t.Fatalf("sample %+v without engine has values", s)
	}
}

// TestParseMatchesExpfmt checks the hand-written parser against prometheus/common's
// text parser on every committed body (the OpenMetrics one is text-format compatible
// up to its "# EOF").
func TestParseMatchesExpfmt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("testdata bodies: %v %v", files, err)
	}
	for _, f := range files {
		body := readTestdata(t, filepath.Base(f))
		ref, ok, err := parseExpfmt(body)
		if !ok {
			t.Fatalf("%s: expfmt rejects it: %v", f, err)
		}
		got, err := Parse(body)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !sampleEqual(got, ref) {
			t.Errorf("%s:\n   Parse %+v\n  expfmt %+v", f, got, ref)
		}
	}
}

// parseExpfmt is the reference: prometheus/common's text parser, whose samples go
// through the same accumulation as Parse's. ok is false when expfmt rejects the body's
// syntax or the body types a metric the Sample reads as a histogram or summary (expfmt
// then files its plain lines under the histogram, the line parser does not).
func parseExpfmt(body []byte) (s Sample, ok bool, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return Sample{}, false, err
	}
	names := make([]string, 0, len(fams))
	for n := range fams {
		names = append(names, n)
	}
	sort.Strings(names)
	var a acc
	for _, n := range names {
		mf := fams[n]
		m, _ := lookup([]byte(n))
		switch mf.GetType() {
		case dto.MetricType_GAUGE, dto.MetricType_COUNTER, dto.MetricType_UNTYPED:
		default:
			if m != mNone {
				return Sample{}, false, nil
			}
			for range mf.GetMetric() {
				// Only engine detection and the sample count look at these.
				if err := a.sample([]byte(n), nil, 0); err != nil {
					return Sample{}, true, err
				}
			}
			continue
		}
		for _, metric := range mf.GetMetric() {
			v := metric.GetGauge().GetValue() + metric.GetCounter().GetValue() + metric.GetUntyped().GetValue()
			var labels []byte
			for i, lp := range metric.GetLabel() {
				if i > 0 {
					labels = append(labels, ',')
				}
				if model.LegacyValidation.IsValidLabelName(lp.GetName()) {
					labels = append(labels, lp.GetName()...)
				} else {
					labels = append(labels, escapeQuote(lp.GetName())...)
				}
				labels = append(labels, '=')
				labels = append(labels, escapeQuote(lp.GetValue())...)
			}
			if err := a.sample([]byte(n), labels, v); err != nil {
				return Sample{}, true, err
			}
		}
	}
	s, err = a.result()
	return s, true, err
}

// escapeQuote renders a label value as the exposition quotes it.
func escapeQuote(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(v) + `"`
}

// TestParseVsExpfmtSyntax pins down where Parse and prometheus/common's text parser
// disagree on whether a body is valid (issue #16). Parse is the more lenient on what
// engines and proxies actually send (OpenMetrics syntax, CRLF, a missing final
// newline) and on metadata it does not read; expfmt accepts bodies without samples.
// Everything else in the table tests above is accepted or rejected by both.
func TestParseVsExpfmtSyntax(t *testing.T) {
	tests := []struct {
		name, body   string
		ours, expfmt bool // accepted
	}{
		{"no final newline", "vllm:num_requests_waiting 2", true, false},
		{"crlf", "vllm:num_requests_running 4\r\n", true, false},
		{"openmetrics float timestamp", "sglang:num_queue_reqs 5 1700000000.5\n", true, false},
		{"openmetrics exemplar", `sglang:num_queue_reqs 5 # {trace_id="x"} 1` + "\n", true, false},
		{"openmetrics info type", "# TYPE vllm:cache_config_info info\nvllm:cache_config_info{block_size=\"16\"} 1\n", true, false},
		{"duplicate label name", `vllm:num_requests_running{a="b",a="c"} 1` + "\n", true, false},
		{"second TYPE line", "# TYPE a gauge\na 1\n# TYPE a gauge\na 2\n", true, false},
		{"second HELP line", "# HELP a x\n# HELP a y\na 1\n", true, false},
		{"empty body", "", false, true},
		{"comments only", "# HELP x y\n# TYPE x gauge\n", false, true},
		{"quoted UTF-8 name", `{"vllm:num_requests_running",engine="0"} 2` + "\n", true, true},
		{"repeated series", "a 1\na 2\n", true, true},
		{"integer timestamp", "vllm:num_requests_running 4 1700000000000\n", true, true},
		{"hex float", "a 0x1p3\n", false, false},
		{"overflowing float", "a 1e400\n", false, false},
		{"bad escape", `a{b="\x"} 1` + "\n", false, false},
		{"html", "<html>\n", false, false},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.body))
		p := expfmt.NewTextParser(model.UTF8Validation)
		_, refErr := p.TextToMetricFamilies(strings.NewReader(tt.body))
		if (err == nil) != tt.ours || (refErr == nil) != tt.expfmt {
			t.Errorf("%s: Parse error %v (want accepted=%v), expfmt error %v (want accepted=%v)",
				tt.name, err, tt.ours, refErr, tt.expfmt)
		}
	}
}

// BenchmarkParse parses real engine bodies (rendered by prometheus_client with the
// engines' metric definitions, testdata/engine_metrics.py) with Parse (impl=scrape)
// and with prometheus/common's text parser (impl=expfmt), the alternative this package
// does not use. The expfmt side only builds the metric families; reading the dozen
// metrics a Sample needs out of them would come on top. Compare the two with:
//
//	go test -run '^$' -bench 'Parse' -benchmem -count 5 ./upstream/scrape > new.txt && benchstat -col /impl new.txt
//
// and two runs with benchstat old.txt new.txt.
func BenchmarkParse(b *testing.B) {
	for _, file := range []string{"vllm.txt", "vllm_dp2.txt", "sglang.txt", "sglang_dp2_gauges.txt"} {
		body := readTestdata(b, file)
		name := "body=" + strings.TrimSuffix(file, ".txt")
		b.Run(name+"/impl=scrape", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := Parse(body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/impl=expfmt", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				p := expfmt.NewTextParser(model.UTF8Validation)
				if _, err := p.TextToMetricFamilies(bytes.NewReader(body)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
