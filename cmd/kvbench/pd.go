package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kvroute/kvroute/bench/report"
	"github.com/kvroute/kvroute/configs"
)

// maxPDWorkers bounds each pool of --pd: every worker is a simulated engine in this
// process.
const maxPDWorkers = 64

// parsePD parses --pd "P:D" and --pd-protocol; nil, nil when --pd is empty (aggregated
// serving only).
func parsePD(s, protocol string) (*report.PD, error) {
	if s == "" {
		return nil, nil
	}
	p, d, ok := strings.Cut(s, ":")
	np, errP := strconv.Atoi(strings.TrimSpace(p))
	nd, errD := strconv.Atoi(strings.TrimSpace(d))
	if !ok || errP != nil || errD != nil {
		return nil, fmt.Errorf("--pd: %q is not P:D, prefill and decode worker counts such as 2:2", s)
	}
	if np < 1 || nd < 1 || np > maxPDWorkers || nd > maxPDWorkers {
		return nil, fmt.Errorf("--pd: %q: each pool needs between 1 and %d workers", s, maxPDWorkers)
	}
	if protocol != configs.PDVLLM && protocol != configs.PDSGLang {
		return nil, fmt.Errorf("--pd-protocol: %q is not vllm or sglang", protocol)
	}
	return &report.PD{Prefill: np, Decode: nd, Protocol: protocol}, nil
}
