//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package router

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// clientGone reports whether the client has closed the connection c: a non-blocking
// MSG_PEEK on its socket sees the end of the stream or a reset. It reads nothing (a
// pipelined request stays for fasthttp to read) and never waits. A client that only
// half-closed its side counts as gone, as in nginx. Under TLS a client closing cleanly
// sends close_notify before its FIN (RFC 8446 section 6.1), so the peek sees data: a
// TLS 1.2 alert record is recognised by its content type, but TLS 1.3 hides every
// record's type behind application_data, so a clean TLS 1.3 close is not seen (the
// retry goes ahead, as it did before this check).
func clientGone(c net.Conn) bool {
	isTLS := false
	for {
		switch v := c.(type) {
		case *tls.Conn:
			c, isTLS = v.NetConn(), true
			continue
		case *guardConn:
			c = v.Conn
			continue
		}
		break
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true // closed
	}
	gone := false
	_ = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = (n == 0 && err == nil) || errors.Is(err, syscall.ECONNRESET) || (isTLS && n == 1 && b[0] == tlsAlert)
		return true // done: never wait for readiness
	})
	return gone
}

// tlsAlert is the content type of a TLS alert record (RFC 8446 section 5.1).
const tlsAlert = 21
