package discovery

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Rejection reasons for [Metrics.Rejected]: the values of the reason label.
const (
	// RejectBadAddress is an address no worker can have (unspecified, multicast,
	// broadcast, IPv6 link-local without a zone) or a name that does not resolve.
	RejectBadAddress = "bad_address"
	// RejectInvalidWorker is a worker that fails [configs.ValidateWorker].
	RejectInvalidWorker = "invalid_worker"
	// RejectBadPort is a port no worker can listen on (an SRV record's port 0).
	RejectBadPort = "bad_port"
)

// Metrics holds the kvroute_discovery_* collectors every source shares, told apart by
// their source label (the source's Name). All methods are safe for concurrent use and
// do nothing on a nil *Metrics.
type Metrics struct {
	lookups  *prometheus.CounterVec
	members  *prometheus.GaugeVec
	rejected *prometheus.CounterVec
}

// NewMetrics builds the collectors and registers them with reg; a nil reg leaves them
// unregistered. When reg already holds them (another source registered first), the
// returned Metrics uses the registered ones, so every source may call NewMetrics with
// the same reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_discovery_lookups_total",
			Help: "Lookups of a discovery source's backend, per source and result (ok: an answer with records; error: anything else, the last view kept)."},
			[]string{"source", "result"}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kvroute_discovery_members",
			Help: "Workers in the last view a discovery source reported, per source."},
			[]string{"source"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_discovery_rejected_total",
			Help: "Records a discovery source skipped, per source and reason (bad_address, invalid_worker, bad_port); counted at every lookup that sees them."},
			[]string{"source", "reason"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.lookups, err = register(reg, m.lookups, nil)
	m.members, err = register(reg, m.members, err)
	m.rejected, err = register(reg, m.rejected, err)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c unless an earlier registration failed (prev != nil), returning
// the already registered collector when reg holds an equal one.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, prev error) (C, error) {
	if prev != nil {
		return c, prev
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old, nil
			}
		}
		return c, fmt.Errorf("register discovery metrics: %w", err)
	}
	return c, nil
}

// Lookup counts one lookup of source's backend: ok is true for an answer the source
// could use, false for an error (the last view kept).
func (m *Metrics) Lookup(source string, ok bool) {
	if m == nil {
		return
	}
	result := "error"
	if ok {
		result = "ok"
	}
	m.lookups.WithLabelValues(source, result).Inc()
}

// Members sets the number of workers in source's last reported view.
func (m *Metrics) Members(source string, n int) {
	if m == nil {
		return
	}
	m.members.WithLabelValues(source).Set(float64(n))
}

// Rejected counts one record source skipped; reason is one of the Reject* constants.
func (m *Metrics) Rejected(source, reason string) {
	if m == nil {
		return
	}
	m.rejected.WithLabelValues(source, reason).Inc()
}
