package scrape

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Target is one worker to scrape.
type Target struct {
	// ID names the worker in callbacks and in the worker label of the metrics; IDs must
	// be unique among the targets.
	ID string
	// URL is the worker's base URL, "http://host:port"; the scraper appends Config.Path.
	URL string
}

// Config configures a [Scraper]. A zero field takes its default.
type Config struct {
	// Interval is the time between two rounds of scrapes. Default 1s.
	Interval time.Duration
	// Timeout bounds one scrape: connecting, the request and reading the body.
	// Default 1s.
	Timeout time.Duration
	// Path is the metrics path on each target. Default "/metrics".
	Path string
	// MaxBodyBytes bounds a metrics body; a longer one is an error. Default 16 MiB.
	MaxBodyBytes int64
	// Client makes the scrapes; nil means a client of the scraper's own (plain HTTP or
	// system TLS roots, no credentials). The router passes upstream.Pool.HTTPClient,
	// which adds each worker's API key and TLS settings. Its Timeout should be 0: Timeout
	// above bounds each scrape.
	Client *http.Client
}

// Defaults of [Config].
const (
	DefaultInterval     = time.Second
	DefaultTimeout      = time.Second
	DefaultPath         = "/metrics"
	DefaultMaxBodyBytes = 16 << 20
)

func (c *Config) setDefaults() error {
	if c.Interval < 0 {
		return fmt.Errorf("scrape interval must not be negative, got %v", c.Interval)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("scrape timeout must not be negative, got %v", c.Timeout)
	}
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("scrape max body bytes must not be negative, got %d", c.MaxBodyBytes)
	}
	if c.Path != "" && c.Path[0] != '/' {
		return fmt.Errorf("scrape path must start with '/', got %q", c.Path)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	return nil
}

// Callback receives the result of one scrape of the target with the given ID: the
// sample (zero when err is not nil), the time the scrape ended, and the error. It runs
// on the scrape's goroutine: callbacks for different targets may run concurrently, never
// two for the same target. It should return quickly; the target is not scraped again
// before it has.
type Callback func(target string, s Sample, at time.Time, err error)

// Scraper polls the /metrics of a changing set of targets: every Interval it asks the
// targets function for the current set and starts one scrape per target that has none
// in flight. Create it with [New]; its methods are safe for concurrent use.
type Scraper struct {
	cfg     Config
	targets func() []Target
	cb      Callback
	client  *http.Client
	bufs    sync.Pool // *bytes.Buffer

	duration prometheus.Histogram
	errs     *prometheus.CounterVec
	skipped  *prometheus.CounterVec

	// mu guards inFlight.
	mu       sync.Mutex
	inFlight map[string]bool // target ID -> a round's scrape is running
}

// New returns a Scraper that scrapes the targets returned by targets (called once per
// round, from the goroutine of [Scraper.Run]) and reports to cb, with its metrics
// registered with reg (nil: not registered). It starts nothing: call Run.
func New(cfg Config, targets func() []Target, cb Callback, reg prometheus.Registerer) (*Scraper, error) {
	if targets == nil || cb == nil {
		return nil, errors.New("new scraper: targets and callback must not be nil")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("new scraper: %w", err)
	}
	client := cfg.Client
	if client == nil {
		client = &http.Client{
			Transport: &http.Transport{
				// Workers are reached directly, never through an environment proxy.
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     max(2*cfg.Interval, 30*time.Second),
				ForceAttemptHTTP2:   false,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	s := &Scraper{
		cfg:     cfg,
		targets: targets,
		cb:      cb,
		client:  client,
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvroute_scrape_duration_seconds",
			Help:    "Duration of engine /metrics scrapes, failed ones included, in seconds.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_scrape_errors_total",
			Help: "Failed engine /metrics scrapes: connection, timeout, status or parse errors.",
		}, []string{"worker"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_scrape_skipped_total",
			Help: "Scrape rounds skipped for a worker because its previous scrape was still in flight.",
		}, []string{"worker"}),
		inFlight: map[string]bool{},
	}
	s.bufs.New = func() any { return new(bytes.Buffer) }
	if reg != nil {
		for _, c := range []prometheus.Collector{s.duration, s.errs, s.skipped} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register scrape metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Forget deletes the series of a worker that left the fleet.
func (s *Scraper) Forget(worker string) {
	l := prometheus.Labels{"worker": worker}
	s.errs.DeletePartialMatch(l)
	s.skipped.DeletePartialMatch(l)
}

// Run scrapes in rounds, the first at once, until ctx ends, and returns when every
// scrape it started has finished. Scrapes cut short by ctx ending are not reported.
// A target removed from the set while its scrape is in flight still gets that result.
func (s *Scraper) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		s.round(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// round starts a scrape of every target without one in flight.
func (s *Scraper) round(ctx context.Context, wg *sync.WaitGroup) {
	for _, t := range s.targets() {
		s.mu.Lock()
		busy := s.inFlight[t.ID]
		s.inFlight[t.ID] = true
		s.mu.Unlock()
		if busy {
			s.skipped.WithLabelValues(t.ID).Inc()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sample, err := s.Scrape(ctx, t)
			if ctx.Err() == nil {
				s.cb(t.ID, sample, time.Now(), err)
			}
			s.mu.Lock()
			delete(s.inFlight, t.ID)
			s.mu.Unlock()
		}()
	}
}

// Scrape fetches and parses one target's metrics now, bounded by the configured
// timeout and ctx, and records it in the metrics (a scrape cut short by ctx ending is
// not). It is what each round runs; called directly (say, to read the block size
// before serving) it is not counted against the one-scrape-in-flight rule of rounds.
func (s *Scraper) Scrape(ctx context.Context, t Target) (Sample, error) {
	start := time.Now()
	sample, err := s.fetch(ctx, t)
	if ctx.Err() != nil {
		return Sample{}, fmt.Errorf("scrape %s: %w", t.URL, ctx.Err())
	}
	s.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		s.errs.WithLabelValues(t.ID).Inc()
		return Sample{}, fmt.Errorf("scrape %s: %w", t.URL, err)
	}
	return sample, nil
}

func (s *Scraper) fetch(ctx context.Context, t Target) (Sample, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL+s.cfg.Path, nil)
	if err != nil {
		return Sample{}, err
	}
	// The classic text format, which every engine serves; Parse reads OpenMetrics too.
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	resp, err := s.client.Do(req)
	if err != nil {
		return Sample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Sample{}, fmt.Errorf("status %d", resp.StatusCode)
	}
	buf := s.bufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 1<<20 { // do not pin huge buffers
			buf.Reset()
			s.bufs.Put(buf)
		}
	}()
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(resp.Body, s.cfg.MaxBodyBytes+1))
	if err != nil {
		return Sample{}, fmt.Errorf("read body: %w", err)
	}
	if n > s.cfg.MaxBodyBytes {
		return Sample{}, fmt.Errorf("body exceeds %d bytes", s.cfg.MaxBodyBytes)
	}
	sample, err := Parse(buf.Bytes())
	if err != nil {
		return Sample{}, fmt.Errorf("parse: %w", err)
	}
	return sample, nil
}
