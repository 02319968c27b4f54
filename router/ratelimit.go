package router

import (
	"encoding/binary"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/kvroute/kvroute/configs"
)

// limiter is the optional token-bucket rate limit: one bucket per API key (its own rate
// or the fleet-wide one) when keys are configured, else one per client IP address
// (IPv6 per /64, the block one host usually holds). The per-IP table is bounded by
// rate_limit.max_clients: when a shard is full, entries whose bucket has refilled (idle
// clients, forgetting them changes nothing) are dropped first, then arbitrary ones (a
// dropped active client gets a fresh burst: the price of bounded memory). Safe for
// concurrent use.
type limiter struct {
	// now is the clock in nanoseconds, monotonic; tests replace it.
	now func() int64

	keys []keyBucket // by auth.keys index

	// rate and burst are the per-IP bucket's (0 rate: no per-IP limit).
	rate, burst float64
	maxPerShard int
	shards      [ipShards]ipShard
}

const ipShards = 16

type keyBucket struct {
	rate, burst float64 // 0 rate: this key is not limited
	// mu guards b.
	mu sync.Mutex
	b  bucket
}

type ipShard struct {
	// mu guards m.
	mu sync.Mutex
	m  map[netip.Addr]bucket
}

// bucket is a token bucket; a new one (zero last) is full.
type bucket struct {
	tokens float64
	last   int64 // clock reading of the last refill; 0: never used
}

// take refills b for the time since its last use and takes a token if there is one;
// otherwise it returns how long until one is there.
func (b *bucket) take(now int64, rate, burst float64) (bool, time.Duration) {
	if b.last == 0 {
		b.tokens = burst
	} else if dt := now - b.last; dt > 0 {
		b.tokens = math.Min(burst, b.tokens+float64(dt)*rate/1e9)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * 1e9)
}

// idle reports whether b would be full at now: dropping it changes nothing.
func (b *bucket) idle(now int64, rate, burst float64) bool {
	return b.tokens+float64(now-b.last)*rate/1e9 >= burst
}

// newLimiter returns the limiter of cfg, or nil when no rate is configured.
func newLimiter(cfg *configs.Config) *limiter {
	rl := cfg.RateLimit
	l := &limiter{maxPerShard: max(1, rl.MaxClients/ipShards)}
	limited := false
	if len(cfg.Auth.Keys) > 0 {
		l.keys = make([]keyBucket, len(cfg.Auth.Keys))
		for i, k := range cfg.Auth.Keys {
			rate, burst := rl.RequestsPerSecond, rl.Burst
			if k.RequestsPerSecond > 0 {
				rate, burst = k.RequestsPerSecond, k.Burst
			}
			if rate > 0 {
				l.keys[i].rate, l.keys[i].burst = rate, configs.BurstFor(rate, burst)
				limited = true
			}
		}
	} else if rl.RequestsPerSecond > 0 {
		l.rate, l.burst = rl.RequestsPerSecond, configs.BurstFor(rl.RequestsPerSecond, rl.Burst)
		for i := range l.shards {
			l.shards[i].m = map[netip.Addr]bucket{}
		}
		limited = true
	}
	if !limited {
		return nil
	}
	start := time.Now()
	l.now = func() int64 { return int64(time.Since(start)) + 1 } // never 0: 0 marks a new bucket
	return l
}

// allow takes a token for a request with the given key index (-1: keys are off, the
// client IP counts). When it refuses, wait is how long until a token is there.
func (l *limiter) allow(key int, ip net.IP) (ok bool, wait time.Duration) {
	now := l.now()
	if key >= 0 {
		kb := &l.keys[key]
		if kb.rate == 0 {
			return true, 0
		}
		kb.mu.Lock()
		ok, wait = kb.b.take(now, kb.rate, kb.burst)
		kb.mu.Unlock()
		return ok, wait
	}
	if l.rate == 0 {
		return true, 0
	}
	a := clientKey(ip)
	sh := &l.shards[shardOf(a)]
	sh.mu.Lock()
	b, found := sh.m[a]
	if !found && len(sh.m) >= l.maxPerShard {
		l.evict(sh, now)
	}
	ok, wait = b.take(now, l.rate, l.burst)
	sh.m[a] = b
	sh.mu.Unlock()
	return ok, wait
}

// evict makes room in a full shard: idle entries first; if none, an eighth of the
// shard, arbitrary ones (map order), so a table full of active clients costs one sweep
// per maxPerShard/8 new clients, not one per request. sh.mu must be held.
func (l *limiter) evict(sh *ipShard, now int64) {
	for a, b := range sh.m {
		if b.idle(now, l.rate, l.burst) {
			delete(sh.m, a)
		}
	}
	if len(sh.m) < l.maxPerShard {
		return
	}
	drop := max(1, l.maxPerShard/8)
	for a := range sh.m {
		delete(sh.m, a)
		if drop--; drop == 0 {
			break
		}
	}
}

// size returns the number of per-IP entries (for tests).
func (l *limiter) size() int {
	n := 0
	for i := range l.shards {
		l.shards[i].mu.Lock()
		n += len(l.shards[i].m)
		l.shards[i].mu.Unlock()
	}
	return n
}

// clientKey is the rate-limit identity of an address: IPv4 as is, IPv6 by /64.
func clientKey(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

func shardOf(a netip.Addr) int {
	b := a.As16()
	h := (binary.LittleEndian.Uint64(b[:8]) ^ binary.LittleEndian.Uint64(b[8:])) * 0x9E3779B97F4A7C15
	return int(h >> 60)
}

// retryAfterSeconds is the Retry-After value for a wait: whole seconds, at least 1.
func retryAfterSeconds(wait time.Duration) int64 {
	return max(1, int64(math.Ceil(wait.Seconds())))
}
