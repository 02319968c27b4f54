package configs

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Discovery configures the sources that add and remove workers while the router runs,
// beside the static workers list. Each is off unless configured; several may be on at
// once. A worker id must be unique across all sources: a discovered worker whose id is
// taken is refused (logged and counted), never merged.
type Discovery struct {
	// DNS discovers workers from the A/AAAA or SRV records of a name. Default nil: off.
	DNS *DNSDiscovery `yaml:"dns"`
	// Kubernetes discovers workers from the pods matching a label selector, through the
	// Kubernetes API (client-go informers). Default nil: off.
	Kubernetes *KubernetesDiscovery `yaml:"kubernetes"`
}

// Enabled reports whether any discovery source is configured.
func (d Discovery) Enabled() bool { return d.DNS != nil || d.Kubernetes != nil }

// WorkerTemplate holds what a discovered worker cannot tell about itself: the settings
// every worker of one discovery source shares.
type WorkerTemplate struct {
	// Scheme of the workers' URLs: http or https. Default "http".
	Scheme string `yaml:"scheme"`
	// Models served by every worker. Empty (the default): each worker's /v1/models.
	Models []string `yaml:"models"`
	// DPRanks is the engines' data-parallel size, as workers[].dp_ranks. Default 1.
	DPRanks int `yaml:"dp_ranks"`
	// APIKeyEnv names an environment variable holding the workers' API key, as
	// workers[].api_key_env. Default "": upstream.api_key.
	APIKeyEnv string `yaml:"api_key_env"`
	// MaxConns caps the open connections to each worker. Default 1024.
	MaxConns int `yaml:"max_conns"`
	// EventsPort is the port of each worker's ZMQ KV-event publisher on the worker's
	// address (tcp://ADDRESS:PORT). Default 0: no events.
	EventsPort int `yaml:"events_port"`
	// ReplayPort is the port of each worker's ZMQ replay endpoint. Default 0: none.
	// Needs events_port.
	ReplayPort int `yaml:"replay_port"`
	// Role is the workers' prefill/decode role, as workers[].role. Default "both". A
	// Kubernetes pod's label kvroute.io/role replaces it (configs.RoleLabel); a DNS
	// name has no per-address labels, so one DNS source is one role.
	Role string `yaml:"role"`
	// BootstrapPort is the workers' SGLang bootstrap port, as workers[].bootstrap_port.
	// Default 0.
	BootstrapPort int `yaml:"bootstrap_port"`
}

// DNSDiscovery discovers workers from DNS, for Docker Compose, Nomad and headless
// Kubernetes services: every address the name resolves to is a worker.
type DNSDiscovery struct {
	WorkerTemplate `yaml:",inline"`
	// Name is the name to resolve, e.g. "vllm.default.svc.cluster.local" or, for SRV,
	// "_http._tcp.vllm.service.consul". Required.
	Name string `yaml:"name"`
	// Type is the record type: "A" (A and AAAA records, each address with port) or
	// "SRV" (each target with its own port). Default "A".
	Type string `yaml:"type"`
	// Port is the workers' HTTP port for type A. Required for A; unused for SRV.
	Port int `yaml:"port"`
	// Interval is the time between two lookups. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one lookup. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// Server is a DNS server host:port to ask instead of the system resolver
	// (/etc/resolv.conf). Default "".
	Server string `yaml:"server"`
}

