package valkeyindex

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valkey-io/valkey-go"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
)

// Defaults of [Options] fields left zero.
const (
	// DefaultPrefix starts every key the backend writes.
	DefaultPrefix = "kvroute:"
	// DefaultTimeout bounds one Match round trip; past it Match answers from the
	// process's own entries.
	DefaultTimeout = 50 * time.Millisecond
	// DefaultMaxWorkers bounds the workers a Match reply may name.
	DefaultMaxWorkers = 4096
	// DefaultMaxMatchBlocks bounds the blocks of a request a Match asks for: a longer
	// request is matched on its first DefaultMaxMatchBlocks blocks (131,072 tokens at
	// block size 16).
	DefaultMaxMatchBlocks = 8192
	// DefaultMaxPending bounds the changes queued for writing; past it they are dropped
	// and the whole copy is rewritten once the server answers (see the package doc).
	DefaultMaxPending = 1 << 20
)

// opsPerScript is how many changes one write script call carries; a flush pipelines as
// many calls as it needs.
const opsPerScript = 512

// Options configures an [Index].
type Options struct {
	// URL is the server, redis://[user:password@]host:port[/db] (or rediss://, valkey://).
	URL string
	// Prefix starts every key; processes that share an index use the same prefix.
	// "" means DefaultPrefix.
	Prefix string
	// Timeout bounds one Match round trip; 0 means DefaultTimeout.
	Timeout time.Duration
	// MaxWorkers bounds the workers one Match reply may name; 0 means DefaultMaxWorkers.
	MaxWorkers int
	// MaxMatchBlocks bounds the blocks of a request Match sends; 0 means
	// DefaultMaxMatchBlocks.
	MaxMatchBlocks int
	// MaxPending bounds the queued changes; 0 means DefaultMaxPending.
	MaxPending int
	// Local configures the process's own index (its ingested events and predictions);
	// its Mirror is set by New.
	Local indexer.Options
	// Registerer receives kvroute_index_backend_errors_total (and the local index's
	// metrics); nil registers none.
	Registerer prometheus.Registerer
	// Logger receives the outage and recovery lines; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock (prediction expiry); nil means time.Now.
	Now func() time.Time
}

// Index is the prefix index kept in a Valkey (or Redis) server and shared by every
// process using the same server and prefix. The methods that change the index apply to
// the process's own *indexer.Index (embedded) and queue the changes for the server,
// written in the background in pipelined batches; Match asks the server in one round
// trip, and answers from the own index while the server is unreachable. All methods
// are safe for concurrent use. An Index must not be copied.
type Index struct {
	*indexer.Index
	opts      Options
	cl        atomic.Value // valkey.Client; unset while the server was down since New
	now       func() time.Time
	keys      metaKeys
	m         matcher
	names     atomic.Pointer[slotNames] // the slot table as last read, nil before
	log       *slog.Logger
	errs      *prometheus.CounterVec
	kick      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	// wmu serializes the writers (Run's steps, Flush), so changes reach the server in
	// order.
	wmu sync.Mutex
	// pmu guards pending, dropped and ingested.
	pmu      sync.Mutex
	pending  []op
	dropped  bool                     // changes were dropped: rewrite everything
	ingested map[proto.WorkerKey]bool // workers whose events this process applies

	down    atomic.Bool  // the server failed and the copy has not been rewritten since
	lastLog atomic.Int64 // unix ns of the last outage log line
	errN    atomic.Int64 // errors since the last log line
}

// op is one queued write: a change of (worker, block) or an epoch bump.
type op struct {
	w    proto.WorkerKey
	own  proto.BlockHash
	tier int8  // -1 leave, 0 delete, > 0 flags; -2 bump events epoch, -3 bump both, -4 bump both and free the slot
	pred int64 // -1 leave, 0 delete, > 0 expiry unix s (rounded up)
}

