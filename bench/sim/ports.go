package sim

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
)

// SharedPorts returns n distinct TCP ports free on every one of hosts at once, so that
// workers on distinct loopback addresses (127.0.0.2, 127.0.0.3, ...) can share one set
// of HTTP, event and replay ports, as the pods of one Deployment do. The ports are free
// when SharedPorts returns; another process may take one before the workers bind it.
// Every host must be an address of this machine (on Linux the whole of 127.0.0.0/8 is).
func SharedPorts(hosts []string, n int) ([]int, error) {
	if len(hosts) == 0 {
		return nil, errors.New("shared ports: no host")
	}
	var out []int
	for attempt := 0; len(out) < n; attempt++ {
		if attempt > 200 {
			return nil, fmt.Errorf("shared ports: no port free on every one of %v", hosts)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(hosts[0], "0"))
		if err != nil {
			return nil, fmt.Errorf("shared ports: listen on %s: %w", hosts[0], err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		ls := []net.Listener{l}
		ok := !slices.Contains(out, port)
		for _, h := range hosts[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l2)
		}
		for _, l := range ls {
			_ = l.Close()
		}
		if ok {
			out = append(out, port)
		}
	}
	return out, nil
}
