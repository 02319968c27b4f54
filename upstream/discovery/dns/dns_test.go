package dns

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/upstream/discovery/dns/dnstest"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// wait bounds every poll: generous, as the machine may be loaded; a passing test waits
// a few intervals.
const wait = 10 * time.Second

// recorder keeps the views a source reported.
type recorder struct {
	mu    sync.Mutex
	views [][]discovery.Member // mu guards views
}

func (r *recorder) update(ms []discovery.Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.views = append(r.views, slices.Clone(ms))
}

// last returns the ids of the last view and the number of views reported.
func (r *recorder) last() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.views) == 0 {
		return nil, 0
	}
	v := r.views[len(r.views)-1]
	ids := make([]string, len(v))
	for i, m := range v {
		ids[i] = m.Worker.ID
	}
	return ids, len(r.views)
}

func (r *recorder) lastView() []discovery.Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.views[len(r.views)-1]
}

// logBuffer is a log sink safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // mu guards buf
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns the number of log lines containing s.
func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// harness is one source running against a test DNS server.
type harness struct {
	t    *testing.T
	rec  *recorder
	reg  *prometheus.Registry
	logs *logBuffer
	done chan error
	stop context.CancelFunc
}

// testConfig is a type A config asking server, with short interval and timeout.
func testConfig(server, name string) configs.DNSDiscovery {
	return configs.DNSDiscovery{
		WorkerTemplate: configs.WorkerTemplate{Scheme: "http", DPRanks: 1, MaxConns: 16},
		Name:           name, Type: "A", Port: 8000,
		Interval: 20 * time.Millisecond, Timeout: 500 * time.Millisecond, Server: server,
	}
}

// run starts a source for cfg; it is stopped when the test ends.
func run(t *testing.T, cfg configs.DNSDiscovery) *harness {
	t.Helper()
	h := &harness{t: t, rec: &recorder{}, reg: prometheus.NewPedanticRegistry(), logs: &logBuffer{},
		done: make(chan error, 1)}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := New(cfg, Options{Registerer: h.reg, Logger: log})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if s.Name() != "dns" {
		t.Fatalf("Name() = %q, want dns", s.Name())
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.done <- s.Run(ctx, h.rec.update) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(wait):
			t.Errorf("Run did not return within %v of its context ending", wait)
		}
	})
	return h
}