// KubernetesDiscovery discovers workers from pods: every pod matching the selector with
// an IP is a worker named after the pod; its Ready condition decides whether it takes
// new requests, and an unready or deleted pod is drained.
type KubernetesDiscovery struct {
	WorkerTemplate `yaml:",inline"`
	// Namespace to watch. Default "": the router's own namespace in a cluster (from its
	// service account), else "default".
	Namespace string `yaml:"namespace"`
	// LabelSelector selects the worker pods, e.g. "app=vllm,model=llama". Exactly one
	// of label_selector and inference_pool is required.
	LabelSelector string `yaml:"label_selector"`
	// InferencePool names an InferencePool (inference.networking.k8s.io/v1) of the
	// namespace whose spec.selector selects the worker pods and whose first
	// spec.targetPorts entry is their HTTP port, followed as the pool changes (the
	// Gateway API Inference Extension's way to name a model server fleet). Exclusive
	// with label_selector, port and port_name. Default "".
	InferencePool string `yaml:"inference_pool"`
	// Port is the workers' HTTP port. One of port and port_name is required unless
	// inference_pool is set.
	Port int `yaml:"port"`
	// PortName names a container port of the pod holding the HTTP port, e.g. "http".
	PortName string `yaml:"port_name"`
	// Kubeconfig is a kubeconfig file to use outside a cluster. Default "": the
	// in-cluster config (service account), else $KUBECONFIG.
	Kubeconfig string `yaml:"kubeconfig"`
	// Resync is the informer's full resync period. Default 5m.
	Resync time.Duration `yaml:"resync"`
}

// discoveryDefaults fills the defaults of the configured sources.
func (d *Discovery) discoveryDefaults() {
	if d.DNS != nil {
		d.DNS.templateDefaults()
		if d.DNS.Type == "" {
			d.DNS.Type = "A"
		}
		if d.DNS.Interval == 0 {
			d.DNS.Interval = 10 * time.Second
		}
		if d.DNS.Timeout == 0 {
			d.DNS.Timeout = 2 * time.Second
		}
	}
	if k := d.Kubernetes; k != nil {
		k.templateDefaults()
		if k.Resync == 0 {
			k.Resync = 5 * time.Minute
		}
	}
}

func (t *WorkerTemplate) templateDefaults() {
	if t.Scheme == "" {
		t.Scheme = "http"
	}
	if t.DPRanks == 0 {
		t.DPRanks = 1
	}
	if t.MaxConns == 0 {
		t.MaxConns = 1024
	}
}

func (d *Discovery) validate(bad func(format string, args ...any)) {
	if s := d.DNS; s != nil {
		s.validateTemplate("discovery.dns", bad)
		if s.Name == "" || strings.ContainsAny(s.Name, " \t\n/:") {
			bad("discovery.dns.name: %q must be a DNS name", s.Name)
		}
		switch strings.ToUpper(s.Type) {
		case "A", "AAAA":
			if s.Port < 1 || s.Port > 65535 {
				bad("discovery.dns.port: %d must be a port from 1 to 65535 for type %s", s.Port, s.Type)
			}
		case "SRV":
			if s.Port != 0 {
				bad("discovery.dns.port: %d is unused with type SRV (the records give the port); leave it out", s.Port)
			}
		default:
			bad("discovery.dns.type: %q is not A or SRV", s.Type)
		}
		if s.Interval <= 0 {
			bad("discovery.dns.interval: %q must be positive", s.Interval.String())
		}
		if s.Timeout <= 0 {
			bad("discovery.dns.timeout: %q must be positive", s.Timeout.String())
		}
		if s.Server != "" && listenProblem(s.Server) != "" {
			bad("discovery.dns.server: %q must be host:port", s.Server)
		}
	}
	if k := d.Kubernetes; k != nil {
		k.validateTemplate("discovery.kubernetes", bad)
		switch {
		case k.InferencePool != "":
			if k.LabelSelector != "" {
				bad("discovery.kubernetes: label_selector %q and inference_pool %q both set; give one (the pool's selector chooses the pods)",
					k.LabelSelector, k.InferencePool)
			}
			if k.Port != 0 || k.PortName != "" {
				bad("discovery.kubernetes: port/port_name set with inference_pool %q; leave them out (the pool's targetPorts give the port)",
					k.InferencePool)
			}
			if len(k.InferencePool) > 253 || strings.ContainsAny(k.InferencePool, " \t\n/:,=") {
				bad("discovery.kubernetes.inference_pool: %q is not an object name", k.InferencePool)
			}
		case strings.TrimSpace(k.LabelSelector) == "":
			bad("discovery.kubernetes.label_selector: required (e.g. app=vllm), or inference_pool; an empty selector would take every pod")
		}
		switch {
		case k.InferencePool != "":
		case k.Port == 0 && k.PortName == "":
			bad("discovery.kubernetes: one of port and port_name is required")
		case k.Port != 0 && k.PortName != "":
			bad("discovery.kubernetes: port %d and port_name %q both set; give one", k.Port, k.PortName)
		case k.Port < 0 || k.Port > 65535:
			bad("discovery.kubernetes.port: %d must be a port from 1 to 65535", k.Port)
		}
		if k.Resync < 0 {
			bad("discovery.kubernetes.resync: %q must be positive", k.Resync.String())
		}
	}
}

