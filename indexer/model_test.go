package indexer

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// refModel is the naive specification of the index: per worker, a list-free map of
// engine entries and predictions; Match walks every worker over every block. It shares
// only proto's hash with the real index.
type refModel struct {
	workers map[proto.WorkerKey]*refWorker
	weights [numTiers]float64
	predW   float64
	now     time.Time
}

type refWorker struct {
	eng  map[proto.EngineHash]*refEntry
	pred map[proto.BlockHash]time.Time
}

type refEntry struct {
	own  proto.BlockHash
	refs [numTiers]int
}

func (m *refModel) w(k proto.WorkerKey) *refWorker {
	if m.workers[k] == nil {
		m.workers[k] = &refWorker{eng: map[proto.EngineHash]*refEntry{}, pred: map[proto.BlockHash]time.Time{}}
	}
	return m.workers[k]
}

// holds reports whether some engine entry of w holds own on tier t.
func (rw *refWorker) holds(own proto.BlockHash, t Tier) bool {
	for _, e := range rw.eng {
		if e.own == own && e.refs[t] > 0 {
			return true
		}
	}
	return false
}

func (m *refModel) apply(k proto.WorkerKey, model string, b *proto.Batch) {
	if b.DPRank >= 0 {
		k.DPRank = b.DPRank
	}
	rw := m.w(k)
	for _, ev := range b.Events {
		tier := TierOf(ev.Medium)
		switch ev.Kind {
		case proto.BlockStored:
			n := len(ev.BlockHashes)
			if len(ev.TokenIDs) == 0 {
				for _, eh := range ev.BlockHashes {
					if e := rw.eng[eh]; e != nil {
						m.store(rw, eh, e.own, tier)
					}
				}
				continue
			}
			if n == 0 || len(ev.TokenIDs)%n != 0 {
				continue
			}
			size := len(ev.TokenIDs) / n
			if ev.BlockSize > 0 && ev.BlockSize != size {
				continue
			}
			parent := proto.Seed(model, ev.LoRAName, "")
			if ev.HasParent {
				e := rw.eng[ev.ParentHash]
				if e == nil {
					continue
				}
				parent = e.own
			}
			for i, eh := range ev.BlockHashes {
				parent = proto.ChainBlock(parent, ev.TokenIDs[i*size:(i+1)*size])
				m.store(rw, eh, parent, tier)
			}
		case proto.BlockRemoved:
			for _, eh := range ev.BlockHashes {
				e := rw.eng[eh]
				if e == nil || e.refs[tier] == 0 {
					continue
				}
				if e.refs[tier] < refMax { // saturated counts stay, as in the index
					e.refs[tier]--
				}
				if e.refs[tier] == 0 && !rw.holds(e.own, tier) {
					delete(rw.pred, e.own)
				}
				if e.refs == [numTiers]int{} {
					delete(rw.eng, eh)
				}
			}
		case proto.AllBlocksCleared:
			m.workers[k] = nil
			m.w(k)
			rw = m.workers[k]
		}
	}
	m.expire()
}

func (m *refModel) store(rw *refWorker, eh proto.EngineHash, own proto.BlockHash, t Tier) {
	e := rw.eng[eh]
	if e != nil && e.own != own {
		old := e.own
		delete(rw.eng, eh)
		for tt := Tier(0); tt < numTiers; tt++ {
			if e.refs[tt] > 0 && !rw.holds(old, tt) {
				delete(rw.pred, old)
			}
		}
		e = nil
	}
	if e == nil {
		e = &refEntry{own: own}
		rw.eng[eh] = e
	}
	if e.refs[t] < refMax {
		e.refs[t]++
	}
	delete(rw.pred, own)
}

func (m *refModel) predict(k proto.WorkerKey, hashes []proto.BlockHash, ttl time.Duration) {
	rw := m.w(k)
	for _, h := range hashes {
		counted := false
		for t := Tier(0); t < numTiers; t++ {
			if m.weights[t] > 0 && rw.holds(h, t) {
				counted = true
			}
		}
		if !counted {
			rw.pred[h] = m.now.Add(ttl)
		}
	}
	m.expire()
}

func (m *refModel) expire() {
	for _, rw := range m.workers {
		for h, exp := range rw.pred {
			if !exp.After(m.now) {
				delete(rw.pred, h)
			}
		}
	}
}

