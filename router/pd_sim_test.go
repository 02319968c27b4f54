package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/blockhash"
)

// simPD is a router in front of kvsim prefill workers on 127.0.0.1 and decode workers
// on 127.0.0.2 (another pod, when the host has that address).
type simPD struct {
	tr      *testRouter
	prefill []*sim.Worker
	decode  []*sim.Worker
}

func startSimPD(t *testing.T, protocol string, nP, nD int, mod func(*configs.Config)) *simPD {
	t.Helper()
	dhost := "127.0.0.1"
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		_ = ln.Close()
		dhost = "127.0.0.2"
	}
	cfg := testConfig()
	cfg.PD.Protocol = protocol
	cfg.Timeouts.Total = 30 * time.Second
	env := &simPD{}
	start := func(id, role, host string) *sim.Worker {
		c := sim.DefaultConfig()
		c.Role = role
		c.TimeScale = 0.01
		c.PDTransferTimeoutMS = 2000 // a transfer that never completes fails within 2 s
		w, err := sim.StartWorker(context.Background(), id, c, host, 0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = w.Close() })
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: id, URL: w.URL(), MaxConns: 64, Role: role,
			Events: w.EventsEndpoint(), Replay: w.ReplayEndpoint(), BootstrapPort: w.BootstrapPort()})
		return w
	}
	for i := range nP {
		env.prefill = append(env.prefill, start(fmt.Sprintf("p%d", i), sim.RolePrefill, "127.0.0.1"))
	}
	for i := range nD {
		env.decode = append(env.decode, start(fmt.Sprintf("d%d", i), sim.RoleDecode, dhost))
	}
	if mod != nil {
		mod(cfg)
	}
	// The prefix index and a prompt hasher, as cmd/stack gives a router (without the
	// event feeds, which cmd/stack runs: the index holds the router's predictions, so
	// the prefill pool's cache-aware choice is tested here, its events elsewhere).
	env.tr = startRouterWith(t, cfg, func(tr *testRouter) {
		ix, err := indexer.New(indexer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		tr.srv.index, tr.srv.hasher = ix, blockhash.Approx{}
	})
	poll.CheckFor(t, 10*time.Second, "every worker available", func() bool {
		for _, w := range env.tr.pool.Workers() {
			if !w.Available() {
				return false
			}
		}
		return true
	})
	return env
}

// streamOutcome is what a client got from one streamed request.
type streamOutcome struct {
	status           int
	prefill, decode  string
	done, errorEvent bool
	usage            bool // the last chunk carried usage with completion tokens
	body             string
}

// streamThrough sends a streamed completion through the router and reads it to the end.
func streamThrough(t *testing.T, url, prompt string, maxTokens int) (streamOutcome, error) {
	body := fmt.Sprintf(`{"model":"kvsim","prompt":%q,"max_tokens":%d,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`, prompt, maxTokens)
	req, _ := http.NewRequest("POST", url+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return streamOutcome{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(bufio.NewReader(resp.Body))
	o := streamOutcome{status: resp.StatusCode, prefill: resp.Header.Get("x-kvroute-prefill-worker"),
		decode: resp.Header.Get("x-kvroute-worker"), body: string(b)}
	o.done = strings.HasSuffix(o.body, "data: [DONE]\n\n")
	o.errorEvent = strings.Contains(o.body, `data: {"error":`)
	o.usage = strings.Contains(o.body, `"completion_tokens":`)
	return o, err
}

func simPrompt(conv, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "c%dw%d ", conv, i)
	}
	return b.String()
}

