package kvevents_test

import (
	"context"
	"slices"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/bench/sim/kvevents"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
)

// TestAgainstKVSimPublisher runs the sources against kvsim's publisher
// (bench/sim/kvevents), an encoder and ZMQ server written independently of proto and
// kvtest, in every format it speaks: the sink must end up with exactly the blocks the
// simulated engine holds after stores, evictions, dropped batches (replayed), an engine
// restart and AllBlocksCleared.
func TestAgainstKVSimPublisher(t *testing.T) {
	formats := map[string]kvevents.Format{
		"vllm-array":     {Engine: kvevents.EngineVLLM, Layout: kvevents.LayoutArray},
		"vllm-map":       {Engine: kvevents.EngineVLLM, Layout: kvevents.LayoutMap},
		"vllm-map-batch": {Engine: kvevents.EngineVLLM, Layout: kvevents.LayoutMapBatch, DigestHashes: true},
		"sglang":         {Engine: kvevents.EngineSGLang, Layout: kvevents.LayoutArray},
	}
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p, err := kvevents.Listen(ctx, kvevents.Config{Endpoint: "tcp://127.0.0.1:0", ReplayEndpoint: "tcp://127.0.0.1:0", BufferSteps: 100})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = p.Close() }()
			sink := kvtest.NewRecorder()
			startManager(t, sink, nil, ingest.WorkerConfig{Worker: w1.ID, Endpoint: p.Endpoint(), ReplayEndpoint: p.ReplayEndpoint()})
			poll.CheckFor(t, wait, "subscription", p.Subscribed)

			enc := kvevents.NewEncoder(f)
			truth := map[uint64]bool{}
			var last uint64
			publish := func(evs ...kvevents.Event) {
				for _, ev := range evs {
					switch ev.Kind {
					case proto.BlockStored:
						for _, h := range ev.Hashes {
							truth[h] = true
						}
					case proto.BlockRemoved:
						for _, h := range ev.Hashes {
							delete(truth, h)
						}
					case proto.AllBlocksCleared:
						clear(truth)
					}
				}
				last = p.Publish(enc.Encode(1.75e9, 0, evs))
			}
			stored := func(parent uint64, hs ...uint64) kvevents.Event {
				tokens := make([]uint32, 16*len(hs))
				for i := range tokens {
					tokens[i] = uint32(i)
				}
				return kvevents.Event{Kind: proto.BlockStored, Hashes: hs, Parent: parent, HasParent: parent != 0, Tokens: tokens, BlockSize: 16}
			}
			want := func() map[proto.EngineHash]bool {
				out := map[proto.EngineHash]bool{}
				for h := range truth {
					if f.DigestHashes {
						d := kvevents.Digest(h)
						out[proto.EngineHash(xxhash.Sum64(d[:]))] = true
					} else {
						out[proto.EngineHash(h)] = true
					}
				}
				return out
			}
			check := func(step string) {
				t.Helper()
				poll.CheckFor(t, wait, step, func() bool {
					s, ok := sink.LastSeq(w1)
					return ok && s == last
				})
				if got := sink.Cache(w1); !kvtest.SameSet(got, want()) {
					t.Fatalf("%s: sink holds %d blocks, engine %d", step, len(got), len(truth))
				}
			}

			publish(stored(0, 1<<63+1, 1<<63+2))
			publish(stored(1<<63+2, 3))
			publish(kvevents.Event{Kind: proto.BlockRemoved, Hashes: []uint64{3}})
			check("stores and eviction")

			p.DropNext(2)
			publish(stored(0, 10, 11))
			publish(kvevents.Event{Kind: proto.BlockRemoved, Hashes: []uint64{1<<63 + 1}})
			publish(stored(11, 12))
			check("dropped batches replayed")

			p.Restart() // a restarted engine starts with an empty cache
			clear(truth)
			publish(stored(0, 20))
			check("engine restart")

			publish(kvevents.Event{Kind: proto.AllBlocksCleared})
			publish(stored(0, 30))
			check("all blocks cleared")

			if r := sink.Resets(w1); !slices.Equal(r, []string{ingest.ReasonStart, ingest.ReasonRestart}) {
				t.Fatalf("resets %v", r)
			}
		})
	}
}
