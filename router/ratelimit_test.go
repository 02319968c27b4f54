package router

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/configs"
)

func TestBucket(t *testing.T) {
	var b bucket
	const sec = int64(time.Second)
	now := int64(1)
	for i := range 3 {
		if ok, _ := b.take(now, 1, 3); !ok {
			t.Fatalf("request %d of a burst of 3 refused", i)
		}
	}
	ok, wait := b.take(now, 1, 3)
	if ok || wait != time.Second {
		t.Errorf("4th request: ok %v wait %v, want refused for 1s", ok, wait)
	}
	now += sec / 2
	if ok, wait := b.take(now, 1, 3); ok || wait != 500*time.Millisecond {
		t.Errorf("after 0.5s: ok %v wait %v, want refused for 0.5s", ok, wait)
	}
	now += sec / 2
	if ok, _ := b.take(now, 1, 3); !ok {
		t.Error("after 1s: refused")
	}
	now += 100 * sec // refills to the burst, not beyond
	for i := range 4 {
		if ok, _ := b.take(now, 1, 3); ok != (i < 3) {
			t.Errorf("after a long idle, request %d: ok %v", i, ok)
		}
	}
}

func testLimiter(t *testing.T, cfg configs.Config) (*limiter, *int64) {
	t.Helper()
	l := newLimiter(&cfg)
	if l == nil {
		t.Fatal("no limiter")
	}
	clock := int64(1)
	l.now = func() int64 { return clock }
	return l, &clock
}

func TestLimiterPerKey(t *testing.T) {
	cfg := configs.Default()
	cfg.RateLimit.RequestsPerSecond = 100
	cfg.Auth.Keys = []configs.APIKey{{Name: "slow", RequestsPerSecond: 0.5, Burst: 2}, {Name: "fleet"}}
	l, _ := testLimiter(t, cfg)
	ip := net.IPv4(10, 0, 0, 1)
	for i := range 3 {
		ok, wait := l.allow(0, ip)
		if ok != (i < 2) {
			t.Errorf("slow key request %d: ok %v", i, ok)
		}
		if !ok && wait != 2*time.Second {
			t.Errorf("slow key wait %v, want 2s", wait)
		}
	}
	for i := range 100 {
		if ok, _ := l.allow(1, ip); !ok {
			t.Fatalf("fleet-rate key refused at request %d of a burst of 100", i)
		}
	}
	if ok, _ := l.allow(1, ip); ok {
		t.Error("fleet-rate key: request 101 accepted")
	}
	if l.size() != 0 {
		t.Errorf("per-key limiting filled the per-IP table: %d", l.size())
	}
}

func TestLimiterPerIPTableBounded(t *testing.T) {
	cfg := configs.Default()
	cfg.RateLimit = configs.RateLimit{RequestsPerSecond: 1, Burst: 2, MaxClients: 256}
	l, clock := testLimiter(t, cfg)
	ip := func(i int) net.IP { return net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)) }
	// Fill the table, then let every entry refill: they are all idle.
	for i := range 5000 {
		l.allow(-1, ip(i))
		if n := l.size(); n > 256 {
			t.Fatalf("table holds %d entries after %d clients, bound 256", n, i+1)
		}
	}
	*clock += int64(10 * time.Second)
	// An active client drains its bucket, then new clients push the idle ones out.
	active := net.IPv4(192, 168, 0, 1)
	for range 2 {
		l.allow(-1, active)
	}
	for i := range 200 {
		l.allow(-1, ip(100000+i))
	}
	if ok, _ := l.allow(-1, active); ok {
		t.Error("the active client's drained bucket was evicted while idle entries remained")
	}
	if n := l.size(); n > 256 {
		t.Errorf("table holds %d entries, bound 256", n)
	}
	// IPv6 clients count per /64.
	a, b := net.ParseIP("2001:db8:1:2::1"), net.ParseIP("2001:db8:1:2:ffff::9")
	l.allow(-1, a)
	l.allow(-1, a)
	if ok, _ := l.allow(-1, b); ok {
		t.Error("two addresses of one IPv6 /64 have separate buckets")
	}
	if ok, _ := l.allow(-1, net.ParseIP("2001:db8:1:3::1")); !ok {
		t.Error("another /64 shares the bucket")
	}
}

func TestRateLimitAnswers429(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := authConfig(t, fw)
	cfg.Auth.Keys[0].RequestsPerSecond, cfg.Auth.Keys[0].Burst = 0.2, 2 // a: 2 now, then one per 5 s
	tr := startRouter(t, cfg)
	addr := strings.TrimPrefix(tr.url, "http://")
	for i := range 2 {
		if resp, body := rawRequest(t, addr, "POST", "/v1/chat/completions", chatBody, "Authorization", "Bearer key-aaaa-1111"); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body := rawRequest(t, addr, "POST", "/v1/chat/completions", chatBody, "Authorization", "Bearer key-aaaa-1111")
	checkOpenAIError(t, resp, body, 429, "rate_limit_exceeded")
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 4 || ra > 5 {
		t.Errorf("Retry-After = %q, want 4 or 5 s", resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(string(body), `"type":"requests","param":null,"code":"rate_limit_exceeded"`) {
		t.Errorf("body %s", body)
	}
	// Key b has no limit; key a's limit does not touch it.
	for i := range 5 {
		if resp, _ := rawRequest(t, addr, "POST", "/v1/chat/completions", chatBody, "api-key", "key-bbbb-2222"); resp.StatusCode != 200 {
			t.Fatalf("key b request %d: %d", i, resp.StatusCode)
		}
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonRateLimited]); v != 1 {
		t.Errorf("rejected{rate_limited} = %v, want 1", v)
	}
	if fw.requests.Load() != 7 {
		t.Errorf("worker got %d requests, want 7", fw.requests.Load())
	}
}

func TestRateLimitPerClientIPWithoutKeys(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	cfg.RateLimit.RequestsPerSecond, cfg.RateLimit.Burst = 0.1, 1
	tr := startRouter(t, cfg)
	addr := strings.TrimPrefix(tr.url, "http://")
	if resp, _ := rawRequest(t, addr, "POST", "/v1/chat/completions", chatBody); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	resp, body := rawRequest(t, addr, "POST", "/v1/chat/completions", chatBody)
	checkOpenAIError(t, resp, body, 429, "rate_limit_exceeded")
	if resp, _ := rawRequest(t, addr, "GET", "/health", ""); resp.StatusCode != 200 {
		t.Errorf("/health is rate limited: %d", resp.StatusCode)
	}
}
