package kvevents

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// An adapter's BlockStored carries lora_id and lora_name, and the base model's carries
// nil for both, in every layout, as read by kvroute's own decoder; SGLang has lora_id
// only.
func TestEncodeLoRA(t *testing.T) {
	for _, f := range []Format{
		{Engine: EngineVLLM, Layout: LayoutArray},
		{Engine: EngineVLLM, Layout: LayoutMap},
		{Engine: EngineVLLM, Layout: LayoutMapBatch},
		{Engine: EngineSGLang, Layout: LayoutArray},
	} {
		evs := []Event{
			{Kind: proto.BlockStored, Hashes: []uint64{1, 2}, Tokens: make([]uint32, 8), BlockSize: 4, LoRAName: "sql", LoRAID: 2},
			{Kind: proto.BlockStored, Hashes: []uint64{3}, Tokens: make([]uint32, 4), BlockSize: 4},
		}
		var b proto.Batch
		if err := proto.DecodeBatch(NewEncoder(f).Encode(1, 0, evs), &b); err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		wantName := "sql"
		if f.Engine == EngineSGLang {
			wantName = ""
		}
		var got []proto.Event
		for _, ev := range b.Events {
			if ev.Kind == proto.BlockStored {
				got = append(got, ev)
			}
		}
		last := got[len(got)-1]
		for _, ev := range got[:len(got)-1] {
			if ev.LoRAName != wantName || ev.LoRAID != 2 {
				t.Errorf("%+v: adapter event has lora %q id %d", f, ev.LoRAName, ev.LoRAID)
			}
		}
		if last.LoRAName != "" || last.LoRAID != 0 {
			t.Errorf("%+v: base event has lora %q id %d", f, last.LoRAName, last.LoRAID)
		}
	}
}
