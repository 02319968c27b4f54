package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

func init() {
	register(command{name: "bridge", summary: "republish a local engine's KV events to NATS", run: runBridge})
}

func runBridge(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return bridgeMain(ctx, args, stdout, stderr)
}

// bridgeMain runs `kvroute bridge` until ctx ends: a kvevents.Manager following the
// engine's ZMQ stream (with replay, resets on lost history and restarts) whose sink
// republishes normalized envelopes to NATS.
func bridgeMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bridge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	worker := fs.String("worker", "", "worker id the routers know this engine by, e.g. its URL http://10.0.0.5:8000 (required)")
	model := fs.String("model", "", "model the engine serves")
	events := fs.String("events", "tcp://127.0.0.1:5557", "the engine's KV events ZMQ PUB endpoint")
	replay := fs.String("replay", "", "the engine's replay ROUTER endpoint, e.g. tcp://127.0.0.1:5558 (none: gaps reset the worker)")
	topic := fs.String("topic", "", "ZMQ topic (vLLM kv-events-config topic)")
	dpRanks := fs.Int("dp-ranks", 1, "data-parallel ranks; rank N publishes on the events/replay ports + N")
	natsURL := fs.String("nats", nats.DefaultURL, "NATS server URL")
	embedded := fs.String("embedded-nats", "", "run an embedded NATS server with JetStream on this `host:port` instead of connecting to --nats")
	storeDir := fs.String("embedded-store", "", "JetStream directory of the embedded server (default: a temporary directory)")
	prefix := fs.String("subject-prefix", natsbus.DefaultPrefix, "NATS subject prefix")
	js := fs.Bool("jetstream", false, "create or update the JetStream stream holding the events")
	stream := fs.String("stream", natsbus.DefaultStream, "JetStream stream name")
	maxAge := fs.Duration("max-age", time.Hour, "JetStream: drop events older than this")
	maxBytes := fs.Int64("max-bytes", 1<<30, "JetStream: stream size bound in bytes")
	deadAfter := fs.Duration("dead-after", 30*time.Second, "reset the worker when its publisher is unreachable this long")
	maxMessage := fs.Int64("max-message-bytes", kvevents.DefaultMaxMessageBytes,
		"largest ZMQ message read from the engine; a larger frame closes the connection")
	heartbeat := fs.Duration("heartbeat", 5*time.Second, "interval of the heartbeats telling routers this bridge is alive (0: none)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(code int, err error) int {
		fmt.Fprintln(stderr, "kvroute bridge:", err)
		return code
	}
	if fs.NArg() > 0 {
		return fail(2, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if *maxMessage < 1 {
		return fail(2, fmt.Errorf("--max-message-bytes %d must be positive", *maxMessage))
	}
	if *worker == "" {
		return fail(2, errors.New("--worker is required"))
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return fail(2, err)
	}
	wc := kvevents.WorkerConfig{Worker: *worker, Model: *model, Endpoint: *events, ReplayEndpoint: *replay,
		Topic: *topic, DPRanks: *dpRanks}
	if err := wc.Validate(); err != nil {
		return fail(2, err)
	}

	url := *natsURL
	if *embedded != "" {
		host, port, err := net.SplitHostPort(*embedded)
		if err != nil {
			return fail(2, fmt.Errorf("--embedded-nats %q: %w", *embedded, err))
		}
		p, err := strconv.Atoi(port)
		if err != nil || p < 0 || p > 65535 {
			return fail(2, fmt.Errorf("--embedded-nats %q: bad port", *embedded))
		}
		srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{Host: host, Port: p, StoreDir: *storeDir})
		if err != nil {
			return fail(1, err)
		}
		defer srv.Shutdown()
		url = srv.ClientURL()
		fmt.Fprintf(stdout, "embedded NATS listening on %s\n", url)
	}
	nc, err := nats.Connect(url, nats.Name("kvroute bridge "+*worker), nats.MaxReconnects(-1))
	if err != nil {
		return fail(1, fmt.Errorf("connect nats %q: %w", url, err))
	}
	defer nc.Close()
	if *js || *embedded != "" {
		if err := natsbus.EnsureStream(ctx, nc, natsbus.StreamOptions{Name: *stream, Prefix: *prefix,
			MaxAge: *maxAge, MaxBytes: *maxBytes}); err != nil {
			return fail(1, err)
		}
	}
	pub := natsbus.NewPublisher(nc, natsbus.PublisherOptions{Prefix: *prefix, Model: *model, Logger: log})
	m, err := kvevents.NewManager(kvevents.Options{Sink: pub, Logger: log, DeadAfter: *deadAfter,
		MaxMessageBytes: *maxMessage})
	if err != nil {
		return fail(1, err)
	}
	if err := m.Add(wc); err != nil {
		return fail(2, err)
	}
	log.Info("kvroute bridge running", "worker", *worker, "events", *events, "replay", *replay, "nats", url, "prefix", *prefix)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		if *heartbeat <= 0 {
			return
		}
		t := time.NewTicker(*heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				for _, st := range m.States() {
					pub.Heartbeat(st.Key)
				}
			}
		}
	}()
	_ = m.Run(ctx)
	<-hbDone
	if err := nc.Flush(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		log.Warn("flush nats on exit", "err", err)
	}
	return 0
}