func (m *refModel) match(hashes []proto.BlockHash) map[proto.WorkerKey]WorkerMatch {
	out := map[proto.WorkerKey]WorkerMatch{}
	for k, rw := range m.workers {
		var r WorkerMatch
		conf := true
		for _, h := range hashes {
			best := 0.0
			for t := Tier(0); t < numTiers; t++ {
				if m.weights[t] > 0 && rw.holds(h, t) && m.weights[t] > best {
					best = m.weights[t]
				}
			}
			if best == 0 {
				conf = false
				if _, ok := rw.pred[h]; ok {
					best = m.predW
				}
			}
			if best == 0 {
				break
			}
			r.Blocks++
			if conf {
				r.Confirmed++
			}
			r.Score += best
			for t := Tier(0); t < numTiers; t++ {
				if m.weights[t] > 0 && rw.holds(h, t) {
					r.Tiers[t]++
				}
			}
		}
		if r.Blocks > 0 {
			r.Worker = k
			out[k] = r
		}
	}
	return out
}

// counts returns the distinct blocks held per tier and predicted, per worker.
func (m *refModel) counts(k proto.WorkerKey) (blocks [numTiers]int64, pred int64) {
	rw := m.workers[k]
	seen := map[ownTier]bool{}
	for _, e := range rw.eng {
		for t := Tier(0); t < numTiers; t++ {
			if e.refs[t] > 0 && !seen[ownTier{e.own, t}] {
				seen[ownTier{e.own, t}] = true
				blocks[t]++
			}
		}
	}
	return blocks, int64(len(rw.pred))
}

// TestAgainstReferenceModel drives the index and the naive model with the same random
// event streams (chains over shared documents, duplicate stores, removes of known and
// unknown blocks, token-less stores, tier changes, reused engine ids, clears (events only
// or everything), removals, predictions, clock steps) and compares every worker's Match
// result and counts after each step.
func TestAgainstReferenceModel(t *testing.T) {
	seeds := 16
	if testing.Short() {
		seeds = 4
	}
	for seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runModel(t, uint64(seed)) })
	}
}

func runModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	weights := [NumTiers]float64{TierGPU: 1, TierCPU: 0.5}
	// The model expires predictions exactly: no refresh is passed (predTips).
	ix, clk := newIndex(t, Options{TierWeights: &weights, PredictedWeight: 0.25, PredictedTTL: 5 * time.Second, ExactRefresh: true})
	m := &refModel{workers: map[proto.WorkerKey]*refWorker{}, weights: weights, predW: 0.25, now: clk.Now()}
	keys := []proto.WorkerKey{{ID: "a"}, {ID: "a", DPRank: 1}, {ID: "b"}, {ID: "c"}, {ID: "d"}}
	// Documents: a shared 3-block prefix, then 3 branches of 5 blocks, for two LoRAs.
	prefix := doc(1, 3)
	docs := [][]uint32{cat(prefix, doc(2, 5)), cat(prefix, doc(3, 5)), cat(prefix, doc(4, 5)), doc(5, 8)}
	loras := []string{"", "x"}
	salt := func(k proto.WorkerKey, variant int) uint64 {
		return uint64(len(k.ID)*7+k.DPRank*13+int(k.ID[0])) + uint64(variant)*1000
	}
	var reqs [][]proto.BlockHash
	for _, l := range loras {
		for _, d := range docs {
			reqs = append(reqs, chain(l, d))
		}
	}
	mediums := []string{"GPU", "GPU", "GPU", "CPU", "disk"}
	for stepN := 0; stepN < 400; stepN++ {
		k := keys[rng.IntN(len(keys))]
		d := docs[rng.IntN(len(docs))]
		lora := loras[rng.IntN(len(loras))]
		variant := 0
		if rng.IntN(10) == 0 {
			variant = 1 // another engine id for the same content
		}
		nb := len(d) / bs
		from := rng.IntN(nb)
		to := from + 1 + rng.IntN(nb-from)
		var desc string
		switch r := rng.IntN(100); {
		case r < 45:
			ev := stored(salt(k, variant), d, from, to, mediums[rng.IntN(len(mediums))], lora)
			if lora != "" {
				// Different LoRA, different engine ids.
				for i := range ev.BlockHashes {
					ev.BlockHashes[i] ^= 0x5555
				}
				ev.ParentHash ^= 0x5555
			}
			if rng.IntN(8) == 0 {
				ev.TokenIDs = nil // CPU offload style
			}
			if rng.IntN(20) == 0 {
				// Engine id reused for different content.
				ev.TokenIDs = doc(9+rng.IntN(3), to-from)
			}
			b := batch(ev)
			if rng.IntN(10) == 0 {
				b.DPRank = rng.IntN(2)
			}
			desc = fmt.Sprintf("%v store %d..%d lora %q medium %s tokens %v rank %d", k, from, to, lora, ev.Medium, ev.TokenIDs != nil, b.DPRank)
			ix.Apply(k, "m", b)
			m.apply(k, "m", b)
		case r < 75:
			ev := removed(salt(k, variant), d, from, to, mediums[rng.IntN(len(mediums))])
			if lora != "" {
				for i := range ev.BlockHashes {
					ev.BlockHashes[i] ^= 0x5555
				}
			}
			desc = fmt.Sprintf("%v remove %d..%d %s", k, from, to, ev.Medium)
			ix.Apply(k, "m", batch(ev))
			m.apply(k, "m", batch(ev))
		case r < 87:
			req := reqs[rng.IntN(len(reqs))]
			req = req[:1+rng.IntN(len(req))]
			ttl := time.Duration(1+rng.IntN(8)) * time.Second
			desc = fmt.Sprintf("%v predict %d blocks ttl %v", k, len(req), ttl)
			ix.Predict(k, req, ttl)
			m.predict(k, req, ttl)
		case r < 95:
			dt := time.Duration(rng.IntN(3000)) * time.Millisecond
			desc = fmt.Sprintf("advance %v", dt)
			clk.Advance(dt)
			m.now = clk.Now()
			ix.Sweep()
			m.expire()
		case r < 96:
			desc = fmt.Sprintf("%v AllBlocksCleared", k)
			ix.Apply(k, "m", batch(proto.Event{Kind: proto.AllBlocksCleared}))
			m.apply(k, "m", batch(proto.Event{Kind: proto.AllBlocksCleared}))
		case r < 98:
			desc = fmt.Sprintf("%v ClearEvents", k)
			ix.ClearEvents(k)
			if rw := m.workers[k]; rw != nil {
				rw.eng = map[proto.EngineHash]*refEntry{}
			}
		case r < 99:
			desc = fmt.Sprintf("%v ClearWorker", k)
			ix.ClearWorker(k)
			if m.workers[k] != nil {
				m.workers[k] = nil
				m.w(k)
			}
		default:
			desc = fmt.Sprintf("%v RemoveWorker", k)
			ix.RemoveWorker(k)
			delete(m.workers, k)
		}
		for ri, req := range reqs {
			want := m.match(req)
			got := ix.MatchTiers(req, nil)
			if len(got) != len(want) {
				t.Fatalf("step %d (%s): request %d: Match = %+v, model %+v", stepN, desc, ri, got, want)
			}
			for _, g := range got {
				w := want[g.Worker]
				if g.Blocks != w.Blocks || g.Confirmed != w.Confirmed || g.Score != w.Score || g.Tiers != w.Tiers {
					t.Fatalf("step %d (%s): request %d worker %v: got blocks %d confirmed %d score %v tiers %v, model %d %d %v %v",
						stepN, desc, ri, g.Worker, g.Blocks, g.Confirmed, g.Score, g.Tiers, w.Blocks, w.Confirmed, w.Score, w.Tiers)
				}
			}
		}
		for _, ws := range ix.Stats().Workers {
			if m.workers[ws.Worker] == nil {
				m.w(ws.Worker) // the index creates workers on first sight, even for dropped events
			}
			blocks, pred := m.counts(ws.Worker)
			if blocks != ws.Blocks || pred != ws.Predicted {
				t.Fatalf("step %d (%s): worker %v counts %v/%d, model %v/%d", stepN, desc, ws.Worker, ws.Blocks, ws.Predicted, blocks, pred)
			}
		}
		if stepN%5 == 0 {
			checkInvariants(t, ix)
		}
	}
	checkInvariants(t, ix)
}