// metric returns the value of the series of name with the given label values (pairs
// name, value), 0 when absent.
func (h *harness) metric(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func (h *harness) lookups(result string) float64 {
	return h.metric("kvroute_discovery_lookups_total", "source", "dns", "result", result)
}

func (h *harness) rejected(reason string) float64 {
	return h.metric("kvroute_discovery_rejected_total", "source", "dns", "reason", reason)
}

// waitView waits until the last view reported is want.
func (h *harness) waitView(want ...string) {
	h.t.Helper()
	poll.CheckFor(h.t, wait, "view "+strings.Join(want, ","), func() bool {
		got, _ := h.rec.last()
		return slices.Equal(got, want)
	})
}

// waitLookups waits for n more lookups with result than there are now.
func (h *harness) waitLookups(result string, n float64) {
	h.t.Helper()
	from := h.lookups(result)
	poll.CheckFor(h.t, wait, "more "+result+" lookups", func() bool { return h.lookups(result) >= from+n })
}

// checkKept checks that no view was reported after the n-th and the members gauge
// still counts the last view.
func (h *harness) checkKept(n int, want ...string) {
	h.t.Helper()
	got, m := h.rec.last()
	if m != n || !slices.Equal(got, want) {
		h.t.Fatalf("views reported: %d, last %v; want %d, last %v (kept)", m, got, n, want)
	}
	if g := h.metric("kvroute_discovery_members", "source", "dns"); g != float64(len(want)) {
		h.t.Fatalf("kvroute_discovery_members = %v, want %d", g, len(want))
	}
}

// Members appear and disappear with the A and AAAA records; only changes are reported,
// each a full sorted view of ready workers built from the template.
func TestARecordsAddedAndRemoved(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", false)
	z.Set(t, "w.test.", "A 10.0.0.2", "A 10.0.0.1")
	cfg := testConfig(srv.Addr, "w.test.")
	cfg.EventsPort, cfg.ReplayPort, cfg.Models = 5557, 5558, []string{"m"}
	h := run(t, cfg)

	h.waitView("10.0.0.1:8000", "10.0.0.2:8000")
	m := h.rec.lastView()[0]
	want := configs.Worker{ID: "10.0.0.1:8000", URL: "http://10.0.0.1:8000", Models: []string{"m"},
		Events: "tcp://10.0.0.1:5557", Replay: "tcp://10.0.0.1:5558", MaxConns: 16, DPRanks: 1}
	if !m.Ready || m.Worker.ID != want.ID || m.Worker.URL != want.URL || m.Worker.Events != want.Events ||
		m.Worker.Replay != want.Replay || m.Worker.MaxConns != want.MaxConns || !slices.Equal(m.Worker.Models, want.Models) {
		t.Fatalf("member = %+v, want ready %+v", m, want)
	}

	z.Set(t, "w.test.", "A 10.0.0.2", "A 10.0.0.1", "A 10.0.0.3", "AAAA 2001:db8::1")
	h.waitView("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "[2001:db8::1]:8000")
	if got := h.rec.lastView()[3].Worker; got.URL != "http://[2001:db8::1]:8000" || got.Events != "tcp://[2001:db8::1]:5557" {
		t.Fatalf("IPv6 member = %+v, want bracketed URL and events", got)
	}

	z.Set(t, "w.test.", "A 10.0.0.3", "AAAA 2001:db8::1")
	h.waitView("10.0.0.3:8000", "[2001:db8::1]:8000")

	// Unchanged answers report nothing more.
	h.waitLookups("ok", 3)
	h.checkKept(3, "10.0.0.3:8000", "[2001:db8::1]:8000")
	if e := h.lookups("error"); e != 0 {
		t.Fatalf("error lookups = %v, want 0", e)
	}
}

// SRV: one member per target address and record port; port 0, target "." and a target
// without addresses are skipped and counted; priority and weight do not matter.
func TestSRV(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", false)
	name := "_http._tcp.w.test."
	z.Set(t, name,
		"SRV 1 10 8000 a.test.", "SRV 2 0 8001 a.test.", "SRV 1 10 9000 b.test.",
		"SRV 1 10 0 c.test.", "SRV 1 10 9000 gone.test.", "SRV 1 10 8000 .",
		"SRV 1 10 8000 a.test.") // a duplicate
	z.Set(t, "a.test.", "A 10.0.1.2", "A 10.0.1.1")
	z.Set(t, "b.test.", "AAAA 2001:db8::2")
	z.Set(t, "c.test.", "A 10.0.1.3")
	cfg := testConfig(srv.Addr, name)
	cfg.Type, cfg.Port = "SRV", 0
	h := run(t, cfg)

	h.waitView("10.0.1.1:8000", "10.0.1.1:8001", "10.0.1.2:8000", "10.0.1.2:8001", "[2001:db8::2]:9000")
	if got := h.rec.lastView()[1].Worker.URL; got != "http://10.0.1.1:8001" {
		t.Fatalf("URL of 10.0.1.1:8001 = %q", got)
	}
	poll.CheckFor(t, wait, "rejections counted", func() bool {
		return h.rejected("bad_port") >= 1 && h.rejected("bad_address") >= 2
	})

	// A target moving to another address moves its members.
	z.Set(t, "b.test.", "A 10.0.1.9")
	h.waitView("10.0.1.1:8000", "10.0.1.1:8001", "10.0.1.2:8000", "10.0.1.2:8001", "10.0.1.9:9000")
	// A record removed removes its members.
	z.Set(t, name, "SRV 1 10 9000 b.test.")
	h.waitView("10.0.1.9:9000")
}

// Addresses no worker can have are skipped, counted at every lookup and logged once;
// an answer with nothing else keeps the last view.
func TestBadAddressesSkipped(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", false)
	z.Set(t, "w.test.", "A 0.0.0.0", "A 224.0.0.1", "A 255.255.255.255", "A 10.0.0.1",
		"AAAA ::", "AAAA ff02::1", "AAAA fe80::1", "AAAA ::ffff:0.0.0.0")
	h := run(t, testConfig(srv.Addr, "w.test."))

	h.waitView("10.0.0.1:8000")
	poll.CheckFor(t, wait, "three lookups' rejections", func() bool { return h.rejected("bad_address") >= 3*7 })
	// 0.0.0.0 twice in the answer (A and mapped AAAA) is one distinct value: 6 lines.
	if n := h.logs.count("record skipped"); n != 6 {
		t.Fatalf("%d \"record skipped\" log lines after several lookups, want 6 (once per distinct value):\n%s", n, h.logs.String())
	}

	z.Set(t, "w.test.", "A 0.0.0.0", "A 224.0.0.1")
	h.waitLookups("ok", 3)
	h.checkKept(1, "10.0.0.1:8000")
	if n := h.logs.count("no usable records"); n != 1 {
		t.Fatalf("%d \"no usable records\" log lines, want 1 per streak", n)
	}

	z.Set(t, "w.test.", "A 10.0.0.2")
	h.waitView("10.0.0.2:8000")
}

// A failed lookup keeps the last view: no update, the error counted, one warning per
// streak; the view follows the records again once lookups answer.
func TestLookupErrorsKeepView(t *testing.T) {
	for _, tc := range []struct {
		name string
		brk  func(t *testing.T, z *dnstest.Zone, s *dnstest.Server)
		fix  func(t *testing.T, z *dnstest.Zone, s *dnstest.Server)
		log  string
	}{
		{name: "server stopped",
			brk: func(_ *testing.T, _ *dnstest.Zone, s *dnstest.Server) { s.Stop() },
			fix: func(t *testing.T, z *dnstest.Zone, s *dnstest.Server) { dnstest.Start(t, z, s.Addr, false) },
			log: "lookup failed"},
		{name: "SERVFAIL",
			brk: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Fail("w.test.", mdns.RcodeServerFailure) },
			fix: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Fail("w.test.", mdns.RcodeSuccess) },
			log: "lookup failed"},
		// Without StrictErrors the resolver would return the A half alone and the IPv6
		// worker would leave the view.
		{name: "AAAA half SERVFAIL",
			brk: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) {
				z.Fail("w.test. aaaa", mdns.RcodeServerFailure)
			},
			fix: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Fail("w.test. aaaa", mdns.RcodeSuccess) },
			log: "lookup failed"},
		{name: "REFUSED",
			brk: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Fail("w.test.", mdns.RcodeRefused) },
			fix: func(_ *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Fail("w.test.", mdns.RcodeSuccess) },
			log: "lookup failed"},
		{name: "NXDOMAIN",
			brk: func(t *testing.T, z *dnstest.Zone, _ *dnstest.Server) { z.Set(t, "w.test.") },
			fix: func(*testing.T, *dnstest.Zone, *dnstest.Server) {},
			log: "no records"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			z := dnstest.NewZone()
			srv := dnstest.Start(t, z, "127.0.0.1:0", false)
			z.Set(t, "w.test.", "A 10.0.0.1", "AAAA 2001:db8::1")
			h := run(t, testConfig(srv.Addr, "w.test."))
			h.waitView("10.0.0.1:8000", "[2001:db8::1]:8000")

			tc.brk(t, z, srv)
			h.waitLookups("error", 3)
			h.checkKept(1, "10.0.0.1:8000", "[2001:db8::1]:8000")
			if n := h.logs.count(tc.log); n != 1 {
				t.Fatalf("%d %q log lines after 3 failed lookups, want 1 per streak:\n%s", n, tc.log, h.logs.String())
			}

			tc.fix(t, z, srv)
			z.Set(t, "w.test.", "A 10.0.0.1", "A 10.0.0.2")
			h.waitView("10.0.0.1:8000", "10.0.0.2:8000")
			if n := h.logs.count("lookups answer again"); n != 1 {
				t.Fatalf("%d recovery log lines, want 1", n)
			}
		})
	}
}