// New connects to the server (the client reconnects on its own; a server down at start
// only delays the shared copy) and returns the index. Call Run to write in the
// background and recover after outages, and Close at the end.
func New(opts Options) (*Index, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxWorkers <= 0 {
		opts.MaxWorkers = DefaultMaxWorkers
	}
	if opts.MaxMatchBlocks <= 0 {
		opts.MaxMatchBlocks = DefaultMaxMatchBlocks
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	co, err := valkey.ParseURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("valkey url: %w", err)
	}
	co.DisableCache = true // client-side caching would need invalidations for every block key
	co.Dialer.Timeout = time.Second
	co.ConnWriteTimeout = 10 * time.Second // a write batch of many script calls may take seconds on a busy server
	co.ForceSingleClient = true
	// Do not let a down server block New: it connects lazily when it can.
	v := &Index{
		opts: opts, now: opts.Now, log: opts.Logger,
		keys: newMetaKeys(opts.Prefix),
		kick: make(chan struct{}, 1), done: make(chan struct{}),
		ingested: map[proto.WorkerKey]bool{},
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	if c, err := valkey.NewClient(co); err != nil {
		// valkey-go dials at once; a down server is an outage like any other.
		v.log.Warn("index backend valkey: cannot connect at start; matching on this process's entries until it answers", "url", redactURL(opts.URL), "err", err)
		v.down.Store(true)
	} else {
		v.cl.Store(c)
	}
	local := opts.Local
	local.Mirror = v
	if local.Now == nil {
		local.Now = opts.Now
	}
	local.Registerer = opts.Registerer
	if v.Index, err = indexer.New(local); err != nil {
		v.Close()
		return nil, err
	}
	count, conf := v.MatchMasks()
	v.m = newMatcher(count, conf, v.BlockWeight, opts.MaxWorkers)
	v.errs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_index_backend_errors_total",
		Help: "Failed calls to the shared index backend (Valkey), by operation: match (answered from the process's own entries instead), write (queued changes lost until the copy is rewritten), resync, connect.",
	}, []string{"op"})
	for _, o := range []string{"match", "write", "resync", "connect"} {
		v.errs.WithLabelValues(o)
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(v.errs); err != nil {
			v.Close()
			return nil, fmt.Errorf("valkeyindex metrics: %w", err)
		}
	}
	v.pmu.Lock()
	v.dropped = true // the first flush rewrites what the server holds for this process's workers
	v.pmu.Unlock()
	return v, nil
}

// redactURL hides a password in url for logs.
func redactURL(u string) string {
	if at := strings.LastIndexByte(u, '@'); at >= 0 {
		if s := strings.Index(u, "://"); s >= 0 && s < at {
			return u[:s+3] + "***" + u[at:]
		}
	}
	return u
}

// Close closes the connection. Queued changes not yet written are lost.
func (v *Index) Close() {
	v.closeOnce.Do(func() {
		if c := v.client(); c != nil {
			c.Close()
		}
	})
}

// client returns the connection, nil while the server was down since New.
func (v *Index) client() valkey.Client {
	c, _ := v.cl.Load().(valkey.Client)
	return c
}

// Down reports whether the server is considered unreachable (Match answers from the
// process's own entries).
func (v *Index) Down() bool { return v.down.Load() }

// blockKey is the server key of block h.
func (v *Index) blockKey(h proto.BlockHash) string {
	return string(v.appendBlockKey(make([]byte, 0, len(v.opts.Prefix)+10), h))
}

// appendBlockKey appends the server key of block h to b: the prefix, "k:", the hash
// as 8 big-endian bytes.
func (v *Index) appendBlockKey(b []byte, h proto.BlockHash) []byte {
	b = append(b, v.opts.Prefix...)
	b = append(b, "k:"...)
	return binary.BigEndian.AppendUint64(b, uint64(h))
}

// workerField names w in fields and epoch hashes: "<dp rank>:<id>".
func workerField(w proto.WorkerKey) string { return strconv.Itoa(w.DPRank) + ":" + w.ID }

func parseWorkerField(s string) (proto.WorkerKey, bool) {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return proto.WorkerKey{}, false
	}
	r, err := strconv.Atoi(s[:i])
	if err != nil || r < 0 {
		return proto.WorkerKey{}, false
	}
	return proto.WorkerKey{ID: s[i+1:], DPRank: r}, true
}

// Record implements indexer.Mirror: it queues the change (called with the local index's
// lock held; never blocks).
func (v *Index) Record(w proto.WorkerKey, own proto.BlockHash, old, flags uint8, predExp int64) {
	o := op{w: w, own: own, tier: -1, pred: -1}
	if ot, nt := old&indexer.TierFlags, flags&indexer.TierFlags; ot != nt {
		o.tier = int8(nt)
	}
	switch {
	case flags&indexer.FlagPredicted != 0:
		o.pred = predSeconds(predExp)
	case old&indexer.FlagPredicted != 0:
		o.pred = 0
	}
	if o.tier == -1 && o.pred == -1 {
		return
	}
	v.enqueue(o)
}

func (v *Index) enqueue(o op) {
	v.pmu.Lock()
	if len(v.pending) >= v.opts.MaxPending {
		v.pending, v.dropped = v.pending[:0], true
	} else if !v.dropped {
		v.pending = append(v.pending, o)
	}
	v.pmu.Unlock()
}

