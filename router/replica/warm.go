package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// WarmStart asks a running peer for its index dump and restores it into Options.Index,
// waiting at most timeout. It reports whether the index was restored; an error says
// why not (no peer answered, a chunk was lost, the dump was malformed or too large),
// and the router then starts cold. Call it before Run (so this replica does not answer
// its own request) and before the event feeds start (Restore replaces the dumped
// workers' state).
func (s *Sync) WarmStart(ctx context.Context, timeout time.Duration) (bool, error) {
	if s.opts.Index == nil {
		return false, errors.New("replica: no index to restore")
	}
	ok, err := s.warmStart(ctx, timeout)
	outcome := "restored"
	if !ok {
		outcome = "cold"
	}
	s.m.warm.WithLabelValues(outcome).Inc()
	return ok, err
}

func (s *Sync) warmStart(ctx context.Context, timeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return false, fmt.Errorf("replica: subscribe dump inbox: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, int(min(s.opts.MaxDumpBytes+(64<<20), 1<<31-1)))
	if err := s.nc.PublishRequest(s.dumpSubject, inbox, []byte(s.id)); err != nil {
		return false, fmt.Errorf("replica: request index dump: %w", err)
	}
	var dump bytes.Buffer
	for next := uint64(0); ; next++ {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return false, fmt.Errorf("replica: no index dump from a peer within %v: %w", timeout, err)
		}
		if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
			return false, errors.New("replica: no peer to ask for an index dump")
		}
		index, last, payload, err := decodeChunk(msg.Data)
		if err != nil {
			return false, fmt.Errorf("replica: index dump chunk %d: %w", next, err)
		}
		if index != next {
			return false, fmt.Errorf("replica: index dump chunk %d arrived as chunk %d (lost chunks)", next, index)
		}
		if int64(dump.Len()+len(payload)) > s.opts.MaxDumpBytes {
			return false, fmt.Errorf("replica: index dump larger than %d bytes", s.opts.MaxDumpBytes)
		}
		dump.Write(payload)
		if last {
			break
		}
	}
	if err := s.opts.Index.Restore(&dump); err != nil {
		return false, fmt.Errorf("replica: %w", err)
	}
	return true, nil
}

// serveDump answers a peer's dump request with this replica's index, in chunks that
// fit the server's max payload, published to the request's reply subject in order.
func (s *Sync) serveDump(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	var dump bytes.Buffer
	if err := s.opts.Index.Dump(&dump); err != nil {
		s.log.Warn("replica: index dump failed", "err", err)
		return
	}
	size := int(s.nc.MaxPayload()) - chunkOverhead - 1024
	if size <= 0 {
		size = 256 << 10
	}
	b, total := dump.Bytes(), dump.Len()
	var buf []byte
	for i := uint64(0); ; i++ {
		n := min(size, len(b))
		buf = appendChunk(buf[:0], i, n == len(b), b[:n])
		if err := s.nc.Publish(msg.Reply, buf); err != nil {
			s.log.Warn("replica: send index dump", "peer", string(msg.Data), "err", err)
			return
		}
		b = b[n:]
		if len(b) == 0 {
			break
		}
	}
	s.log.Info("replica: sent index dump to a peer", "peer", string(msg.Data), "bytes", total)
}
