// Package dnstest serves a DNS zone on loopback for tests: records the test changes
// while a discovery source runs, forced answer codes and truncation.
package dnstest

import (
	"net"
	"strings"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
)

// Zone is the data a test DNS server answers from; the test changes it while a source
// runs. Safe for concurrent use.
type Zone struct {
	mu      sync.Mutex
	records map[string][]mdns.RR // by lower-case FQDN; mu guards it and the fields below
	rcode   map[string]int       // a forced answer code by FQDN, or "FQDN TYPE" for one type
	tcpOnly map[string]bool      // names answered truncated over UDP, fully over TCP
	queries map[string]int       // queries seen by "network name" (udp/tcp)
}

// NewZone returns an empty zone.
func NewZone() *Zone {
	return &Zone{records: map[string][]mdns.RR{}, rcode: map[string]int{},
		tcpOnly: map[string]bool{}, queries: map[string]int{}}
}

// Set replaces the records of name with rrs, each "TYPE DATA" ("A 10.0.0.1",
// "SRV 0 0 8000 a.test."); no rrs makes the name NXDOMAIN.
func (z *Zone) Set(t testing.TB, name string, rrs ...string) {
	t.Helper()
	var parsed []mdns.RR
	for _, s := range rrs {
		rr, err := mdns.NewRR(name + " 0 IN " + s)
		if err != nil {
			t.Fatalf("test record %q: %v", s, err)
		}
		parsed = append(parsed, rr)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records[strings.ToLower(name)] = parsed
}

// Fail makes every query for name answer rcode (mdns.RcodeSuccess: answer again); a
// name followed by a type ("w.test. AAAA") fails the queries of that type only.
func (z *Zone) Fail(name string, rcode int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if rcode == mdns.RcodeSuccess {
		delete(z.rcode, strings.ToLower(name))
		return
	}
	z.rcode[strings.ToLower(name)] = rcode
}

// Queried returns how many queries for name came over network (udp, tcp).
func (z *Zone) Queried(network, name string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[network+" "+strings.ToLower(name)]
}

// ServeDNS answers from the zone: the records of the question's type, NODATA for a name
// with records of other types only, NXDOMAIN for a name with none.
func (z *Zone) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range r.Question {
		name := strings.ToLower(q.Name)
		network := w.RemoteAddr().Network()
		z.queries[network+" "+name]++
		rc, ok := z.rcode[name]
		if !ok {
			rc, ok = z.rcode[name+" "+strings.ToLower(mdns.TypeToString[q.Qtype])]
		}
		if ok {
			m.Rcode = rc
			continue
		}
		if z.tcpOnly[name] && network == "udp" {
			m.Truncated = true
			continue
		}
		rrs := z.records[name]
		if len(rrs) == 0 {
			m.Rcode = mdns.RcodeNameError
			continue
		}
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, mdns.Copy(rr))
			}
		}
	}
	z.mu.Unlock()
	_ = w.WriteMsg(m)
}

// Server is a DNS server for a zone on loopback.
type Server struct {
	// Addr is the server's host:port.
	Addr string
	udp  *mdns.Server
	tcp  *mdns.Server
}

// Start serves z on addr ("127.0.0.1:0": a port chosen now) over UDP, and over
// TCP on the same port when tcp is set; it is shut down when the test ends.
func Start(t testing.TB, z *Zone, addr string, tcp bool) *Server {
	t.Helper()
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Fatalf("listen udp %s: %v", addr, err)
		}
		s := &Server{Addr: pc.LocalAddr().String()}
		s.udp = serve(t, &mdns.Server{PacketConn: pc, Handler: z})
		if !tcp {
			return s
		}
		l, err := net.Listen("tcp", s.Addr)
		if err != nil && attempt < 10 && addr == "127.0.0.1:0" {
			s.Stop() // the TCP port is taken: try another UDP port
			continue
		}
		if err != nil {
			t.Fatalf("listen tcp %s: %v", s.Addr, err)
		}
		s.tcp = serve(t, &mdns.Server{Listener: l, Handler: z})
		return s
	}
}

func serve(t testing.TB, srv *mdns.Server) *mdns.Server {
	t.Helper()
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() { _ = srv.Shutdown() })
	return srv
}

// Stop shuts the server down; its address then refuses queries.
func (s *Server) Stop() {
	_ = s.udp.Shutdown()
	if s.tcp != nil {
		_ = s.tcp.Shutdown()
	}
}

// TCPOnly makes queries for name over UDP answer truncated (the client must retry over
// TCP).
func (z *Zone) TCPOnly(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.tcpOnly[strings.ToLower(name)] = true
}