// signal wakes the writer.
func (v *Index) signal() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// Apply applies the batch to the process's own index and queues the changes.
func (v *Index) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	if b == nil {
		return
	}
	k := w
	if b.DPRank >= 0 {
		k.DPRank = b.DPRank
	}
	v.markIngested(k)
	v.Index.Apply(w, model, b)
	v.signal()
}

func (v *Index) markIngested(w proto.WorkerKey) {
	v.pmu.Lock()
	v.ingested[w] = true
	v.pmu.Unlock()
}

// Predict records the prediction in the process's own index and queues it.
func (v *Index) Predict(w proto.WorkerKey, hashes []proto.BlockHash, ttl time.Duration) {
	v.Index.Predict(w, hashes, ttl)
	v.signal()
}

// ClearWorker clears w, then bumps both its epochs on the server, so what any process
// wrote for w before (events and predictions) stops counting.
func (v *Index) ClearWorker(w proto.WorkerKey) {
	v.Index.ClearWorker(w)
	v.enqueue(op{w: w, tier: -3})
	v.signal()
}

// ClearEvents clears w's event-backed entries, then bumps its events epoch on the
// server: predictions stay.
func (v *Index) ClearEvents(w proto.WorkerKey) {
	v.markIngested(w)
	v.Index.ClearEvents(w)
	v.enqueue(op{w: w, tier: -2})
	v.signal()
}

// RemoveWorker forgets w here and, through both epochs, on the server.
func (v *Index) RemoveWorker(w proto.WorkerKey) {
	v.Index.RemoveWorker(w)
	v.enqueue(op{w: w, tier: -4})
	v.pmu.Lock()
	delete(v.ingested, w)
	v.pmu.Unlock()
	v.signal()
}

// Restore loads a dump into the process's own index and rewrites the process's part of
// the server's copy.
func (v *Index) Restore(r io.Reader) error {
	err := v.Index.Restore(r)
	v.pmu.Lock()
	v.dropped = true
	v.pmu.Unlock()
	v.signal()
	return err
}

// Match reads the request's block values from the server in one round trip (one MGET;
// a second one only when the slot table changed since the last Match) and computes the
// overlaps from them (see the package doc). It answers from the process's own index
// when the server is down or fails (counted in
// kvroute_index_backend_errors_total{op="match"}). Unlike *indexer.Index.Match it
// allocates.
func (v *Index) Match(hashes []proto.BlockHash, dst []indexer.WorkerMatch) []indexer.WorkerMatch {
	if len(hashes) == 0 {
		return dst[:0]
	}
	c := v.client()
	if v.down.Load() || c == nil {
		return v.Index.Match(hashes, dst)
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.opts.Timeout)
	defer cancel()
	out, err := v.matchRemote(ctx, c, hashes, dst[:0])
	if err != nil {
		v.fail("match", err)
		return v.Index.Match(hashes, dst)
	}
	return out
}

// fail counts an error of op and logs it at most once every 10 s, with the count of
// errors since the last line; the server is then considered down until Run has
// rewritten the copy.
func (v *Index) fail(op string, err error) {
	v.errs.WithLabelValues(op).Inc()
	v.errN.Add(1)
	first := !v.down.Swap(true)
	now := time.Now().UnixNano()
	last := v.lastLog.Load()
	if first || now-last >= int64(10*time.Second) {
		if v.lastLog.CompareAndSwap(last, now) {
			v.log.Warn("index backend valkey unreachable: routing on this process's entries (its workers' events, its predictions) and load until it answers",
				"op", op, "err", err, "errors", v.errN.Swap(0))
		}
	}
}

// Run runs the local index's maintenance and the writer until ctx ends: it writes the
// queued changes in pipelined batches as they come, and while the server is down pings
// it every interval (1 s when <= 0); once it answers, it rewrites this process's part of
// the copy (see the package doc) and Match uses the server again.
func (v *Index) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	go v.Index.Run(ctx, interval)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		v.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-v.kick:
		case <-t.C:
		}
	}
}

// step writes what is queued, or recovers the server.
func (v *Index) step(ctx context.Context) {
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if v.client() == nil {
		if !v.connect() {
			return
		}
	}
	v.pmu.Lock()
	dropped := v.dropped
	v.pmu.Unlock()
	if dropped || v.down.Load() {
		v.resync(ctx)
		return
	}
	v.pmu.Lock()
	ops := v.pending
	v.pending = nil
	v.pmu.Unlock()
	if len(ops) == 0 {
		return
	}
	if err := v.write(ctx, ops); err != nil {
		v.fail("write", err)
		v.pmu.Lock()
		v.dropped = true
		v.pmu.Unlock()
	}
}

