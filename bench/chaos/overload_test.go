package chaos

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
)

// TestOverloadBurst is the measurement of issue 18's router queue (bench/RESULTS.md,
// "Overload queue (issue 18)"): an open-loop burst at twice the fleet's throughput
// against three setups of one kvsim fleet, reporting requests lost (must be 0), 429s,
// the TTFT of the admitted requests and the queue lengths, the engines' and the
// router's. It measures, so it only runs when asked:
//
//	KVROUTE_OVERLOAD=1 go test -run TestOverloadBurst -v ./bench/chaos/
func TestOverloadBurst(t *testing.T) {
	if os.Getenv("KVROUTE_OVERLOAD") == "" {
		t.Skip("a measurement: set KVROUTE_OVERLOAD=1")
	}
	const (
		workers = 3
		seqs    = 4 // kvsim max_num_seqs: the engines' batch, and the router's max_inflight
		burst   = 4 * time.Second
	)
	cfg := LoadConfig{Model: Model, Prefixes: 4, SystemWords: 200, UserWords: 20, MaxTokens: 64, Deadline: time.Minute}
	cfg.defaults()
	setups := []struct {
		name            string
		inflight, queue int
		calibrate       bool
		high            float64 // share of requests sent with x-kvroute-priority: high
	}{
		{name: "no guard (max_inflight 0): the engines queue", inflight: 0, queue: 256, calibrate: true},
		{name: "guard max_inflight 4, queue off (max_size 0)", inflight: seqs, queue: 0},
		{name: "guard max_inflight 4, queue max_size 256", inflight: seqs, queue: 256},
		{name: "guard max_inflight 4, queue max_size 1024", inflight: seqs, queue: 1024},
		{name: "guard max_inflight 6, queue max_size 1024", inflight: seqs + 2, queue: 1024},
		{name: "guard max_inflight 4, queue max_size 1024, 10% sent as high", inflight: seqs, queue: 1024, high: 0.1},
	}
	var rate float64
	var table []string
	for _, s := range setups {
		e := startEnv(t, EnvOptions{Workers: workers, Mutate: func(fc *sim.FleetConfig, c *configs.Config) {
			fc.Worker.MaxNumSeqs = seqs
			c.CacheAware.MaxInFlight = s.inflight
			c.Queue.MaxSize = s.queue
			c.Timeouts.FirstByte, c.Timeouts.Total = time.Minute, 2*time.Minute
		}})
		cfg.URL = e.URL
		if s.calibrate {
			// The fleet's throughput: a closed loop of twice its batch slots, so that the
			// engines never wait for a request.
			cc := cfg
			cc.Concurrency = 2 * workers * seqs
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tally := &Tally{}
			RunLoad(ctx, cc, tally)
			cancel()
			rate = float64(tally.Count(Completed)) / 5
			t.Logf("fleet throughput %.1f req/s at concurrency %d; burst at %.1f req/s for %s", rate, cc.Concurrency, 2*rate, burst)
		}
		r := runBurst(e, cfg, 2*rate, burst, s.high)
		var st sim.Stats
		for _, w := range e.Fleet.Workers() {
			ws := w.Stats()
			st.PromptTokens, st.CachedTokens, st.LagTime = st.PromptTokens+ws.PromptTokens, st.CachedTokens+ws.CachedTokens, st.LagTime+ws.LagTime
		}
		high := "-"
		if len(r.highTTFTs) > 0 {
			high = fmtDur(quantile(r.highTTFTs, 0.5)) + " / " + fmtDur(quantile(r.highTTFTs, 0.99))
		}
		table = append(table, fmt.Sprintf("| %s | %d | %d | %d | %d | %d | %s / %s | %s | %d / %.1f | %d | %.1f | %.1f%% | %s |",
			s.name, r.sent, r.completed, r.overloaded, r.otherErrors, r.lost,
			fmtDur(quantile(r.ttfts, 0.5)), fmtDur(quantile(r.ttfts, 0.99)), high, r.engineWaitMax, r.engineWaitMean, r.routerQueueMax,
			float64(r.completed)/r.makespan.Seconds(), 100*float64(st.CachedTokens)/float64(max(1, st.PromptTokens)), fmtDur(st.LagTime)))
		if len(r.samples) > 0 {
			t.Logf("%s: samples %q", s.name, r.samples)
		}
		if r.lost != 0 {
			t.Errorf("%s: %d requests lost or hung: %v", s.name, r.lost, r.samples)
		}
		if b := e.Bookkeeping(); !b.Zero() {
			t.Errorf("%s: bookkeeping not back to zero: %+v", s.name, b)
		}
		e.Close()
	}
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("load average after: %s", bytes.TrimSpace(load))
	t.Log("\n| setup | sent | completed | 429 server_overloaded | other errors | lost or hung | TTFT p50 / p99 of admitted | of which high class | engines' waiting requests max / mean (sum of 3 workers) | router queue max | completed/s | hit rate | engine lag |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + strings.Join(table, "\n"))
}

// burstResult is what one burst came to.
type burstResult struct {
	sent, completed, overloaded, otherErrors, lost int
	ttfts, highTTFTs                               []time.Duration
	engineWaitMax, routerQueueMax                  int
	engineWaitMean                                 float64
	makespan                                       time.Duration // first send to last answer
	samples                                        []string
}

// quantile returns the q-quantile of ds (sorting ds), 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

func fmtDur(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// runBurst sends streaming requests open-loop at rate per second for d, waits for every
// answer, and samples the engines' waiting requests and the router's queue every 10ms.
func runBurst(e *Env, cfg LoadConfig, rate float64, d time.Duration, high float64) *burstResult {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 1024,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}}
	defer client.CloseIdleConnections()
	systems := make([]string, cfg.Prefixes)
	for i := range systems {
		systems[i] = words(rand.New(rand.NewPCG(cfg.Seed, uint64(i))), cfg.SystemWords)
	}
	r := &burstResult{}
	var mu sync.Mutex
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var sum, n int
		for {
			select {
			case <-stop:
				if n > 0 {
					r.engineWaitMean = float64(sum) / float64(n)
				}
				return
			case <-tick.C:
			}
			w := 0
			for _, sw := range e.Fleet.Workers() {
				w += sw.Stats().Waiting
			}
			sum, n = sum+w, n+1
			r.engineWaitMax = max(r.engineWaitMax, w)
			r.routerQueueMax = max(r.routerQueueMax, int(e.Metric("kvroute_router_queue_depth")))
		}
	}()
	rng := rand.New(rand.NewPCG(cfg.Seed+7, 1))
	n := int(rate * d.Seconds())
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		body := requestBody(cfg, systems[rng.IntN(len(systems))], words(rng, cfg.UserWords), true)
		isHigh := rng.Float64() < high
		time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, status, ttft, detail := sendTimed(client, cfg.URL, body, cfg.Deadline, isHigh)
			mu.Lock()
			defer mu.Unlock()
			r.sent++
			switch {
			case o == Completed:
				r.completed++
				r.ttfts = append(r.ttfts, ttft)
				if isHigh {
					r.highTTFTs = append(r.highTTFTs, ttft)
				}
			case o == CleanError && status == http.StatusTooManyRequests && strings.Contains(detail, `"server_overloaded"`):
				r.overloaded++
			case o == CleanError:
				r.otherErrors++
				if len(r.samples) < 3 {
					r.samples = append(r.samples, detail)
				}
			default:
				r.lost++
				if len(r.samples) < 3 {
					r.samples = append(r.samples, o.String()+": "+detail)
				}
			}
		}()
	}
	wg.Wait()
	r.makespan = time.Since(start)
	close(stop)
	<-sampled
	return r
}

// sendTimed posts one streaming chat request (of the high priority class when high) and
// classifies it as [Send] does; ttft is the time from sending to the first byte of the
// body.
func sendTimed(client *http.Client, url string, body []byte, deadline time.Duration, high bool) (o Outcome, status int, ttft time.Duration, detail string) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return Lost, 0, 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	if high {
		req.Header.Set("x-kvroute-priority", "high")
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return transportOutcome(ctx, err), 0, 0, err.Error()
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	_, _ = br.Peek(1)
	ttft = time.Since(t0)
	b, err := io.ReadAll(br)
	if err != nil {
		return transportOutcome(ctx, err), resp.StatusCode, ttft, err.Error()
	}
	return classify(resp.StatusCode, true, b), resp.StatusCode, ttft, fmt.Sprintf("status %d: %.300s", resp.StatusCode, b)
}