// An SRV lookup whose target fails (other than "no such host") fails as a whole:
// leaving the target out would remove its workers because of one timeout.
func TestSRVTargetFailureKeepsView(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", false)
	name := "_http._tcp.w.test."
	z.Set(t, name, "SRV 1 1 8000 a.test.", "SRV 1 1 8000 b.test.")
	z.Set(t, "a.test.", "A 10.0.1.1")
	z.Set(t, "b.test.", "A 10.0.1.2")
	cfg := testConfig(srv.Addr, name)
	cfg.Type, cfg.Port = "SRV", 0
	h := run(t, cfg)
	h.waitView("10.0.1.1:8000", "10.0.1.2:8000")

	z.Fail("b.test.", mdns.RcodeServerFailure)
	h.waitLookups("error", 3)
	h.checkKept(1, "10.0.1.1:8000", "10.0.1.2:8000")

	z.Fail("b.test.", mdns.RcodeSuccess)
	z.Set(t, "b.test.", "A 10.0.1.3")
	h.waitView("10.0.1.1:8000", "10.0.1.3:8000")
}

// A name with no records at the first lookup reports nothing until it has some.
func TestFirstLookupEmpty(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", false)
	h := run(t, testConfig(srv.Addr, "w.test."))
	h.waitLookups("error", 3)
	if _, n := h.rec.last(); n != 0 {
		t.Fatalf("%d views reported for a name without records, want 0", n)
	}
	z.Set(t, "w.test.", "A 0.0.0.0")
	h.waitLookups("ok", 2)
	if _, n := h.rec.last(); n != 0 {
		t.Fatalf("%d views reported for an answer without usable records, want 0", n)
	}
	z.Set(t, "w.test.", "A 10.0.0.1")
	h.waitView("10.0.0.1:8000")
}

