//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package router

import "net"

// clientGone reports false: without a non-blocking peek the router cannot tell
// without reading, and retries as if the client were there.
func clientGone(net.Conn) bool { return false }
