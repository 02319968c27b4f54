package proxy

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// stringsFlag is a repeatable string flag.
type stringsFlag []string

func (l *stringsFlag) String() string     { return strings.Join(*l, " ") }
func (l *stringsFlag) Set(v string) error { *l = append(*l, v); return nil }

// UpstreamMain is the main function of the fake upstream process (`kvbench
// fake-upstream`): it serves one [Upstream] on every --listen address until SIGINT or
// SIGTERM and returns the exit code. The harness starts it as a separate process so that
// its CPU time can be told apart from the load generator's.
func UpstreamMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("fake-upstream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var listen stringsFlag
	fs.Var(&listen, "listen", "listen `ADDR` (host:port); repeat for more workers on the same process")
	var o UpstreamOptions
	fs.StringVar(&o.Model, "model", DefaultModel, "the model served")
	fs.IntVar(&o.Chunks, "chunks", 200, "SSE chunks per streaming answer, [DONE] not counted")
	fs.DurationVar(&o.ChunkGap, "chunk-gap", 0, "pause between two chunks of a stream")
	fs.IntVar(&o.CompletionBytes, "completion-bytes", 2048, "approximate size of a non-streaming answer")
	fs.BoolVar(&o.NoTokenize, "no-tokenize", false, "answer 404 to POST /tokenize, as a worker without vLLM's tokenizer endpoint")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if len(listen) == 0 {
		fmt.Fprintln(stderr, "fake-upstream: give at least one --listen ADDR")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	u := NewUpstream(o)
	errc := make(chan error, len(listen))
	for _, a := range listen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			fmt.Fprintln(stderr, "fake-upstream:", err)
			return 1
		}
		go func() { errc <- u.Serve(ln) }()
	}
	select {
	case err := <-errc:
		fmt.Fprintln(stderr, "fake-upstream:", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := u.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		fmt.Fprintln(stderr, "fake-upstream:", err)
		return 1
	}
	return 0
}
