package replica

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/upstream"
)

// DefaultSubjectPrefix is the prefix of the replica subjects.
const DefaultSubjectPrefix = "kvroute.replica"

// Options configure a [Sync]. Conn and Pool are required.
type Options struct {
	// Conn is the NATS connection; the caller owns it (closes it after Run returns).
	Conn *nats.Conn
	// Pool holds the workers: their counters are this replica's load, published; their
	// ids are the workers whose remote load and predictions are accepted.
	Pool *upstream.Pool
	// Index receives other replicas' predictions and serves and restores index dumps;
	// nil disables both.
	Index indexer.Backend
	// ID names this replica, unique in its cluster; "" means a random one.
	ID string
	// Cluster names the group of replicas acting as one; default "default".
	Cluster string
	// SubjectPrefix is the subject prefix; default DefaultSubjectPrefix.
	SubjectPrefix string
	// FlushInterval is the shortest time between two state messages: changes within it
	// are coalesced into one. Default 5ms.
	FlushInterval time.Duration
	// Heartbeat is the period of full state messages. Default 1s.
	Heartbeat time.Duration
	// ExpireAfter drops a peer not heard from for this long, with its load; default 3 x
	// Heartbeat. It must be longer than every peer's Heartbeat (replicas of a cluster
	// should share one configuration).
	ExpireAfter time.Duration
	// PredictionTTL is the lifetime of a prediction received from a peer; 0 means the
	// index's default.
	PredictionTTL time.Duration
	// MaxPeers bounds the peers tracked; default 64.
	MaxPeers int
	// MaxPending bounds the encoded predictions waiting to be published, in bytes;
	// predictions beyond it are dropped (and counted). Default 256 KiB, and at most half
	// the NATS server's max payload.
	MaxPending int
	// MaxDumpBytes bounds an index dump received at warm start; default 1 GiB.
	MaxDumpBytes int64
	// Registerer receives the kvroute_replica_* metrics; nil disables registration.
	Registerer prometheus.Registerer
	// Logger logs peers joining and leaving; nil discards.
	Logger *slog.Logger
}

// Sync shares this router's load and routing decisions with the other replicas of its
// cluster and keeps theirs. Create it with [New], optionally call [Sync.WarmStart],
// then [Sync.Run]; the router reads [Sync.Remote] and calls [Sync.Changed] and
// [Sync.Predicted]. Safe for concurrent use; must not be copied.
type Sync struct {
	opts        Options
	nc          *nats.Conn
	id          string
	inc         uint64
	subject     string
	dumpSubject string
	log         *slog.Logger
	m           *metrics
	wake        chan struct{}
	// subscribed is closed once Run's subscriptions are registered with the server.
	subscribed chan struct{}

	// remote holds the sum over live peers of each worker's load, for the pool's
	// members. The map is never modified: a worker that joins gets its entry in a copy
	// (remoteAt) and one that leaves is dropped in a copy (Forget), both with recvMu held,
	// so readers need no lock.
	remote atomic.Pointer[map[string]*remoteLoad]

	// mu guards pend and nPend, the encoded predictions not yet published, and
	// maxPending, their bound in bytes.
	mu         sync.Mutex
	pend       []byte
	nPend      int
	maxPending int
	// Also guarded by mu: the encoded stored responses not yet published (within
	// maxPending too).
	pendResp []byte
	nResp    int

	// responses receives the peers' stored responses (SetResponseSink); nil drops them.
	responses atomic.Pointer[func(id, worker, model string)]

	// Run's goroutine only: what was last published per worker, the sequence number,
	// buffers, and whether the next message must be a full one.
	sent      map[string]Load
	seq       uint64
	spare     []byte
	spareResp []byte
	loadBuf   []byte
	msgBuf    []byte
	forceFull bool

	// recvMu guards peers and msg (the decode target); held while a message is applied
	// and while peers expire.
	recvMu sync.Mutex
	peers  map[string]*peer
	msg    Message
	dupLog atomic.Bool
}

// peer is another replica as last heard from.
type peer struct {
	inc   uint64
	seq   uint64
	last  time.Time
	loads map[string]Load // its last reported load per worker (non-zero entries)
	spare map[string]Load
}

