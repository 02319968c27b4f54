package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"github.com/valyala/fasthttp"
)

// Command is a program to start as a child process: Argv[0] is the executable, Env is
// added to the harness's own environment.
type Command struct {
	Argv []string
	Env  []string
}

// process is a child process of the harness.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed when the process has exited
	err  error         // the exit error; valid once done is closed
}

// startProcess starts c with args appended; its stdout and stderr are kept (the last
// 16 KiB) for error messages and, when logPath is not "", written to that file.
func startProcess(name string, c Command, logPath string, args ...string) (*process, error) {
	if len(c.Argv) == 0 {
		return nil, fmt.Errorf("start %s: empty command", name)
	}
	argv := append(append([]string(nil), c.Argv...), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	out := &tailBuffer{max: 16 << 10}
	var (
		w   io.Writer = out
		log *os.File
	)
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		log, w = f, io.MultiWriter(out, f)
	}
	closeLog := func() {
		if log != nil {
			_ = log.Close()
		}
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		closeLog()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	// Wait returns after the output has been copied: the log can be closed then.
	go func() { p.err = cmd.Wait(); closeLog(); close(p.done) }()
	return p, nil
}

// pid returns the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, waits up to grace, then kills. It returns an error when the
// process had exited before it was asked to stop (it crashed).
func (p *process) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early: %w\n%s", p.name, p.exitError(), p.out.String())
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	return nil
}

// waitReady polls GET url until it answers 200, the process exits, or timeout passes.
func (p *process) waitReady(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %w\n%s", p.name, p.exitError(), p.out.String())
		default:
		}
		code, _, err := fasthttp.GetTimeout(nil, url, time.Second)
		switch {
		case err != nil:
			last = err
		case code == fasthttp.StatusOK:
			return nil
		default:
			last = fmt.Errorf("status %d", code)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready at %s after %v: %w\n%s", p.name, url, timeout, last, p.out.String())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", p.name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tailBuffer keeps the last max bytes written to it. It is safe for concurrent use.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(bytes.TrimSpace(b.buf))
}

// freeAddr returns a loopback address with a port that was free a moment ago. Another
// process could take it before the child binds it; the child then fails to start and
// the harness reports it.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return addr, nil
}

// cpuSeconds returns the user+system CPU time of the processes, in seconds.
func cpuSeconds(fs procfs.FS, pids []int) (float64, error) {
	var sum float64
	for _, pid := range pids {
		p, err := fs.Proc(pid)
		if err != nil {
			return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
		}
		st, err := p.Stat()
		if err != nil {
			return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
		}
		sum += st.CPUTime()
	}
	return sum, nil
}

// machineBusy returns the CPU seconds all cores of the machine spent not idle.
func machineBusy(fs procfs.FS) (float64, error) {
	st, err := fs.Stat()
	if err != nil {
		return 0, fmt.Errorf("machine cpu: %w", err)
	}
	c := st.CPUTotal
	return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal, nil
}

// withChildren returns pid followed by the ids of its direct children (nginx's
// workers).
func withChildren(fs procfs.FS, pid int) ([]int, error) {
	procs, err := fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	out := []int{pid}
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // the process ended while we listed
		}
		if st.PPID == pid {
			out = append(out, p.PID)
		}
	}
	if len(out) == 1 {
		return nil, errors.New("no child processes found")
	}
	return out, nil
}

// exitError is why the process ended; call it only once done is closed.
func (p *process) exitError() error {
	if p.err == nil {
		return errors.New("exit status 0")
	}
	return p.err
}
