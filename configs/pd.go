package configs

import (
	"fmt"
)

// Worker roles in prefill/decode disaggregation (workers[].role). A prefill worker
// computes a prompt's KV cache and hands it over; a decode worker receives it and
// generates; both does either, and serves whole requests.
const (
	RolePrefill = "prefill"
	RoleDecode  = "decode"
	RoleBoth    = "both"
)

// RoleLabel is the Kubernetes pod label that sets a discovered worker's role,
// replacing discovery.kubernetes.role, e.g. kvroute.io/role=prefill.
const RoleLabel = "kvroute.io/role"

// P/D protocols (pd.protocol, serve --pd).
const (
	// PDVLLM is vLLM's disaggregated serving through a KV connector (NixlConnector):
	// the prefill worker gets the request with max_tokens 1 and kv_transfer_params
	// do_remote_decode, its answer's kv_transfer_params go to the decode worker.
	PDVLLM = "vllm"
	// PDSGLang is SGLang's PD mode: both workers get the request at once with
	// bootstrap_host, bootstrap_port and bootstrap_room naming the prefill server.
	PDSGLang = "sglang"
)

// ValidRole reports whether r is a worker role: prefill, decode or both.
func ValidRole(r string) bool { return r == RolePrefill || r == RoleDecode || r == RoleBoth }

// PD configures prefill/decode disaggregation (router/pd.go). It is on while the pool
// holds both a prefill and a decode worker (workers[].role); with only "both" workers
// (the default) every request is served whole, as without this section.
type PD struct {
	// Protocol is the wire protocol between router and workers: vllm or sglang.
	// Default "vllm".
	Protocol string `yaml:"protocol"`
}

func (p *PD) validate(bad func(format string, args ...any)) {
	if p.Protocol != PDVLLM && p.Protocol != PDSGLang {
		bad("pd.protocol: %q is not vllm or sglang", p.Protocol)
	}
}

// validateRole checks the worker's role and bootstrap port.
func (w *Worker) validateRole() error {
	if w.Role != "" && !ValidRole(w.Role) { // "" (a worker built without defaults) is both
		return fmt.Errorf("role: %q is not prefill, decode or both", w.Role)
	}
	if w.BootstrapPort < 0 || w.BootstrapPort > 65535 {
		return fmt.Errorf("bootstrap_port: %d must be between 0 and 65535", w.BootstrapPort)
	}
	return nil
}