// remoteLoad is the sum of the peers' loads on one worker.
type remoteLoad struct {
	inFlight, prefill, blocks atomic.Int64
}

func (r *remoteLoad) add(d Load) {
	if d.InFlight != 0 {
		r.inFlight.Add(d.InFlight)
	}
	if d.PrefillTokens != 0 {
		r.prefill.Add(d.PrefillTokens)
	}
	if d.Blocks != 0 {
		r.blocks.Add(d.Blocks)
	}
}

func (l Load) sub(o Load) Load {
	return Load{InFlight: l.InFlight - o.InFlight, PrefillTokens: l.PrefillTokens - o.PrefillTokens, Blocks: l.Blocks - o.Blocks}
}

// New returns a Sync on opts.Conn; nothing is sent or received until Run.
func New(opts Options) (*Sync, error) {
	if opts.Conn == nil || opts.Pool == nil {
		return nil, errors.New("replica: Conn and Pool are required")
	}
	if opts.ID == "" {
		opts.ID = "r-" + randomHex(6)
	}
	if opts.Cluster == "" {
		opts.Cluster = "default"
	}
	if opts.SubjectPrefix == "" {
		opts.SubjectPrefix = DefaultSubjectPrefix
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 5 * time.Millisecond
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = time.Second
	}
	if opts.ExpireAfter <= 0 {
		opts.ExpireAfter = 3 * opts.Heartbeat
	}
	if opts.ExpireAfter <= opts.Heartbeat {
		return nil, fmt.Errorf("replica: expire after %v must be longer than the heartbeat %v", opts.ExpireAfter, opts.Heartbeat)
	}
	if opts.MaxPeers <= 0 {
		opts.MaxPeers = 64
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 256 << 10
	}
	if opts.MaxDumpBytes <= 0 {
		opts.MaxDumpBytes = 1 << 30
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.ID) > maxIDLen || strings.ContainsAny(opts.Cluster, " \t.*>") || opts.Cluster == "" {
		return nil, fmt.Errorf("replica: bad id %q or cluster %q", opts.ID, opts.Cluster)
	}
	s := &Sync{
		opts: opts, nc: opts.Conn, id: opts.ID, log: opts.Logger,
		subject:     opts.SubjectPrefix + "." + opts.Cluster + ".state",
		dumpSubject: opts.SubjectPrefix + "." + opts.Cluster + ".dump",
		wake:        make(chan struct{}, 1),
		subscribed:  make(chan struct{}),
		sent:        map[string]Load{},
		peers:       map[string]*peer{},
		maxPending:  opts.MaxPending,
		forceFull:   true,
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.inc = binary.LittleEndian.Uint64(b[:])
	remote := map[string]*remoteLoad{}
	for _, w := range opts.Pool.Workers() {
		remote[w.ID] = &remoteLoad{}
	}
	s.remote.Store(&remote)
	m, err := newMetrics(opts.Registerer, s)
	if err != nil {
		return nil, err
	}
	s.m = m
	return s, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ID returns the replica's id.
func (s *Sync) ID() string { return s.id }

// Remote returns the load other replicas report on worker id (zero for an unknown id).
// It does not allocate or lock.
func (s *Sync) Remote(id string) Load {
	r := (*s.remote.Load())[id]
	if r == nil {
		return Load{}
	}
	return Load{InFlight: max(0, r.inFlight.Load()), PrefillTokens: max(0, r.prefill.Load()), Blocks: max(0, r.blocks.Load())}
}

// Changed tells the publisher that this router's load changed (a request was routed):
// the next state message goes out within FlushInterval. It never blocks.
func (s *Sync) Changed() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Predicted queues a routing decision for the other replicas: worker is expected to
// hold hashes. It never blocks; when the pending buffer is full (NATS slow or down) the
// prediction is dropped and counted. hashes is copied.
func (s *Sync) Predicted(worker string, hashes []proto.BlockHash) {
	if len(hashes) == 0 {
		return
	}
	need := len(worker) + 2*binary.MaxVarintLen64 + 8*len(hashes)
	s.mu.Lock()
	if len(s.pend)+len(s.pendResp)+need > s.maxPending {
		s.mu.Unlock()
		s.m.dropBuffer.Inc()
		return
	}
	s.pend = appendPrediction(s.pend, worker, hashes)
	s.nPend++
	s.mu.Unlock()
	s.Changed()
}

// StoredResponse queues a stored response for the other replicas: worker holds the
// Responses API response id (of model), so they route requests naming it there too. It
// never blocks; when the pending buffer is full the record is dropped and counted, and
// a peer asked for the id answers 404 response_not_found as for any id it never saw.
func (s *Sync) StoredResponse(id, worker, model string) {
	if len(id) > maxIDLen || len(worker) > maxIDLen || len(model) > maxIDLen {
		s.m.dropBuffer.Inc()
		return
	}
	r := StoredResponse{ID: id, Worker: worker, Model: model}
	s.mu.Lock()
	if len(s.pend)+len(s.pendResp)+len(id)+len(worker)+len(model)+3*binary.MaxVarintLen64 > s.maxPending {
		s.mu.Unlock()
		s.m.dropBuffer.Inc()
		return
	}
	s.pendResp = appendResponse(s.pendResp, &r)
	s.nResp++
	s.mu.Unlock()
	s.Changed()
}

// SetResponseSink sets the function that receives the peers' stored responses (id,
// the worker holding it, its model), called on the NATS delivery goroutine for the
// workers of this replica's pool; nil drops them. Safe to call at any time.
func (s *Sync) SetResponseSink(f func(id, worker, model string)) {
	if f == nil {
		s.responses.Store(nil)
		return
	}
	s.responses.Store(&f)
}

// Peers returns the ids of the peers currently heard from.
func (s *Sync) Peers() []string {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	out := make([]string, 0, len(s.peers))
	for id := range s.peers {
		out = append(out, id)
	}
	return out
}

// Subscribed is closed once [Sync.Run] has registered its subscriptions with the NATS
// server: from then on it receives the peers' messages and answers dump requests.
func (s *Sync) Subscribed() <-chan struct{} { return s.subscribed }

// Run publishes this replica's state and applies the others' until ctx ends (then it
// returns nil), or fails to subscribe. Run must be called at most once. A NATS outage does not end it: publishes fail
// (counted) and the connection reconnects on its own; the next message is a full one.
func (s *Sync) Run(ctx context.Context) error {
	if mp := s.nc.MaxPayload(); mp > 0 {
		s.mu.Lock()
		s.maxPending = min(s.maxPending, int(mp)/2)
		s.mu.Unlock()
	}
	sub, err := s.nc.Subscribe(s.subject, func(msg *nats.Msg) { s.apply(msg.Data, time.Now()) })
	if err != nil {
		return fmt.Errorf("replica: subscribe %s: %w", s.subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, 64<<20)
	if s.opts.Index != nil {
		dsub, err := s.nc.QueueSubscribe(s.dumpSubject, "kvroute-replica-dump", s.serveDump)
		if err != nil {
			return fmt.Errorf("replica: subscribe %s: %w", s.dumpSubject, err)
		}
		defer func() { _ = dsub.Unsubscribe() }()
	}
	// A flush round-trips to the server, so peers' messages and dump requests sent from
	// now on reach this replica.
	if err := s.nc.Flush(); err != nil {
		s.log.Warn("replica sync: flush after subscribing", "err", err)
	}
	close(s.subscribed)
	s.log.Info("replica sync running", "id", s.id, "subject", s.subject)

	reap := time.NewTicker(s.opts.ExpireAfter / 4)
	defer reap.Stop()
	t := time.NewTimer(0)
	defer t.Stop()
	var last time.Time
	nextBeat := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-reap.C:
			s.expire(now)
			continue
		case <-s.wake:
		case <-t.C:
		}
		now := time.Now()
		if d := s.opts.FlushInterval - now.Sub(last); d > 0 {
			t.Reset(d) // coalesce with what comes within the interval
			continue
		}
		full := s.forceFull || !now.Before(nextBeat)
		if full {
			nextBeat = now.Add(s.opts.Heartbeat)
		}
		busy := s.flush(full, now)
		last = now
		next := nextBeat.Sub(now)
		if busy {
			// Loads are non-zero: keep publishing their changes (first tokens, ends)
			// promptly, which Changed does not signal.
			next = min(next, s.opts.FlushInterval)
		}
		t.Reset(next)
	}
}

// flush publishes the loads that changed since the last message (every load when full)
// and the pending predictions. busy reports non-zero local load or predictions sent.
func (s *Sync) flush(full bool, now time.Time) (busy bool) {
	s.loadBuf = s.loadBuf[:0]
	n := 0
	for _, w := range s.opts.Pool.Workers() {
		cur := Load{InFlight: w.InFlight(), PrefillTokens: w.PendingPrefillTokens(), Blocks: w.ActiveBlocks()}
		if cur != (Load{}) {
			busy = true
		}
		if full || cur != s.sent[w.ID] {
			s.loadBuf = appendLoad(s.loadBuf, w.ID, cur)
			s.sent[w.ID] = cur
			n++
		}
	}
	s.mu.Lock()
	preds, np := s.pend, s.nPend
	s.pend, s.nPend = s.spare[:0], 0
	resps, nr := s.pendResp, s.nResp
	s.pendResp, s.nResp = s.spareResp[:0], 0
	s.mu.Unlock()
	s.spare, s.spareResp = preds, resps
	if n == 0 && np == 0 && nr == 0 && !full {
		return busy
	}
	s.seq++
	hdr := Message{Sender: s.id, Incarnation: s.inc, Seq: s.seq, Sent: now.UnixNano(), Full: full}
	b := appendHeader(s.msgBuf[:0], &hdr)
	flagsAt := len(b) - 1
	b = binary.AppendUvarint(b, uint64(n))
	b = append(b, s.loadBuf...)
	b = binary.AppendUvarint(b, uint64(np))
	b = append(b, preds...)
	if nr > 0 {
		b[flagsAt] |= flagResponses
		b = binary.AppendUvarint(b, uint64(nr))
		b = append(b, resps...)
	}
	s.msgBuf = b
	if err := s.nc.Publish(s.subject, b); err != nil {
		s.m.dropPublish.Inc()
		s.forceFull = true // peers may have missed changes: resend everything
		return true
	}
	s.forceFull = false
	s.m.sent.Inc()
	s.m.predSent.Add(float64(np))
	return busy || np > 0
}

// apply applies one received state message.
func (s *Sync) apply(data []byte, now time.Time) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	m := &s.msg
	if err := DecodeMessage(data, m); err != nil {
		s.m.dropped.WithLabelValues(dropDecode).Inc()
		s.log.Debug("replica message dropped", "err", err)
		return
	}
	if m.Sender == s.id {
		if m.Incarnation != s.inc {
			s.m.dropped.WithLabelValues(dropDuplicate).Inc()
			if s.dupLog.CompareAndSwap(false, true) {
				s.log.Error("another replica uses this replica's id: their load is not shared; give each replica its own replica.id", "id", s.id)
			}
		}
		return // our own
	}
	p := s.peers[m.Sender]
	switch {
	case p == nil:
		if len(s.peers) >= s.opts.MaxPeers {
			s.m.dropped.WithLabelValues(dropPeers).Inc()
			return
		}
		p = &peer{inc: m.Incarnation, loads: map[string]Load{}, spare: map[string]Load{}}
		s.peers[m.Sender] = p
		s.m.peers.Set(float64(len(s.peers)))
		s.log.Info("replica peer joined", "peer", m.Sender)
	case p.inc != m.Incarnation:
		// The peer restarted: what its previous incarnation reported is void.
		s.log.Info("replica peer restarted", "peer", m.Sender)
		s.clearPeer(p)
		p.inc = m.Incarnation
	case m.Seq <= p.seq:
		s.m.dropped.WithLabelValues(dropStale).Inc()
		return
	}
	p.seq, p.last = m.Seq, now
	if m.Full {
		next := p.spare
		clear(next)
		for _, wl := range m.Loads {
			r := s.remoteAt(wl.Worker)
			if r == nil {
				s.m.dropped.WithLabelValues(dropUnknown).Inc()
				continue
			}
			l := nonNegative(wl.Load)
			r.add(l.sub(p.loads[wl.Worker]))
			// Settled: the loop below must not take it off again (a load that
			// dropped to zero and was first reported by this heartbeat would be
			// subtracted twice, leaving the sum below the peers' true load).
			delete(p.loads, wl.Worker)
			if l != (Load{}) {
				next[wl.Worker] = l
			}
		}
		// What is left the heartbeat did not list: the peer no longer routes there.
		for w, old := range p.loads { // only known workers are stored
			if _, ok := next[w]; !ok {
				if r := (*s.remote.Load())[w]; r != nil {
					r.add(Load{}.sub(old))
				}
			}
		}
		p.loads, p.spare = next, p.loads
	} else {
		for _, wl := range m.Loads {
			r := s.remoteAt(wl.Worker)
			if r == nil {
				s.m.dropped.WithLabelValues(dropUnknown).Inc()
				continue
			}
			l := nonNegative(wl.Load)
			r.add(l.sub(p.loads[wl.Worker]))
			if l == (Load{}) {
				delete(p.loads, wl.Worker)
			} else {
				p.loads[wl.Worker] = l
			}
		}
	}
	for i := range m.Predictions {
		pr := &m.Predictions[i]
		if s.remoteAt(pr.Worker) == nil {
			s.m.dropped.WithLabelValues(dropUnknown).Inc()
			continue
		}
		if s.opts.Index != nil {
			s.opts.Index.Predict(proto.WorkerKey{ID: pr.Worker}, pr.Hashes, s.opts.PredictionTTL)
			s.m.predRecv.Inc()
		}
	}
	if sink := s.responses.Load(); sink != nil {
		for i := range m.Responses {
			r := &m.Responses[i]
			if s.remoteAt(r.Worker) == nil {
				s.m.dropped.WithLabelValues(dropUnknown).Inc()
				continue
			}
			(*sink)(r.ID, r.Worker, r.Model)
		}
	}
	s.m.received.Inc()
	if lag := now.Sub(time.Unix(0, m.Sent)); lag >= 0 {
		s.m.lag.Observe(lag.Seconds())
	}
}

