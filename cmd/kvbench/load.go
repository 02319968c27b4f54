package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/workload"
)

func init() {
	register(command{name: "load", summary: "steady load against a running router: workloads replayed in a loop for a duration (scripts/soak.sh)", run: runLoad})
}

// runLoad replays each of the named workloads against --url in its own loop, round after
// round with the seed advanced by one each round (new prompts, so caches and the index
// keep turning over), until --duration ends. It prints a line per finished round and a
// progress line every --report; the exit code is 1 when no request succeeded.
func runLoad(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "base `URL` of the router, e.g. http://127.0.0.1:8080 (required)")
	model := fs.String("model", "kvbench", "model of every request")
	kinds := fs.String("workloads", "multi-turn,shared-prefix", "comma-separated workloads run side by side, each in a loop: mooncake, shared-prefix, multi-turn")
	duration := fs.Duration("duration", time.Minute, "how long to keep the load up; requests in flight at the end are cancelled")
	every := fs.Duration("report", 30*time.Second, "time between two progress lines")
	trace := fs.String("trace", "bench/workload/testdata/mooncake_head.jsonl", "Mooncake-format trace `FILE` (mooncake workload)")
	limit := fs.Int("limit", 0, "replay only the first N trace records (0: all)")
	maxOut := fs.Int("max-output", 0, "cap trace output lengths (0: as in the trace)")
	speedup := fs.Float64("speedup", 1, "divide arrival times by this factor")
	rate := fs.Float64("rate", 2, "Poisson arrivals per second: conversations (multi-turn) or prompts (shared-prefix)")
	seed := fs.Uint64("seed", 1, "seed of the first round; round k uses seed+k")
	users := fs.Int("users", 32, "multi-turn: conversations per round")
	rounds := fs.Int("rounds", 6, "multi-turn: turns per conversation")
	groups := fs.Int("groups", 4, "groups of shared system prompts (multi-turn and shared-prefix)")
	prompts := fs.Int("prompts", 8, "shared-prefix: prompts per group")
	system := fs.Int("system", 1000, "system prompt tokens")
	question := fs.Int("question", 100, "question tokens per prompt or turn")
	output := fs.Int("output", 64, "output tokens per request (multi-turn and shared-prefix)")
	think := fs.Duration("think", 2*time.Second, "multi-turn: time between a conversation's turns")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *url == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "kvbench load: --url is required and there are no arguments")
		return 2
	}
	if *speedup <= 0 || *duration <= 0 || *every <= 0 {
		fmt.Fprintln(stderr, "kvbench load: --speedup, --duration and --report must be positive")
		return 2
	}
	names := strings.Split(*kinds, ",")
	build := func(kind string, round int) (*workload.Workload, error) {
		s := *seed + uint64(round)
		w, err := buildWorkload(kind, *trace, workload.MooncakeConfig{Limit: *limit, MaxOutput: *maxOut},
			workload.MultiTurnConfig{Users: *users, Rounds: *rounds, Groups: *groups, System: *system, Question: *question, Output: *output, Think: *think, Rate: *rate, Seed: s},
			workload.SharedPrefixConfig{Groups: *groups, Prompts: *prompts, System: *system, Question: *question, Output: *output, Rate: *rate, Seed: s})
		if err != nil {
			return nil, err
		}
		if *speedup != 1 {
			w.Scale(*speedup)
		}
		return w, nil
	}
	for _, k := range names {
		if _, err := build(k, 0); err != nil {
			fmt.Fprintln(stderr, "kvbench load:", err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	st := &loadStats{}
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, DisableCompression: true}}
	start := time.Now()
	var out sync.Mutex
	var wg sync.WaitGroup
	for _, kind := range names {
		wg.Go(func() {
			for round := 0; ctx.Err() == nil; round++ {
				w, err := build(kind, round)
				if err != nil {
					return // checked above: cannot happen for another seed
				}
				t0 := time.Now()
				res, err := workload.Replay(ctx, w, workload.ReplayConfig{URL: *url, Model: *model, Client: client,
					Progress: func(int, int) { st.done.Add(1) }})
				ok, failed, firstErr, ttft := tally(res, err != nil)
				st.ok.Add(int64(ok))
				st.failed.Add(int64(failed))
				out.Lock()
				fmt.Fprintf(stdout, "%s %s round %d: %d requests, %d ok, %d failed, TTFT p50 %s, %.1fs%s\n",
					time.Since(start).Round(time.Second), kind, round, len(w.Requests), ok, failed, ttft.Round(time.Millisecond),
					time.Since(t0).Seconds(), firstErrNote(firstErr))
				out.Unlock()
			}
		})
	}
	wg.Go(func() {
		t := time.NewTicker(*every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.Lock()
				fmt.Fprintf(stdout, "%s progress: %d finished, %d ok, %d failed (in finished rounds)\n",
					time.Since(start).Round(time.Second), st.done.Load(), st.ok.Load(), st.failed.Load())
				out.Unlock()
			}
		}
	})
	wg.Wait()
	fmt.Fprintf(stdout, "%s total: %d ok, %d failed\n", time.Since(start).Round(time.Second), st.ok.Load(), st.failed.Load())
	if st.ok.Load() == 0 {
		return 1
	}
	return 0
}

// loadStats counts a load run's requests across its loops. It must not be copied.
type loadStats struct {
	done, ok, failed atomic.Int64
}

// tally counts a round's outcomes. When the round was cut short (its context ended),
// requests that failed with a cancellation are not counted as failures: the load
// generator itself gave up on them.
func tally(res []workload.Outcome, cut bool) (ok, failed int, firstErr string, ttftP50 time.Duration) {
	var ttfts []time.Duration
	for _, o := range res {
		switch {
		case o.Err == "" && o.E2E > 0:
			ok++
			ttfts = append(ttfts, o.TTFT)
		case o.Err == "":
			// never sent: the round ended before its arrival time
		case cut && isCancel(o.Err):
		default:
			failed++
			if firstErr == "" {
				firstErr = o.Err
			}
		}
	}
	if len(ttfts) > 0 {
		slices.Sort(ttfts)
		ttftP50 = ttfts[len(ttfts)/2]
	}
	return ok, failed, firstErr, ttftP50
}

// isCancel reports whether a request failed because the load's own context ended: its
// deadline, or SIGINT/SIGTERM (signal.NotifyContext's cause reads "... signal received").
func isCancel(msg string) bool {
	return strings.Contains(msg, context.Canceled.Error()) || strings.Contains(msg, context.DeadlineExceeded.Error()) ||
		strings.Contains(msg, "signal received")
}

func firstErrNote(e string) string {
	if e == "" {
		return ""
	}
	if len(e) > 160 {
		e = e[:160]
	}
	return "; first error: " + e
}