// A truncated UDP answer is asked again over TCP, to the same configured server.
func TestTruncatedAnswerOverTCP(t *testing.T) {
	z := dnstest.NewZone()
	srv := dnstest.Start(t, z, "127.0.0.1:0", true)
	z.Set(t, "w.test.", "A 10.0.0.1")
	z.TCPOnly("w.test.")
	h := run(t, testConfig(srv.Addr, "w.test."))
	h.waitView("10.0.0.1:8000")
	if z.Queried("tcp", "w.test.") == 0 {
		t.Fatalf("no TCP query seen; the answer came over UDP")
	}
}

// Cancelling the context ends Run promptly, even in the middle of a lookup that would
// wait for its whole (long) timeout.
func TestCancelEndsRun(t *testing.T) {
	// A UDP socket that never answers: the lookup hangs until its timeout.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := testConfig(pc.LocalAddr().String(), "w.test.")
	cfg.Interval, cfg.Timeout = time.Hour, time.Hour
	s, err := New(cfg, Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func([]discovery.Member) { t.Error("update called") }) }()
	// Wait until the lookup is under way: the silent server got a query.
	buf := make([]byte, 512)
	if err := pc.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pc.ReadFrom(buf); err != nil {
		t.Fatalf("no query reached the silent server: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return within 2s of its context ending")
	}
}

