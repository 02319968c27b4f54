package decision

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/proxy"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/cacheaware"
)

const (
	turns = 40
	convs = 24 // conversations played side by side, turn by turn, and measured
	// warmups is the conversations played before the measured ones at every turn, not
	// measured: each measured decision follows a decision, as in steady traffic, not the
	// harness's own work (the bodies' JSON, the forced collection before turns 2 and 40),
	// which leaves the first decision after it a cold cache (200-300 us of CPU at turn 40
	// against about 90 us for the next ones, 2026-12-07).
	warmups     = 1
	workers     = 8
	blockSize   = 16
	wordsPerMsg = 75 // a user message and an answer of about 100 tokens each: turn 40 is about 8k tokens
)

// BenchmarkDecision plays convs 40-turn conversations turn by turn (every conversation's
// turn t, then turn t+1: a new turn arrives with the earlier ones already seen, as in
// traffic) and makes each request's routing decision as the router does: hash the chat
// (tokenize + chained block hash), Match against the index, score 8 workers with
// cache_aware, and Predict the prompt's blocks on the chosen worker. It reports, per
// mode, the p50 and p99 latency of the turn-40 decisions (prompts of about 8k tokens),
// and the process CPU per decision at turn 40 and at turn 2 and their ratio (means over
// the rounds, and the medians of the rounds' figures), the p50 and p99 latency of turn
// 2 (the machine's and the runtime's share of the tail), and the bytes allocated per
// decision at those turns. Turns 2 and 40 start on a collected
// heap (runtime.GC before their window), so their CPU is the decision's own work
// without collections of the benchmark's garbage: the GC cost of the decision's own
// allocations shows in its B/op instead. Each b.N
// round is a fresh set of conversations (new words), so nothing is cached from a round
// before. The latencies are wall time: on a loaded machine p99 shows the scheduler and
// the GC as much as the decision (the report says how many turn-40 samples it has). The
// thread-cpu percentiles are each decision's CPU time on its thread
// (CLOCK_THREAD_CPUTIME_ID; the decisions run on one locked thread): the decision's own
// tail, without the time the core was taken from it. A warm-up conversation is played
// before the measured ones at every turn (warmups).
//
// Modes: "local" (kvroute's tokenizer with Qwen3's tokenizer.json and chat template, its
// conversation cache on, as chat.Load sets it; no events: every block the router knows
// of is its own prediction, as with a fleet that publishes no KV events),
// "local-events" (the same, with the chosen worker publishing BlockStored for the
// prompt's new blocks after each turn, as vLLM does with KV events on: turn 40's
// earlier blocks are confirmed, turn40-confirmed reports the share) and "engine" (POST /tokenize to the
// bench/proxy fake worker on loopback, whose token ids are fake: the call's cost, not
// the tokenizer's, is what it shows).
//
//	go test -run '^$' -bench '^BenchmarkDecision$' -benchtime 3x -count 10 ./bench/decision > new.txt; benchstat old.txt new.txt
//
// Each turn's decisions carry the profiler label turn=N, so a CPU profile shows where the
// long turns go:
//
//	go test -c -o /tmp/dec.test ./bench/decision && cd bench/decision
//	/tmp/dec.test -test.run '^$' -test.bench 'BenchmarkDecision/mode=local' -test.benchtime 40x -test.cpuprofile /tmp/dec.prof
//	go tool pprof -top -cum -tagfocus='3[0-9]|40' /tmp/dec.test /tmp/dec.prof
func BenchmarkDecision(b *testing.B) {
	enc, err := chat.Load(tokenizetest.ModelDir(b, "qwen3"))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("mode=local", func(b *testing.B) { benchDecision(b, blockhash.NewLocal(enc), nil) })
	// The fleet's own tokenizer, with its own caches: the router's are the router's.
	fleet, err := chat.Load(tokenizetest.ModelDir(b, "qwen3"))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("mode=local-events", func(b *testing.B) { benchDecision(b, blockhash.NewLocal(enc), fleet) })

	up := proxy.NewUpstream(proxy.UpstreamOptions{Model: "m"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = up.Serve(ln) }()
	defer func() { _ = up.Shutdown(context.Background()) }()
	url := "http://" + ln.Addr().String()
	eng, err := blockhash.NewEngine(blockhash.EngineOptions{
		Pick:    func(string) (string, bool) { return url, true },
		Timeout: 10 * time.Second, Cooldown: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	b.Run("mode=engine", func(b *testing.B) { benchDecision(b, eng, nil) })
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// benchDecision runs the conversations through h. With events set, the chosen worker
// publishes BlockStored for the prompt's blocks it did not hold after each turn, outside
// the timed window, as a vLLM worker does once it has prefilled the prompt (the token
// ids from events, a chat encoder of its own), so the next turn's Predict finds the
// earlier blocks confirmed.
func benchDecision(b *testing.B, h blockhash.Hasher, events *chat.Encoder) {
	keys := make([]proto.WorkerKey, workers)
	for i := range keys {
		keys[i] = proto.WorkerKey{ID: fmt.Sprintf("w%d", i)}
	}
	sel := cacheaware.New(cacheaware.Defaults())
	var lat40, lat2 []time.Duration
	var tcpu40, tcpu2 []int64 // the decisions' thread CPU time, ns (threadCPU)
	// The decisions run on one thread, so that its CPU clock is theirs.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu [turns + 1]time.Duration
	var rounds [][2]float64 // per round: CPU per decision at turn 2 and turn 40, us
	var n [turns + 1]int
	var alloc [turns + 1]uint64
	var tokens40, confirmed40, blocks40 int
	b.ReportAllocs()
	for b.Loop() {
		ix, err := indexer.New(indexer.Options{})
		if err != nil {
			b.Fatal(err)
		}
		// A seed never used before in this process: the engine mode's cache must not
		// answer from an earlier round or run.
		rng := rand.New(rand.NewPCG(seeds.Add(1), 21))
		msgs := make([][]message, warmups+convs)
		for c := range msgs {
			msgs[c] = []message{{Role: "system", Content: "You are a helpful assistant. " + words(rng, 30)}}
		}
		stored := make([]map[int]int, warmups+convs) // per conversation: worker -> blocks of its chain stored
		for c := range stored {
			stored[c] = map[int]int{}
		}
		chosen := make([]int, warmups+convs)
		var (
			hashes  []proto.BlockHash
			matches []indexer.WorkerMatch
			cands   = make([]scorer.Candidate, workers)
			costs   = make([]scorer.Cost, workers)
		)
		for t := 1; t <= turns; t++ {
			// The bodies are built before the clock starts: the client's JSON is not the
			// router's work.
			bodies := make([][]byte, warmups+convs)
			raws := make([][]byte, warmups+convs)
			for c := range msgs {
				msgs[c] = append(msgs[c], message{Role: "user", Content: words(rng, wordsPerMsg)})
				raws[c], _ = json.Marshal(msgs[c])
				bodies[c], _ = json.Marshal(map[string]any{"model": "m", "messages": json.RawMessage(raws[c]), "max_tokens": 64})
			}
			// The turns reported start on a collected heap, so the harness's garbage
			// (the bodies above) is not collected inside their window; bytes
			// allocated in the window are reported separately (the GC work they cause
			// is proportional to them).
			if t == 2 || t == turns {
				runtime.GC()
			}
			// The turn labels the decisions' CPU profile samples (-test.cpuprofile, then
			// pprof -tagfocus turn=40).
			pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), pprof.Labels("turn", strconv.Itoa(t))))
			var c0 time.Duration
			var a0 uint64
			for c := range msgs {
				if c == warmups {
					a0 = allocated()
					c0 = cpuTime()
				}
				tc0 := threadCPU()
				t0 := time.Now()
				req := &blockhash.Request{Model: "m", BlockSize: blockSize, Messages: raws[c], Body: bodies[c]}
				r, err := h.Hash(context.Background(), req, hashes[:0])
				if err != nil || !r.Exact {
					b.Fatalf("turn %d: %+v %v", t, r.Exact, err)
				}
				hashes = r.Hashes
				matches = ix.Match(hashes, matches[:0])
				for i := range cands {
					cands[i] = scorer.Candidate{ID: keys[i].ID}
				}
				for _, m := range matches {
					for i := range keys {
						if keys[i] == m.Worker {
							cands[i].OverlapBlocks = m.Blocks
						}
					}
				}
				sreq := scorer.Request{Model: "m", PromptTokens: r.Tokens, Blocks: len(hashes), BlockSize: blockSize}
				w := sel.SelectExplained(&sreq, cands, costs)
				ix.Predict(keys[w], hashes, time.Hour)
				chosen[c] = w
				if c < warmups {
					continue
				}
				if t == 2 {
					lat2 = append(lat2, time.Since(t0))
					tcpu2 = append(tcpu2, threadCPU()-tc0)
				}
				if t == turns {
					lat40 = append(lat40, time.Since(t0))
					tcpu40 = append(tcpu40, threadCPU()-tc0)
					tokens40 += r.Tokens
					for _, m := range matches {
						if m.Worker == keys[w] {
							confirmed40 += m.Confirmed
						}
					}
					blocks40 += len(hashes)
				}
			}
			dc := cpuTime() - c0
			da := allocated() - a0
			cpu[t] += dc
			switch t {
			case 2:
				rounds = append(rounds, [2]float64{float64(dc.Nanoseconds()) / convs / 1e3})
			case turns:
				rounds[len(rounds)-1][1] = float64(dc.Nanoseconds()) / convs / 1e3
			}
			pprof.SetGoroutineLabels(context.Background())
			n[t] += convs
			alloc[t] += da
			if events != nil {
				for c := range msgs {
					publishStored(b, ix, events, bodies[c], keys[chosen[c]], stored[c], chosen[c])
				}
			}
			for c := range msgs {
				msgs[c] = append(msgs[c], message{Role: "assistant", Content: words(rng, wordsPerMsg)})
			}
		}
	}
	slices.Sort(lat40)
	// Turn 2's latencies show how much of turn 40's tail is the machine's and the
	// runtime's rather than the conversation's length.
	slices.Sort(lat2)
	b.ReportMetric(float64(lat2[len(lat2)/2].Nanoseconds())/1e3, "turn2-p50-us")
	b.ReportMetric(float64(lat2[(len(lat2)*99)/100].Nanoseconds())/1e3, "turn2-p99-us")
	per := func(t int) float64 { return float64(cpu[t].Nanoseconds()) / float64(n[t]) / 1e3 }
	b.ReportMetric(float64(lat40[len(lat40)/2].Nanoseconds())/1e3, "turn40-p50-us")
	b.ReportMetric(float64(lat40[(len(lat40)*99)/100].Nanoseconds())/1e3, "turn40-p99-us")
	// The same percentiles of each decision's thread CPU time: what the decision itself
	// costs, without the time the VM or other threads took the core away in the middle
	// of it (the wall-clock tail above includes that).
	if tcpu40[0] > 0 || tcpu40[len(tcpu40)-1] > 0 {
		slices.Sort(tcpu40)
		slices.Sort(tcpu2)
		b.ReportMetric(float64(tcpu40[len(tcpu40)/2])/1e3, "turn40-thread-cpu-p50-us")
		b.ReportMetric(float64(tcpu40[(len(tcpu40)*99)/100])/1e3, "turn40-thread-cpu-p99-us")
		b.ReportMetric(float64(tcpu2[(len(tcpu2)*99)/100])/1e3, "turn2-thread-cpu-p99-us")
	}
	b.ReportMetric(per(turns), "turn40-cpu-us/op")
	b.ReportMetric(per(2), "turn2-cpu-us/op")
	b.ReportMetric(per(turns)/per(2), "turn40/turn2-cpu")
	// The medians over rounds: one round slowed by the shared machine moves them less
	// than the means above.
	med := func(i int) float64 {
		v := make([]float64, len(rounds))
		for r := range rounds {
			v[r] = rounds[r][i]
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	b.ReportMetric(med(1), "turn40-cpu-median-us/op")
	b.ReportMetric(med(0), "turn2-cpu-median-us/op")
	b.ReportMetric(float64(alloc[turns])/float64(n[turns]), "turn40-B/op")
	b.ReportMetric(float64(alloc[2])/float64(n[2]), "turn2-B/op")
	b.ReportMetric(float64(tokens40)/float64(len(lat40)), "turn40-tokens")
	b.ReportMetric(float64(len(lat40)), "turn40-samples")
	// The share of turn 40's blocks that Match found confirmed by events on the chosen
	// worker (0 without events: predicted only).
	b.ReportMetric(float64(confirmed40)/float64(blocks40), "turn40-confirmed")
}

// publishStored applies the BlockStored event worker w (key k) publishes after prefilling
// body: the prompt's full blocks after the done[w] it stored before, chained to the last
// of those (engine hashes equal to kvroute's, as any unique values would do).
func publishStored(b *testing.B, ix *indexer.Index, enc *chat.Encoder, body []byte, k proto.WorkerKey, done map[int]int, w int) {
	ids, err := enc.EncodeChat(body)
	if err != nil {
		b.Fatal(err)
	}
	hs := proto.HashBlocks(nil, proto.Seed("m", "", ""), ids, blockSize)
	from := done[w]
	if from >= len(hs) {
		return
	}
	ev := proto.Event{Kind: proto.BlockStored, TokenIDs: ids[from*blockSize : len(hs)*blockSize], BlockSize: blockSize}
	for _, h := range hs[from:] {
		ev.BlockHashes = append(ev.BlockHashes, proto.EngineHash(h))
	}
	if from > 0 {
		ev.ParentHash, ev.HasParent = proto.EngineHash(hs[from-1]), true
	}
	ix.Apply(k, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{ev}})
	done[w] = len(hs)
}

var seeds atomic.Uint64

var vocab = strings.Fields("the router keeps a map of which worker holds which prefix and scores each " +
	"worker by overlap load queue cache block token prompt answer model request engine " +
	"latency throughput memory index event hash chain session turn reply question data")

func words(rng *rand.Rand, n int) string {
	var sb strings.Builder
	for i := range n {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(vocab[rng.IntN(len(vocab))])
		if rng.IntN(9) == 0 {
			fmt.Fprintf(&sb, "%d", rng.IntN(1000))
		}
	}
	return sb.String()
}

// allocated is the bytes allocated on the heap so far (runtime/metrics: no stop of the
// world, unlike ReadMemStats).
func allocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// cpuTime is the process's CPU time so far (user and system), GC included.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