// FuzzApply decodes arbitrary bytes into a stream of operations (6 bytes each: kind,
// worker, document, first block, length, flags) covering malformed events too (wrong
// block sizes, absurd sizes, missing tokens, unknown kinds, unknown parents), applies
// them to the index and to the reference model, and compares the results: bad input
// must neither panic nor corrupt the index.
func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 7, 0, 0, 1, 1, 0, 7, 0, 1, 0, 0, 2, 3, 0})
	f.Add([]byte{0, 0, 0, 0, 7, 0x10, 0, 0, 0, 3, 2, 0x20, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 1, 2, 0, 5, 0x40, 4, 1, 2, 0, 5, 0, 5, 1, 0, 0, 0, 0, 6, 1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 6*200 {
			in = in[:6*200]
		}
		ix, clk := newIndex(t, Options{})
		m := &refModel{workers: map[proto.WorkerKey]*refWorker{}, weights: [NumTiers]float64{TierGPU: 1}, predW: 1, now: clk.Now()}
		keys := []proto.WorkerKey{{ID: "a"}, {ID: "a", DPRank: 1}, {ID: "b"}, {ID: "c"}}
		prefix := doc(1, 2)
		docs := [][]uint32{cat(prefix, doc(2, 6)), cat(prefix, doc(3, 6)), doc(4, 8), doc(5, 8)}
		var reqs [][]proto.BlockHash
		for _, d := range docs {
			reqs = append(reqs, chain("", d), chain("x", d))
		}
		for ; len(in) >= 6; in = in[6:] {
			k := keys[int(in[1])%len(keys)]
			d := docs[int(in[2])%len(docs)]
			from := int(in[3]) % 8
			to := min(from+1+int(in[4])%8, 8)
			fl := in[5]
			lora := ""
			if fl&1 != 0 {
				lora = "x"
			}
			medium := []string{"GPU", "CPU", "", "weird"}[fl>>1&3]
			salt := uint64(k.DPRank*7+len(k.ID)) + uint64(fl>>3&1)*100
			var ev proto.Event
			switch in[0] % 8 {
			case 0, 1, 2:
				ev = stored(salt, d, from, to, medium, lora)
				switch fl >> 4 & 7 {
				case 1:
					ev.TokenIDs = nil
				case 2:
					ev.BlockSize = 3 // wrong size
				case 3:
					ev.BlockSize = 1<<62 + 1 // absurd size
				case 4:
					ev.TokenIDs = ev.TokenIDs[:len(ev.TokenIDs)-1]
				case 5:
					ev.ParentHash ^= 1 // unknown parent
				}
			case 3, 4:
				ev = removed(salt, d, from, to, medium)
			case 5:
				ev = proto.Event{Kind: proto.AllBlocksCleared}
			case 6:
				ev = proto.Event{Kind: proto.EventKind(in[4]), BlockHashes: []proto.EngineHash{proto.EngineHash(in[3])}}
			case 7:
				req := reqs[int(in[2])%len(reqs)]
				req = req[:1+from]
				ttl := time.Duration(1+in[4]%4) * time.Second
				ix.Predict(k, req, ttl)
				m.predict(k, req, ttl)
				clk.Advance(time.Duration(fl%3) * time.Second)
				m.now = clk.Now()
				continue
			}
			b := batch(ev)
			ix.Apply(k, "m", b)
			if ev.Kind >= proto.BlockStored && ev.Kind <= proto.AllBlocksCleared {
				m.apply(k, "m", b)
			} else {
				m.w(k)
				m.expire()
			}
		}
		for ri, req := range reqs {
			want := m.match(req)
			got := ix.MatchTiers(req, nil)
			if len(got) != len(want) {
				t.Fatalf("request %d: Match = %+v, model %+v", ri, got, want)
			}
			for _, g := range got {
				if w := want[g.Worker]; g.Blocks != w.Blocks || g.Confirmed != w.Confirmed {
					t.Fatalf("request %d worker %v: got %d/%d, model %d/%d", ri, g.Worker, g.Blocks, g.Confirmed, w.Blocks, w.Confirmed)
				}
			}
		}
		checkInvariants(t, ix)
	})
}
