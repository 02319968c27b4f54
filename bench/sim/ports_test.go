package sim

import (
	"net"
	"strconv"
	"testing"
)

// The shared ports are distinct and can be bound on every host.
func TestSharedPorts(t *testing.T) {
	hosts := []string{"127.0.0.2", "127.0.0.3"}
	ports, err := SharedPorts(hosts, 3)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d twice in %v", p, ports)
		}
		seen[p] = true
		for _, h := range hosts {
			l, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(p)))
			if err != nil {
				t.Fatalf("port %d on %s: %v", p, h, err)
			}
			_ = l.Close()
		}
	}
	if _, err := SharedPorts(nil, 1); err == nil {
		t.Error("no host: no error")
	}
}
