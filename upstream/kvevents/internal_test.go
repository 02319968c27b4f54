package kvevents

import "testing"

func TestRankEndpoint(t *testing.T) {
	for _, c := range []struct {
		in   string
		rank int
		want string
	}{
		{"tcp://10.0.0.1:5557", 0, "tcp://10.0.0.1:5557"},
		{"tcp://10.0.0.1:5557", 2, "tcp://10.0.0.1:5559"},
		{"tcp://[::1]:5557", 3, "tcp://[::1]:5560"},
		{"tcp://host.example:5558", 1, "tcp://host.example:5559"},
	} {
		got, err := rankEndpoint(c.in, c.rank)
		if err != nil || got != c.want {
			t.Errorf("rankEndpoint(%q, %d) = %q, %v; want %q", c.in, c.rank, got, err, c.want)
		}
	}
	if _, err := rankEndpoint("tcp://h:65535", 1); err == nil {
		t.Error("port overflow accepted")
	}
}