// connect retries the client when the server was down at start.
func (v *Index) connect() bool {
	co, err := valkey.ParseURL(v.opts.URL)
	if err != nil {
		return false
	}
	co.DisableCache, co.Dialer.Timeout, co.ConnWriteTimeout, co.ForceSingleClient = true, time.Second, 10*time.Second, true
	c, err := valkey.NewClient(co)
	if err != nil {
		v.fail("connect", err)
		return false
	}
	v.cl.Store(c)
	return true
}

// resync rewrites this process's part of the server's copy from its own index (wmu
// must be held): for each
// worker whose events it applies, a bump of the worker's events epoch (so entries whose
// removal was lost stop counting) and every entry; for the others, its predictions.
func (v *Index) resync(ctx context.Context) {
	c := v.client()
	pctx, cancel := context.WithTimeout(ctx, v.opts.Timeout+time.Second)
	err := c.Do(pctx, c.B().Ping().Build()).Error()
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			v.fail("resync", err)
		}
		return
	}
	v.pmu.Lock()
	v.pending, v.dropped = nil, false // what they said is in the entries read below
	ingested := make(map[proto.WorkerKey]bool, len(v.ingested))
	for k := range v.ingested {
		ingested[k] = true
	}
	v.pmu.Unlock()
	var (
		ops     []op
		entries []indexer.Entry
		n       int
	)
	for _, ws := range v.Index.Stats().Workers {
		w := ws.Worker
		entries = v.AppendEntries(w, entries[:0])
		ops = ops[:0]
		if ingested[w] {
			ops = append(ops, op{w: w, tier: -2})
		}
		for _, e := range entries {
			o := op{w: w, own: e.Own, tier: -1, pred: -1}
			if t := e.Flags & indexer.TierFlags; t != 0 && ingested[w] {
				o.tier = int8(t)
			}
			if e.Flags&indexer.FlagPredicted != 0 {
				o.pred = predSeconds(e.PredExp)
			}
			if o.tier != -1 || o.pred != -1 {
				ops = append(ops, o)
			}
		}
		if err := v.write(ctx, ops); err != nil {
			v.fail("resync", err)
			v.pmu.Lock()
			v.dropped = true
			v.pmu.Unlock()
			return
		}
		n += len(ops)
	}
	if v.down.Swap(false) {
		v.log.Info("index backend valkey answers again: this process's entries rewritten", "ops", n)
	}
}

// write sends ops in order (wmu must be held), opsPerScript per script call, all calls pipelined.
func (v *Index) write(ctx context.Context, ops []op) error {
	if len(ops) == 0 {
		return nil
	}
	now := strconv.FormatInt(v.now().UnixMilli(), 10)
	execs := make([]valkey.LuaExec, 0, (len(ops)+opsPerScript-1)/opsPerScript)
	for len(ops) > 0 {
		chunk := ops[:min(len(ops), opsPerScript)]
		ops = ops[len(chunk):]
		keys := make([]string, 0, len(chunk)+len(v.keys))
		keys = append(keys, v.keys[:]...)
		args := make([]string, 1, 1+3*len(chunk))
		args[0] = now
		for _, o := range chunk {
			if o.tier <= -2 {
				keys = append(keys, v.keys[keyEpochs])
			} else {
				keys = append(keys, v.blockKey(o.own))
			}
			args = append(args, workerField(o.w), strconv.Itoa(int(o.tier)), strconv.FormatInt(o.pred, 10))
		}
		execs = append(execs, valkey.LuaExec{Keys: keys, Args: args})
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, r := range writeScript.ExecMulti(wctx, v.client(), execs...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

// Flush writes every change queued so far and returns the first error: for tests and
// tools that need the server's copy to be current (Run writes on its own otherwise).
func (v *Index) Flush(ctx context.Context) error {
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if v.client() == nil && !v.connect() {
		return errors.New("valkeyindex: not connected")
	}
	v.pmu.Lock()
	dropped := v.dropped
	v.pmu.Unlock()
	if dropped || v.down.Load() {
		v.resync(ctx)
		if v.down.Load() {
			return errors.New("valkeyindex: server unreachable")
		}
		return nil
	}
	v.pmu.Lock()
	ops := v.pending
	v.pending = nil
	v.pmu.Unlock()
	return v.write(ctx, ops)
}

var (
	_ indexer.Backend = (*Index)(nil)
	_ indexer.Mirror  = (*Index)(nil)
)
