package sim

import (
	"fmt"
	"time"
)

// Faults are the failure modes a worker can be switched into at run time, through
// [Worker.SetFaults] or POST /sim/fault. The zero value means healthy.
type Faults struct {
	// ErrorRate is the fraction of generation requests answered at once with HTTP 500,
	// in [0, 1]. Default 0.
	ErrorRate float64 `json:"error_rate" yaml:"error_rate"`
	// HangRate is the fraction of generation requests accepted and never answered (the
	// handler waits until the client goes away or the worker closes), in [0, 1].
	// Default 0.
	HangRate float64 `json:"hang_rate" yaml:"hang_rate"`
	// SlowFactor multiplies every engine step's duration; 0 and 1 mean normal speed.
	// Default 0.
	SlowFactor float64 `json:"slow_factor" yaml:"slow_factor"`
	// DieAfterChunks, when positive, closes the connection of every streamed response
	// after that many chunks (without the final chunk or [DONE]), and of every
	// non-streamed response before it is written. Default 0.
	DieAfterChunks int `json:"die_after_chunks" yaml:"die_after_chunks"`
	// DropEventBatches is an action, not a state: the next that many KV-event batches
	// are numbered and kept for replay but not sent on the PUB socket, so subscribers
	// see a seq gap. Default 0.
	DropEventBatches int `json:"drop_event_batches" yaml:"drop_event_batches"`
	// EventDelayMS delays every KV-event batch on the PUB socket by that many
	// milliseconds, in order, each keeping the engine's timestamp of its change (the
	// batch ts), as a lagging feed delivers them (kvsim --event-delay). Lowering it
	// releases the batches already due at once. At most 600000 (10 min). Default 0.
	EventDelayMS int64 `json:"event_delay_ms" yaml:"event_delay_ms"`
	// TransferHang makes the P/D side channel accept every KV pull and never complete
	// it: decode workers fail their requests after pd_transfer_timeout_ms. Default false.
	TransferHang bool `json:"transfer_hang" yaml:"transfer_hang"`
	// TransferErrorRate is the fraction of KV pulls the side channel answers with HTTP
	// 500, in [0, 1]. Default 0.
	TransferErrorRate float64 `json:"transfer_error_rate" yaml:"transfer_error_rate"`
}

// Validate reports the first field out of range, quoting its value.
func (f *Faults) Validate() error {
	switch {
	case !(f.ErrorRate >= 0 && f.ErrorRate <= 1):
		return fmt.Errorf("error_rate must be in [0, 1], got %v", f.ErrorRate)
	case !(f.HangRate >= 0 && f.HangRate <= 1):
		return fmt.Errorf("hang_rate must be in [0, 1], got %v", f.HangRate)
	case !(f.SlowFactor >= 0 && f.SlowFactor <= 1000):
		return fmt.Errorf("slow_factor must be in [0, 1000], got %v", f.SlowFactor)
	case !(f.TransferErrorRate >= 0 && f.TransferErrorRate <= 1):
		return fmt.Errorf("transfer_error_rate must be in [0, 1], got %v", f.TransferErrorRate)
	case f.DieAfterChunks < 0:
		return fmt.Errorf("die_after_chunks must not be negative, got %d", f.DieAfterChunks)
	case f.DropEventBatches < 0:
		return fmt.Errorf("drop_event_batches must not be negative, got %d", f.DropEventBatches)
	case f.EventDelayMS < 0 || f.EventDelayMS > 600_000:
		return fmt.Errorf("event_delay_ms must be in [0, 600000], got %d", f.EventDelayMS)
	}
	return nil
}

// RestartOptions control a simulated engine restart ([Worker.Restart], POST
// /sim/restart).
type RestartOptions struct {
	// Down is how long the worker answers 503 (and /health fails) after the restart.
	Down time.Duration `json:"-"`
	// DownMS is Down in milliseconds, for the HTTP endpoint.
	DownMS int64 `json:"down_ms"`
	// AnnounceClear publishes AllBlocksCleared as the new stream's first batch (seq 0).
	// A real vLLM process restart does not (its new publisher just starts at seq 0);
	// vLLM's reset_prefix_cache does, which POST /reset_prefix_cache simulates.
	AnnounceClear bool `json:"announce_clear"`
	// Rebind closes the event PUB and replay ROUTER sockets and binds new ones on the
	// same ports, so subscribers see their connections drop as with a real process
	// restart and must reconnect (and resubscribe). Without it the sockets stay up and
	// only the seq restarts.
	Rebind bool `json:"rebind"`
	// Offline closes the HTTP listener and every connection for Down, so clients get
	// connection refused (a crashed process) instead of 503 (a process starting up); the
	// worker listens again on the same port afterwards.
	Offline bool `json:"offline"`
}
