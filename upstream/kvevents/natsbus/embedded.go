package natsbus

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedOptions configure [StartEmbedded].
type EmbeddedOptions struct {
	// Host is the listen address; default "127.0.0.1" (loopback only).
	Host string
	// Port is the client port; default 0 picks a free one.
	Port int
	// StoreDir holds JetStream's files; default a fresh temporary directory, removed by
	// Shutdown.
	StoreDir string
	// NoJetStream turns JetStream off.
	NoJetStream bool
}

// Embedded is an in-process nats-server.
type Embedded struct {
	srv     *server.Server
	tempDir string
}

// StartEmbedded starts a nats-server in this process and waits until it accepts
// clients.
func StartEmbedded(opts EmbeddedOptions) (*Embedded, error) {
	e := &Embedded{}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	port := opts.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if opts.StoreDir == "" && !opts.NoJetStream {
		dir, err := os.MkdirTemp("", "kvroute-nats-")
		if err != nil {
			return nil, fmt.Errorf("embedded nats store dir: %w", err)
		}
		opts.StoreDir, e.tempDir = dir, dir
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "kvroute-embedded",
		Host:       opts.Host,
		Port:       port,
		JetStream:  !opts.NoJetStream,
		StoreDir:   opts.StoreDir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		e.removeTemp()
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	e.srv = srv
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		e.Shutdown()
		return nil, errors.New("embedded nats: not ready after 10s")
	}
	return e, nil
}

// ClientURL returns the URL clients connect to, e.g. "nats://127.0.0.1:41234".
func (e *Embedded) ClientURL() string { return e.srv.ClientURL() }

// Shutdown stops the server, waits for it, and removes its temporary store.
func (e *Embedded) Shutdown() {
	if e.srv != nil {
		e.srv.Shutdown()
		e.srv.WaitForShutdown()
	}
	e.removeTemp()
}

func (e *Embedded) removeTemp() {
	if e.tempDir != "" {
		_ = os.RemoveAll(e.tempDir)
	}
}