func (t *WorkerTemplate) validateTemplate(p string, bad func(format string, args ...any)) {
	if t.Scheme != "http" && t.Scheme != "https" {
		bad("%s.scheme: %q is not http or https", p, t.Scheme)
	}
	if t.Role != "" && !ValidRole(t.Role) {
		bad("%s.role: %q is not prefill, decode or both", p, t.Role)
	}
	if t.BootstrapPort < 0 || t.BootstrapPort > 65535 {
		bad("%s.bootstrap_port: %d must be between 0 and 65535", p, t.BootstrapPort)
	}
	for _, pt := range []struct {
		name string
		v    int
	}{{"events_port", t.EventsPort}, {"replay_port", t.ReplayPort}} {
		if pt.v < 0 || pt.v+max(t.DPRanks, 1)-1 > 65535 {
			bad("%s.%s: %d must be a port from 1 to 65535 (0: none), with room for dp_ranks %d", p, pt.name, pt.v, t.DPRanks)
		}
	}
	if t.ReplayPort != 0 && t.EventsPort == 0 {
		bad("%s.replay_port: %d set without events_port", p, t.ReplayPort)
	}
	if t.DPRanks < 1 || t.DPRanks > 1024 {
		bad("%s.dp_ranks: %d must be between 1 and 1024", p, t.DPRanks)
	}
	if t.MaxConns < 1 {
		bad("%s.max_conns: %d must be positive", p, t.MaxConns)
	}
	for _, m := range t.Models {
		if m == "" {
			bad("%s.models: empty model name", p)
		}
	}
}

// Worker returns the worker a discovery source found at host (an IP address or a DNS
// name) with HTTP port port, named id ("" names it host:port), with the template's
// settings and every default filled. It does not validate: [ValidateWorker] does.
func (t WorkerTemplate) Worker(id, host string, port int) Worker {
	hp := joinHostPort(host, port)
	w := Worker{ID: id, URL: t.Scheme + "://" + hp, Models: t.Models, DPRanks: t.DPRanks,
		APIKeyEnv: t.APIKeyEnv, MaxConns: t.MaxConns, Role: t.Role, BootstrapPort: t.BootstrapPort}
	if t.EventsPort != 0 {
		w.Events = "tcp://" + joinHostPort(host, t.EventsPort)
	}
	if t.ReplayPort != 0 {
		w.Replay = "tcp://" + joinHostPort(host, t.ReplayPort)
	}
	w.workerDefaults()
	return w
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// ValidateWorker fills a worker's defaults and checks it as [Config.Validate] checks a
// workers entry: for a worker added at run time (admin API, discovery).
func ValidateWorker(w *Worker) error {
	w.workerDefaults()
	if err := w.validate(); err != nil {
		if w.ID != "" {
			return fmt.Errorf("worker %q: %w", w.ID, err)
		}
		return err
	}
	return nil
}

// ErrNoWorkers is returned by [Config.Validate] for a config with neither workers nor a
// discovery source.
var ErrNoWorkers = errors.New("workers: at least one worker is required (or a discovery source)")