func nonNegative(l Load) Load {
	return Load{InFlight: max(0, l.InFlight), PrefillTokens: max(0, l.PrefillTokens), Blocks: max(0, l.Blocks)}
}

// remoteAt returns the remote load of worker id, creating it when id has joined the pool
// since; nil for an id that is not a member. recvMu must be held.
func (s *Sync) remoteAt(id string) *remoteLoad {
	cur := *s.remote.Load()
	if r := cur[id]; r != nil {
		return r
	}
	if s.opts.Pool.Worker(id) == nil {
		return nil
	}
	next := make(map[string]*remoteLoad, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	r := &remoteLoad{}
	next[id] = r
	s.remote.Store(&next)
	return r
}

// Forget drops a worker that left the pool: its remote load and what each peer
// reported for it. Safe for concurrent use.
func (s *Sync) Forget(id string) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	cur := *s.remote.Load()
	if cur[id] == nil {
		return
	}
	next := make(map[string]*remoteLoad, len(cur))
	for k, v := range cur {
		if k != id {
			next[k] = v
		}
	}
	s.remote.Store(&next)
	for _, p := range s.peers {
		delete(p.loads, id)
	}
}

// clearPeer removes everything p reported from the remote sums. recvMu must be held.
func (s *Sync) clearPeer(p *peer) {
	for w, l := range p.loads {
		if r := (*s.remote.Load())[w]; r != nil {
			r.add(Load{}.sub(l))
		}
	}
	clear(p.loads)
	p.seq = 0
}

// expire drops the peers not heard from within ExpireAfter, with their load.
func (s *Sync) expire(now time.Time) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	for id, p := range s.peers {
		if now.Sub(p.last) > s.opts.ExpireAfter {
			s.clearPeer(p)
			delete(s.peers, id)
			s.m.expired.Inc()
			s.log.Warn("replica peer expired: its load no longer counts", "peer", id, "silent_for", now.Sub(p.last).Round(time.Millisecond).String())
		}
	}
	s.m.peers.Set(float64(len(s.peers)))
}