func testSimPDFlow(t *testing.T, protocol string) {
	env := startSimPD(t, protocol, 2, 2, nil)
	// Four conversations, each asked three times: the later turns find their prefix on
	// the prefill worker that computed it.
	var prefillOf [4]string
	for turn := range 3 {
		for conv := range 4 {
			o, err := streamThrough(t, env.tr.url, simPrompt(conv, 300), 8)
			if err != nil || o.status != 200 || !o.done || o.errorEvent || !o.usage {
				t.Fatalf("conv %d turn %d: %v %+v", conv, turn, err, o)
			}
			if !strings.HasPrefix(o.prefill, "p") || !strings.HasPrefix(o.decode, "d") {
				t.Fatalf("prefill %q decode %q", o.prefill, o.decode)
			}
			if turn == 0 {
				prefillOf[conv] = o.prefill
			} else if o.prefill != prefillOf[conv] {
				t.Errorf("conv %d turn %d: prefill on %s, its prefix is on %s", conv, turn, o.prefill, prefillOf[conv])
			}
		}
	}
	var sent, received, failed uint64
	for _, p := range env.prefill {
		sent += p.PDStats().Sent
	}
	for _, d := range env.decode {
		s := d.PDStats()
		received, failed = received+s.Received, failed+s.Failed
	}
	if sent != 12 || received != 12 || failed != 0 {
		t.Errorf("transfers: prefill sent %d, decode received %d failed %d; want 12, 12, 0", sent, received, failed)
	}
	// The prefill pool's own counters: every later turn hit.
	var hits uint64
	for _, p := range env.prefill {
		hits += p.Stats().CachedTokens
	}
	if hits < 8*288 { // 8 later turns, at least 18 of their 300-token prompts' blocks
		t.Errorf("prefill pool cached prompt tokens %d, want at least %d", hits, 8*288)
	}
	poll.CheckFor(t, 10*time.Second, "bookkeeping freed", func() bool {
		for _, w := range env.tr.pool.Workers() {
			if w.InFlight() != 0 || w.ActiveBlocks() != 0 || env.tr.srv.pd.queued(w.ID).Load() != 0 {
				return false
			}
		}
		return true
	})
}

func TestPDSimVLLM(t *testing.T)   { testSimPDFlow(t, configs.PDVLLM) }
func TestPDSimSGLang(t *testing.T) { testSimPDFlow(t, configs.PDSGLang) }

// Chaos through the router on kvsim workers: a prefill worker killed mid-run, a decode
// worker killed mid-stream, a prefill worker whose transfers never complete. Every
// request gets an answer (a complete stream, an error status, or a stream ended by an
// SSE error event) within its deadline: lost 0, hung 0.
func TestPDSimChaos(t *testing.T) {
	for _, protocol := range []string{configs.PDVLLM, configs.PDSGLang} {
		t.Run(protocol, func(t *testing.T) {
			env := startSimPD(t, protocol, 3, 3, nil)
			const clients, perClient = 6, 12
			var ok, failedClean, lost, hung atomic.Int64
			var errsMu sync.Mutex
			var errs []string
			var n atomic.Int64
			var wg sync.WaitGroup
			for c := range clients {
				wg.Go(func() {
					for i := range perClient {
						k := n.Add(1)
						switch k {
						case 15:
							_ = env.prefill[0].Close() // killed mid-run
						case 30:
							_ = env.prefill[1].SetFaults(sim.Faults{TransferHang: true})
						case 45:
							_ = env.decode[0].Close() // killed, mid-stream for what it serves
						}
						type res struct {
							o   streamOutcome
							err error
						}
						done := make(chan res, 1)
						go func() {
							o, err := streamThrough(t, env.tr.url, simPrompt(c*100+i%4, 200), 40)
							done <- res{o, err}
						}()
						select {
						case r := <-done:
							switch {
							case r.err != nil && r.o.status == 0:
								lost.Add(1)
								errsMu.Lock()
								errs = append(errs, r.err.Error())
								errsMu.Unlock()
							case r.o.status == 200 && r.o.done && !r.o.errorEvent:
								ok.Add(1)
							case r.o.status != 200 || r.o.errorEvent:
								failedClean.Add(1)
							default:
								lost.Add(1) // a stream cut without an error event
								errsMu.Lock()
								errs = append(errs, fmt.Sprintf("cut stream: %q", r.o.body))
								errsMu.Unlock()
							}
						case <-time.After(60 * time.Second):
							hung.Add(1)
						}
					}
				})
			}
			wg.Wait()
			t.Logf("%s: ok %d, failed cleanly %d, lost %d, hung %d", protocol, ok.Load(), failedClean.Load(), lost.Load(), hung.Load())
			if lost.Load() != 0 || hung.Load() != 0 {
				t.Errorf("lost %d, hung %d: %v", lost.Load(), hung.Load(), errs)
			}
			if ok.Load() < clients*perClient/2 {
				t.Errorf("only %d of %d requests succeeded", ok.Load(), clients*perClient)
			}
			poll.CheckFor(t, 20*time.Second, "bookkeeping freed", func() bool {
				for _, w := range env.tr.pool.Workers() {
					if w.InFlight() != 0 || env.tr.srv.pd.queued(w.ID).Load() != 0 {
						return false
					}
				}
				return true
			})
		})
	}
}
