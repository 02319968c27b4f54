package router

import (
	"encoding/json"
	"testing"
)

// FuzzPDBodies feeds the P/D body rewriting arbitrary request bodies and prefill
// answers: pdFields, requestedTokens, vllmPrefillBody, kvTransferParams,
// vllmDecodeBody and sglangBody never panic, and what they build is a JSON object with
// the protocol's fields. Seeded with real request and answer shapes.
//
//	nice -n 19 go test -run '^$' -fuzz '^FuzzPDBodies$' -fuzztime 10m ./router
func FuzzPDBodies(f *testing.F) {
	f.Add([]byte(pdStreamBody), []byte(`{"choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_engine_id":"e","remote_block_ids":[1,2],"remote_host":"10.0.0.1","remote_port":5600}}`))
	f.Add([]byte(`{"model":"m","prompt":["a","b"],"max_completion_tokens":7,"n":2}`), []byte(`{"kv_transfer_params":null}`))
	f.Add([]byte(`{}`), []byte(`{"kv_transfer_params":[1]}`))
	f.Add([]byte(`{"max_tokens":-1,"stream":"x"}`), []byte(`[]`))
	f.Add([]byte(`{"max_tokens":1e99}`), []byte(`{"kv_transfer_params":{}}`))
	f.Fuzz(func(t *testing.T, body, answer []byte) {
		fields, err := pdFields(body)
		if err != nil {
			return
		}
		if n := requestedTokens(fields); n < 1 || n > 1<<31 {
			t.Fatalf("requestedTokens = %d", n)
		}
		object := func(b []byte, err error) map[string]json.RawMessage {
			t.Helper()
			if err != nil {
				t.Fatalf("rewrite of %q: %v", body, err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil || m == nil {
				t.Fatalf("rewrite %q is not a JSON object: %v", b, err)
			}
			return m
		}
		p := object(vllmPrefillBody(fields))
		if string(p["max_tokens"]) != "1" || string(p["stream"]) != "false" || p["stream_options"] != nil {
			t.Fatalf("prefill body %s", p)
		}
		kvp, err := kvTransferParams(answer)
		if err == nil {
			d := object(vllmDecodeBody(fields, kvp))
			if kvp != nil {
				var params map[string]json.RawMessage
				if json.Unmarshal(d["kv_transfer_params"], &params) != nil || string(params["do_remote_prefill"]) != "true" {
					t.Fatalf("decode body %s", d)
				}
			}
		}
		s := object(sglangBody(fields, string(answer), len(answer), int64(len(body))-5))
		var room int64
		if json.Unmarshal(s["bootstrap_room"], &room) != nil || room < 0 {
			t.Fatalf("bootstrap_room %s", s["bootstrap_room"])
		}
	})
}