// New refuses configs Run could not use, quoting the bad value.
func TestNewRejectsBadConfig(t *testing.T) {
	good := testConfig("127.0.0.1:53", "w.test.")
	for _, tc := range []struct {
		name   string
		edit   func(c *configs.DNSDiscovery)
		errHas string
	}{
		{"no name", func(c *configs.DNSDiscovery) { c.Name = "" }, "name is required"},
		{"unknown type", func(c *configs.DNSDiscovery) { c.Type = "MX" }, `"MX"`},
		{"A without port", func(c *configs.DNSDiscovery) { c.Port = 0 }, "port 0"},
		{"port too large", func(c *configs.DNSDiscovery) { c.Port = 70000 }, "port 70000"},
		{"zero interval", func(c *configs.DNSDiscovery) { c.Interval = 0 }, "interval 0s"},
		{"negative timeout", func(c *configs.DNSDiscovery) { c.Timeout = -time.Second }, "timeout -1s"},
		{"server without port", func(c *configs.DNSDiscovery) { c.Server = "127.0.0.1" }, `server "127.0.0.1"`},
		{"replay without events", func(c *configs.DNSDiscovery) { c.ReplayPort = 5558 }, "worker template"},
		{"bad scheme", func(c *configs.DNSDiscovery) { c.Scheme = "ftp" }, "worker template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			_, err := New(c, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("New = %v, want an error containing %q", err, tc.errHas)
			}
		})
	}
	for _, typ := range []string{"A", "a", "AAAA"} {
		c := good
		c.Type = typ
		if _, err := New(c, Options{}); err != nil {
			t.Errorf("New with type %q: %v", typ, err)
		}
	}
	c := good
	c.Type, c.Port = "srv", 0
	if _, err := New(c, Options{}); err != nil {
		t.Errorf("New with type srv: %v", err)
	}
}

func TestUnusable(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		usable bool
	}{
		{"10.0.0.1", true},
		{"127.0.0.1", true},
		{"169.254.1.1", true},
		{"2001:db8::1", true},
		{"::1", true},
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"255.255.255.255", false},
		{"::", false},
		{"ff02::1", false},
		{"ff05::2", false},
		{"fe80::1", false},
	} {
		why := discovery.Unusable(netip.MustParseAddr(tc.addr))
		if (why == "") != tc.usable {
			t.Errorf("unusable(%s) = %q, want usable %v", tc.addr, why, tc.usable)
		}
	}
	if discovery.Unusable(netip.Addr{}) == "" {
		t.Error("the zero Addr is usable")
	}
}

// The builder skips what fails configs.ValidateWorker, a bad port, and keeps the rest;
// New refuses such templates, so only the builder can be given one.
func TestBuilderRejects(t *testing.T) {
	cfg := testConfig("", "w.test.")
	cfg.EventsPort, cfg.DPRanks = 65535, 2 // rank 1 would publish on port 65536
	b := builder{cfg: &cfg, byID: map[string]discovery.Member{}}
	b.add(net.ParseIP("10.0.0.1"), 8000)
	b.add(net.IP{1, 2, 3}, 8000)
	cfg2 := testConfig("", "w.test.")
	b2 := builder{cfg: &cfg2, byID: map[string]discovery.Member{}}
	b2.add(net.ParseIP("10.0.0.1"), 0)
	b2.add(net.ParseIP("10.0.0.1"), 8000)
	b2.add(net.ParseIP("::ffff:10.0.0.1"), 8000) // the same address, mapped

	var reasons []string
	for _, r := range append(b.rejected, b2.rejected...) {
		reasons = append(reasons, r.reason)
	}
	want := []string{discovery.RejectInvalidWorker, discovery.RejectBadAddress, discovery.RejectBadPort}
	if !slices.Equal(reasons, want) {
		t.Fatalf("rejections %v, want %v", reasons, want)
	}
	if len(b.members()) != 0 || len(b2.members()) != 1 || b2.members()[0].Worker.ID != "10.0.0.1:8000" {
		t.Fatalf("members %v and %v, want none and 10.0.0.1:8000", b.members(), b2.members())
	}
}
