package tokenize

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// benchInputs returns English prose (the Go spec, tags stripped) and Go code
// (net/http/server.go) from GOROOT, which every machine that runs the tests has.
func benchInputs(b *testing.B) map[string]string {
	b.Helper()
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		b.Fatalf("go env GOROOT: %v", err)
	}
	goroot := strings.TrimSpace(string(out))
	spec, err := os.ReadFile(filepath.Join(goroot, "doc/go_spec.html"))
	if err != nil {
		b.Fatal(err)
	}
	code, err := os.ReadFile(filepath.Join(goroot, "src/net/http/server.go"))
	if err != nil {
		b.Fatal(err)
	}
	prose := regexp.MustCompile(`<[^>]*>`).ReplaceAllString(string(spec), "")
	prose = strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&", "&quot;", `"`).Replace(prose)
	return map[string]string{"prose": prose, "code": string(code)}
}

// cut returns the first n bytes of s, backed off to a UTF-8 boundary.
func cut(s string, n int) string {
	if n >= len(s) {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// BenchmarkEncode measures Encode on 2 KB and 32 KB of prose and code, with the BPE
// word cache warm (steady state) and disabled (every word merged from bytes).
// tokens/s is reported next to MB/s.
//
//	go test -run XXX -bench Encode -count 6 ./router/tokenize > new.txt; benchstat old.txt new.txt
func BenchmarkEncode(b *testing.B) {
	inputs := benchInputs(b)
	for _, m := range []string{"llama3", "qwen3", "deepseek_v3", "llama2"} {
		for _, cold := range []bool{false, true} {
			tok := loadModel(b, m)
			if cold {
				// A private tokenizer whose word cache is off; the shared one stays warm.
				var err error
				if tok, err = Load(tokenizetest.ModelDir(b, m)); err != nil {
					b.Fatal(err)
				}
				tok.model.cache.disabled = true
			}
			mode := "warm"
			if cold {
				mode = "cold"
			}
			for _, kind := range []string{"prose", "code"} {
				for _, size := range []int{2 << 10, 32 << 10} {
					text := cut(inputs[kind], size)
					b.Run(m+"/"+mode+"/"+kind+"/"+sizeName(size), func(b *testing.B) {
						b.ReportAllocs()
						b.SetBytes(int64(len(text)))
						n := 0
						dst := make([]uint32, 0, len(text))
						for b.Loop() {
							dst = tok.AppendEncode(dst[:0], text, true)
							n += len(dst)
						}
						b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "tokens/s")
					})
				}
			}
		}
	}
}

func sizeName(n int) string { return strconv.Itoa(n>>10) + "KB" }

// BenchmarkConversation measures the last turn of a 16-turn Qwen3 conversation
// (about 32 KB of prose in ChatML): "full" encodes the whole prompt, "cached"
// encodes it through a PrefixCache that holds the previous turn, as the router
// sees consecutive turns. Each iteration is one new turn.
//
//	go test -run XXX -bench Conversation -count 6 ./router/tokenize > new.txt; benchstat old.txt new.txt
func BenchmarkConversation(b *testing.B) {
	prose := benchInputs(b)["prose"]
	tok := loadModel(b, "qwen3")
	// turns[k] is the prompt of turn k: every earlier user and assistant message
	// (1000 bytes each) plus the new user message and the generation prompt.
	var turns []string
	var sb strings.Builder
	for turn := 0; turn < 16; turn++ {
		sb.WriteString("<|im_start|>user\n" + cut(prose[turn*2048:], 1000) + "<|im_end|>\n<|im_start|>assistant\n")
		turns = append(turns, sb.String())
		sb.WriteString(cut(prose[turn*2048+1000:], 1000) + "<|im_end|>\n")
	}
	full := turns[len(turns)-1]
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(full)))
		for b.Loop() {
			tok.Encode(full, false)
		}
	})
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(full)))
		pc := NewPrefixCache(tok, 64<<20)
		for b.Loop() {
			// A fresh previous turn each iteration: the old entries are replaced
			// by the new ones, so the cache only ever holds the prior turn.
			b.StopTimer()
			pc.Encode(turns[len(turns)-2], false)
			b.StartTimer()
			pc.Encode(full, false)
		}
	})
}
