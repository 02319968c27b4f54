// Package valkeytest starts a real Redis or Valkey server for tests and benchmarks: on a
// loopback port chosen at run time, in a temporary directory, without persistence,
// killed at the test's cleanup. The binary is valkey-server or redis-server from PATH
// (scripts/deps.d/50-redis.sh installs Debian's redis-server); without one the test
// fails, it is not skipped.
package valkeytest

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is a running server. Its methods are for the goroutine of the test only.
type Server struct {
	tb   testing.TB
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	exit chan struct{}
}

// Start starts a server and registers its cleanup.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin, err := exec.LookPath("valkey-server")
	if err != nil {
		if bin, err = exec.LookPath("redis-server"); err != nil {
			tb.Fatal("neither valkey-server nor redis-server is on PATH: run scripts/deps.d/50-redis.sh (Debian package redis-server)")
		}
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	tb.Cleanup(s.Stop)
	var last error
	for range 20 {
		// A port below Linux's ephemeral range (32768-60999 by default): Restart binds
		// it again after the server is gone, and a port from that range could meanwhile
		// be the local end of some other connection of the test process (a pooled
		// keep-alive connection holds it for good). The port is free now; another
		// process could take it before the server binds it, hence the retries.
		s.port = 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(s.port))
		if err != nil {
			last = err
			continue
		}
		_ = ln.Close()
		if last = s.start(); last == nil {
			return s
		}
	}
	tb.Fatalf("start %s: %v", bin, last)
	return nil
}

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

func (s *Server) start() error {
	s.cmd = exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--protected-mode", "no", "--loglevel", "warning")
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	s.cmd.Stderr = s.cmd.Stdout
	if err := s.cmd.Start(); err != nil {
		return err
	}
	var log strings.Builder
	exit := make(chan struct{})
	s.exit = exit
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if log.Len() < 4096 {
				log.WriteString(sc.Text() + "\n")
			}
		}
		_ = s.cmd.Wait()
		close(exit)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exit:
			return fmt.Errorf("server exited at start")
		default:
		}
		if ping(s.Addr()) == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("server not answering PING within 30s")
}

// ping sends PING and reads +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop kills the server (no-op when stopped) and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exit
	s.cmd = nil
}

// Restart starts the server again on the same port, empty (nothing is persisted).
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	var err error
	for range 50 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond) // the port may linger briefly after the kill
	}
	s.tb.Fatalf("restart %s on port %d: %v", s.bin, s.port, err)
}
