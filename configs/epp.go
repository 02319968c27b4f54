package configs

// EPP configures `kvroute epp`: kvroute as the endpoint picker (EPP) of a Gateway API
// Inference Extension gateway, serving Envoy's ext_proc protocol over gRPC (router/epp).
// The ports default to the protocol's conventional ones: 9002 ext_proc, 9003 gRPC
// health; the HTTP listener (listen) keeps serving the admin API, dashboard and
// /metrics (9090 in deploy/kubernetes/epp).
type EPP struct {
	// GRPCListen is the ext_proc listener's address; --grpc-listen overrides it.
	// Default ":9002".
	GRPCListen string `yaml:"grpc_listen"`
	// HealthListen is the grpc.health.v1 listener's address (liveness, readiness and
	// the ext_proc service). Default ":9003".
	HealthListen string `yaml:"health_listen"`
	// Fallbacks is how many endpoints follow the pick in x-gateway-destination-endpoint,
	// cheapest first, for the data plane's retries. 0 to 16; default 2.
	Fallbacks int `yaml:"fallbacks"`
	// MaxBodyBytes caps a request body the picker holds, in bytes; a larger one ends the
	// ext_proc stream with RESOURCE_EXHAUSTED. Default 0: max_body_bytes.
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// TLS serves the ext_proc and health listeners over TLS (the gateway's
	// EndpointPickerRef can require it); same fields as tls. Off by default.
	TLS ListenerTLS `yaml:"tls"`
}

// MaxEPPFallbacks bounds epp.fallbacks.
const MaxEPPFallbacks = 16

func defaultEPP() EPP {
	return EPP{GRPCListen: ":9002", HealthListen: ":9003", Fallbacks: 2, TLS: ListenerTLS{MinVersion: "1.2"}}
}

// EPPBodyLimit returns the request body cap of the picker: max_body_bytes unless
// epp.max_body_bytes is set.
func (c *Config) EPPBodyLimit() int {
	if c.EPP.MaxBodyBytes > 0 {
		return c.EPP.MaxBodyBytes
	}
	return c.MaxBodyBytes
}

// validate appends the problems of the epp section with bad.
func (e *EPP) validate(bad func(format string, args ...any)) {
	if msg := listenProblem(e.GRPCListen); msg != "" {
		bad("epp.grpc_listen: %q %s", e.GRPCListen, msg)
	}
	if msg := listenProblem(e.HealthListen); msg != "" {
		bad("epp.health_listen: %q %s", e.HealthListen, msg)
	}
	if e.Fallbacks < 0 || e.Fallbacks > MaxEPPFallbacks {
		bad("epp.fallbacks: %d must be between 0 and %d", e.Fallbacks, MaxEPPFallbacks)
	}
	if e.MaxBodyBytes < 0 {
		bad("epp.max_body_bytes: %d must not be negative", e.MaxBodyBytes)
	}
	if (e.TLS.CertFile == "") != (e.TLS.KeyFile == "") {
		bad("epp.tls: cert_file and key_file must be given together")
	}
	if e.TLS.MinVersion != "1.2" && e.TLS.MinVersion != "1.3" {
		bad("epp.tls.min_version: %q must be 1.2 or 1.3", e.TLS.MinVersion)
	}
}
