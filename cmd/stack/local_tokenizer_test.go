package stack

import (
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// In local mode the router tokenizes with kvroute's pure-Go tokenizer and the model's
// chat template (Qwen3's real files) and never calls /tokenize, and its hashes match the
// blocks the workers report: later turns of a conversation are exact, matched and hit.
func TestLocalTokenizerModeMatchesWorkers(t *testing.T) {
	dir := tokenizetest.ModelDir(t, "qwen3")
	enc, err := chat.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The auto mode finds the model's tokenizer in tokenize.dir/MODEL and acts the same.
	autoDir := t.TempDir()
	if err := os.Symlink(dir, filepath.Join(autoDir, "m")); err != nil {
		t.Fatal(err)
	}
	for name, set := range map[string]func(*configs.Tokenize){
		"local": func(c *configs.Tokenize) { c.Mode = "local:" + dir },
		"auto":  func(c *configs.Tokenize) { c.Mode, c.Dir = "auto", autoDir },
	} {
		t.Run(name, func(t *testing.T) { testLocalTokenizer(t, enc, set) })
	}
}

func testLocalTokenizer(t *testing.T, enc *chat.Encoder, set func(*configs.Tokenize)) {
	ss := startSimStack(t, 3, func(fc *sim.FleetConfig, cfg *configs.Config) {
		fc.Worker.BodyTokenizer = enc // the workers tokenize like the engine would
		set(&cfg.Tokenize)
	})
	client := &http.Client{Timeout: 30 * time.Second}
	rng := rand.New(rand.NewPCG(11, 11))
	msgs := []chatMsg{{Role: "system", Content: "You are a terse assistant. " + someWords(rng, 200)}}
	prev := 0
	for turn := 0; turn < 4; turn++ {
		msgs = append(msgs, chatMsg{Role: "user", Content: someWords(rng, 40)})
		r := chatOnce(client, ss.url, msgs, 16)
		if r.err != nil {
			t.Fatal(r.err)
		}
		d := ss.stack.Server.Decisions(1)[0]
		if !d.Exact {
			t.Fatalf("turn %d hashed in approx mode: the local tokenizer failed", turn)
		}
		if turn > 0 && float64(r.cached) < 0.9*float64(prev) {
			t.Errorf("turn %d: cached %d of the previous prompt's %d tokens", turn, r.cached, prev)
		}
		prev = r.prompt
		msgs = append(msgs, chatMsg{Role: "assistant", Content: r.reply})
	}
	calls, err := ss.stack.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The conversation's earlier messages were taken from the conversation cache at each
	// turn after the first, and each new message went into the message cache.
	convHits, entries, copied := -1.0, -1.0, -1.0
	for _, mf := range calls {
		if mf.GetName() == "kvroute_tokenize_calls_total" && mf.GetMetric()[0].GetCounter().GetValue() != 0 {
			t.Errorf("local mode made %v /tokenize calls", mf.GetMetric()[0].GetCounter().GetValue())
		}
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "kvroute_tokenize_conversation_cache_lookups_total":
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == "hit" {
						convHits = m.GetCounter().GetValue()
					}
				}
			case "kvroute_tokenize_message_cache_entries":
				entries = m.GetGauge().GetValue()
			case "kvroute_tokenize_render_loop_iterations_total":
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && l.GetValue() == "copied" {
						copied = m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	if convHits < 3 || entries < 4 {
		t.Errorf("conversation cache: %v hits, message cache: %v entries after 4 turns, want at least 3 and 4", convHits, entries)
	}
	// Each turn after the first resumed the render: at least the system prompt copied.
	if copied < 3 {
		t.Errorf("renders copied %v loop iterations in 4 turns, want at least 3", copied)
	}
}
