package replica

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// BenchmarkRemote is the per-candidate cost replica sync adds to a routing decision.
// Compare two runs with: go test -run '^$' -bench . -count 10 ./router/replica > new.txt;
// benchstat old.txt new.txt.
func BenchmarkRemote(b *testing.B) {
	url := startNATS(b)
	n := startNode(b, url, "a", nil)
	b.ReportAllocs()
	var sink int64
	for b.Loop() {
		sink += n.sync.Remote("gpu-1").InFlight
	}
	_ = sink
}

// BenchmarkPredicted is the cost of queueing one routing decision (64 blocks) for the
// other replicas, on the request path.
func BenchmarkPredicted(b *testing.B) {
	url := startNATS(b)
	n := startNode(b, url, "a", nil)
	hashes := make([]proto.BlockHash, 64)
	b.ReportAllocs()
	for b.Loop() {
		n.sync.Predicted("gpu-1", hashes)
	}
}
