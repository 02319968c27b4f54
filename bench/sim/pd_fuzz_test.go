package sim

import (
	"errors"
	"testing"
)

// FuzzDecodePD feeds arbitrary kv_transfer_params and bootstrap_* values to the P/D
// decoder: it must never panic, every error is a 400 *apiError, and what it accepts is
// within bounds.
func FuzzDecodePD(f *testing.F) {
	seeds := [][4]string{
		{`{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`, "", "", ""},
		{`{"do_remote_prefill":true,"do_remote_decode":false,"remote_block_ids":[[1,2,3]],"remote_engine_id":"e","remote_request_id":"r","remote_host":"127.0.0.1","remote_port":5600,"tp_size":1}`, "", "", ""},
		{`{"do_remote_prefill":true,"remote_block_ids":[1,2],"remote_engine_id":"e","remote_request_id":"r","remote_host":"h","remote_port":1}`, "", "", ""},
		{`{"do_remote_prefill":true,"do_remote_decode":true}`, "", "", ""},
		{`{"remote_block_ids":[[-1]],"do_remote_prefill":true}`, "", "", ""},
		{`[]`, "", "", ""}, {`null`, "", "", ""}, {`"x"`, "", "", ""},
		{"", `"127.0.0.1"`, `8998`, `4611686018427387904`},
		{"", `["a"]`, `[1]`, `[1]`},
		{"", `"h"`, `null`, `1`},
		{"", `"a/b"`, `1`, `-1`},
		{`{"do_remote_decode":true}`, `"h"`, `1`, `1`},
	}
	for _, s := range seeds {
		f.Add([]byte(s[0]), []byte(s[1]), []byte(s[2]), []byte(s[3]))
	}
	f.Fuzz(func(t *testing.T, kv, host, port, room []byte) {
		raw := func(b []byte) []byte {
			if len(b) == 0 {
				return nil
			}
			return b
		}
		p, err := decodePD(raw(kv), raw(host), raw(port), raw(room))
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error %v is not a 400 apiError", err)
			}
			return
		}
		if p == nil {
			return
		}
		switch p.kind {
		case pdVLLMPrefill:
		case pdVLLMDecode:
			if p.engineID == "" || p.requestID == "" || p.host == "" || checkHost(p.host) != nil || len(p.blockIDs) == 0 ||
				p.port < 1 || p.port > 65535 || len(p.blockIDs) > maxPDBlockIDs ||
				len(p.engineID) > maxPDString || len(p.requestID) > maxPDString || len(p.host) > maxPDHost {
				t.Fatalf("accepted %+v", p)
			}
			for _, id := range p.blockIDs {
				if id < 0 || id > 1<<31-1 {
					t.Fatalf("accepted block id %d", id)
				}
			}
		case pdSGLang:
			if p.host == "" || checkHost(p.host) != nil || p.port < 0 || p.port > 65535 || p.room > 1<<63-1 {
				t.Fatalf("accepted %+v", p)
			}
		default:
			t.Fatalf("kind %d", p.kind)
		}
	})
}

// FuzzDecodePull feeds arbitrary bodies to the side channel's pull decoder.
func FuzzDecodePull(f *testing.F) {
	for _, s := range []string{
		`{"engine_id":"kvsim-p0-x-dp0","request_id":"cmpl-p0-1","block_ids":[[0,1,2]]}`,
		`{"engine_id":"e","request_id":"r","block_ids":[0,1]}`,
		`{"room":5,"wait_ms":1000,"tokens":300}`,
		`{"engine_id":"e","request_id":"r","block_ids":[1],"tokens":-1}`,
		`{"room":9223372036854775808}`,
		`{"room":1,"engine_id":"e"}`,
		`{"engine_id":"e"}`, `{}`, `[]`, `{"x":1}`, `{"room":1}{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodePull(body)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error %v is not a 400 apiError", err)
			}
			return
		}
		if p.Tokens < 0 || p.Tokens > 1<<31-1 {
			t.Fatalf("accepted tokens %d", p.Tokens)
		}
		if p.Room != nil {
			if *p.Room > 1<<63-1 || p.WaitMS < 0 || p.EngineID != "" || p.RequestID != "" {
				t.Fatalf("accepted %+v", p)
			}
			return
		}
		if p.EngineID == "" || p.RequestID == "" || len(p.EngineID) > maxPDString || len(p.RequestID) > maxPDString || len(p.blockIDs) > maxPDBlockIDs {
			t.Fatalf("accepted %+v", p)
		}
	})
}
