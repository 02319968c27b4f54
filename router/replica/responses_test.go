package replica

import (
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestStoredResponsesShared(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, url, "a", nil)
	b := startNode(t, url, "b", nil)
	var mu sync.Mutex
	got := map[string]string{}
	b.sync.SetResponseSink(func(id, worker, model string) {
		mu.Lock()
		got[id] = worker + "/" + model
		mu.Unlock()
	})
	a.sync.StoredResponse("resp_1", "gpu-1", "m")
	a.sync.StoredResponse("resp_2", "gpu-2", "m")
	a.sync.StoredResponse("resp_x", "not-a-member", "m") // dropped by the receiver
	poll.CheckFor(t, 5*time.Second, "both responses received", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got["resp_1"] == "gpu-1/m" && got["resp_2"] == "gpu-2/m"
	})
	mu.Lock()
	defer mu.Unlock()
	if _, ok := got["resp_x"]; ok {
		t.Error("a response on a worker outside the pool was accepted")
	}
}
