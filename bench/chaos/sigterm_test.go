package chaos

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// lockedBuffer is a bytes.Buffer safe for a child process's output and a test reading
// it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A real SIGTERM to a built `kvroute serve` under streaming load: every request in
// flight at the signal completes, later ones are refused or get a clean 503, and the
// process exits 0. Full suite only: it builds the binary.
func TestSIGTERMBinary(t *testing.T) {
	if !full {
		t.Skip("full chaos suite only (KVROUTE_CHAOS=full): builds cmd/kvroute")
	}
	bin := filepath.Join(t.TempDir(), "kvroute")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kvroute/kvroute/cmd/kvroute").CombinedOutput(); err != nil {
		t.Fatalf("build kvroute: %v\n%s", err, out)
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = 3, Model
	fleet, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	args := []string{"serve", "--listen", addr}
	if dp := os.Getenv("KVROUTE_TEST_DATA_PLANE"); dp != "" {
		args = append(args, "--data-plane", dp)
	}
	for _, in := range fleet.Infos() {
		args = append(args, "--worker", fmt.Sprintf("%s,id=%s,events=%s,replay=%s", in.URL, in.ID, in.Events, in.Replay))
	}
	cmd := exec.Command(bin, args...)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	url := "http://" + addr
	if !poll.Until(20*time.Second, func() bool {
		resp, err := http.Get(url + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatalf("kvroute not ready after 20s; logs:\n%s", logs.String())
	}

	l := startLoad(LoadConfig{URL: url, Concurrency: 12, StreamFraction: 0.5, MaxTokens: 150, Pause: 20 * time.Millisecond})
	if !poll.Until(10*time.Second, func() bool { return l.tally.Sent() >= 24 && l.tally.Answering() >= 4 }) {
		t.Fatalf("load did not start: %s", l.tally)
	}
	time.Sleep(phase(time.Second, 5*time.Second))
	// Streams under way (their headers arrived): accepted for sure, so they must complete.
	before, inFlight := l.tally.Count(Completed), l.tally.Answering()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	select {
	case exitErr = <-exited:
	case <-time.After(40 * time.Second):
		t.Fatalf("kvroute still running 40s after SIGTERM; logs:\n%s", logs.String())
	}
	tally := l.stop()
	if exitErr != nil {
		t.Errorf("kvroute exited with %v after SIGTERM; logs:\n%s", exitErr, logs.String())
	}
	if tally.Count(Completed) < before+int(inFlight) {
		t.Errorf("%d requests completed, fewer than the %d done before plus %d in flight at the signal", tally.Count(Completed), before, inFlight)
	}
	checkContract(t, &Env{}, "real SIGTERM to the kvroute binary under load", tally,
		fmt.Sprintf("%d requests in flight at the signal all completed; process exited 0", inFlight))
}
