package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream"
)

func TestDecodeIndexQuery(t *testing.T) {
	huge := `{"model":"m","token_ids":[` + strings.Repeat("1,", admin.MaxQueryTokens) + `1]}`
	for _, tc := range []struct {
		name, body string
		want       admin.IndexQuery
		err        string // substring; "" for success
		tooLarge   bool
	}{
		{name: "prompt", body: `{"model":"m","prompt":"hi \"you\""}`, want: admin.IndexQuery{Model: "m", Prompt: []byte(`"hi \"you\""`)}},
		{name: "token ids", body: `{"model":"m","lora":"a","cache_salt":"s","token_ids":[1, 2,4294967295]}`,
			want: admin.IndexQuery{Model: "m", LoRA: "a", CacheSalt: "s", Prompt: []byte(`[1,2,4294967295]`)}},
		{name: "messages", body: `{"model":"m","messages":[{"role":"user","content":"x"}]}`,
			want: admin.IndexQuery{Model: "m", Messages: []byte(`[{"role":"user","content":"x"}]`)}},
		{name: "block hashes", body: `{"model":"m","block_hashes":[18446744073709551615,0]}`,
			want: admin.IndexQuery{Model: "m", BlockHashes: []uint64{1<<64 - 1, 0}}},
		{name: "empty block hashes", body: `{"model":"m","block_hashes":[]}`, want: admin.IndexQuery{Model: "m", BlockHashes: []uint64{}}},
		{name: "null other", body: `{"model":"m","prompt":"x","messages":null}`, want: admin.IndexQuery{Model: "m", Prompt: []byte(`"x"`)}},
		{name: "no model", body: `{"prompt":"x"}`, err: `"model" is required`},
		{name: "none", body: `{"model":"m"}`, err: "exactly one"},
		{name: "two", body: `{"model":"m","prompt":"x","token_ids":[1]}`, err: "exactly one"},
		{name: "prompt not string", body: `{"model":"m","prompt":[1,2]}`, err: "prompt"},
		{name: "messages not array", body: `{"model":"m","messages":{}}`, err: "must be an array"},
		{name: "negative token", body: `{"model":"m","token_ids":[-1]}`, err: "token_ids"},
		{name: "token over 32 bits", body: `{"model":"m","token_ids":[4294967296]}`, err: "token_ids"},
		{name: "token float", body: `{"model":"m","token_ids":[1.5]}`, err: "token_ids"},
		{name: "hash string", body: `{"model":"m","block_hashes":["1"]}`, err: "block_hashes"},
		{name: "model number", body: `{"model":1,"prompt":"x"}`, err: "model"},
		{name: "unknown key", body: `{"model":"m","prompt":"x","extra":1}`, err: "unknown field"},
		{name: "trailing", body: `{"model":"m","prompt":"x"} {}`, err: "trailing data"},
		{name: "not object", body: `[1]`, err: "body"},
		{name: "empty", body: ``, err: "body"},
		{name: "truncated", body: `{"model":"m","prompt":"x`, err: "body"},
		{name: "too many tokens", body: huge, tooLarge: true},
		{name: "too many hashes", body: `{"model":"m","block_hashes":[` + strings.Repeat("1,", admin.MaxQueryBlocks) + `1]}`, tooLarge: true},
		{name: "body too large", body: `{"model":"m","prompt":"` + strings.Repeat("x", admin.MaxQueryBytes) + `"}`, tooLarge: true},
	} {
		q, err := admin.DecodeIndexQuery(strings.NewReader(tc.body))
		switch {
		case tc.tooLarge:
			if err == nil || !strings.Contains(err.Error(), "too large") {
				t.Errorf("%s: err %v, want too large", tc.name, err)
			}
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, admin.ErrBadQuery) {
				t.Errorf("%s: err %v, want ErrBadQuery containing %q", tc.name, err, tc.err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		default:
			if fmt.Sprintf("%+v", q) != fmt.Sprintf("%+v", tc.want) {
				t.Errorf("%s: got %+v, want %+v", tc.name, q, tc.want)
			}
		}
	}
}

// FuzzDecodeIndexQuery: any body decodes or fails with an error, never a panic; a
// decoded query has a model and exactly one input, within the limits.
func FuzzDecodeIndexQuery(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","prompt":"hello"}`,
		`{"model":"m","lora":"a","cache_salt":"s","token_ids":[1,2,3]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}`,
		`{"model":"m","block_hashes":[1,18446744073709551615]}`,
		`{"model":"m","prompt":"x"}  `,
		`{"model":"m","token_ids":[1e3]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := admin.DecodeIndexQuery(bytes.NewReader(body))
		if err != nil {
			return
		}
		n := 0
		for _, given := range []bool{q.Prompt != nil, q.Messages != nil, q.BlockHashes != nil} {
			if given {
				n++
			}
		}
		if q.Model == "" || n != 1 || len(q.BlockHashes) > admin.MaxQueryBlocks {
			t.Fatalf("decoded %+v from %q", q, body)
		}
		if q.Prompt != nil && !json.Valid(q.Prompt) || q.Messages != nil && !json.Valid(q.Messages) {
			t.Fatalf("decoded invalid JSON %+v from %q", q, body)
		}
	})
}

// fakeQuerier answers every query for model "m" with a fixed answer, and records the
// last query.
type fakeQuerier struct{ last *admin.IndexQuery }

func (f *fakeQuerier) QueryIndex(_ context.Context, q *admin.IndexQuery) (admin.IndexAnswer, error) {
	f.last = q
	if q.Model != "m" {
		return admin.IndexAnswer{}, fmt.Errorf("%w: %q", admin.ErrModelNotFound, q.Model)
	}
	return admin.IndexAnswer{BlockSize: 16, Blocks: 3, Exact: true, Workers: []admin.IndexWorker{{ID: "a", Blocks: 2, Confirmed: 1, Predicted: 1}}}, nil
}

type indexAPI struct {
	h  http.Handler
	ix *indexer.Index
	q  *fakeQuerier
}

func newIndexAPI(t *testing.T, requireToken bool) *indexAPI {
	t.Helper()
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	q := &fakeQuerier{}
	h, err := admin.New(admin.Options{Backend: admin.Backend{Pool: pool, Index: ix, Querier: q, MaxRestoreBytes: 1 << 20}, Token: "tok", RequireToken: requireToken})
	if err != nil {
		t.Fatal(err)
	}
	return &indexAPI{h: h, ix: ix, q: q}
}

func (a *indexAPI) do(method, path, token string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, req)
	return rec
}

// openAIError is the OpenAI error shape.
type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	} `json:"error"`
}

func TestIndexQueryEndpoint(t *testing.T) {
	a := newIndexAPI(t, false)
	rec := a.do("POST", "/api/index/query", "", []byte(`{"model":"m","token_ids":[5,6]}`))
	if rec.Code != 200 {
		t.Fatalf("query without token on loopback: %d %s", rec.Code, rec.Body)
	}
	var ans admin.IndexAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || ans.Blocks != 3 || len(ans.Workers) != 1 || ans.Workers[0].Predicted != 1 {
		t.Fatalf("answer %s (%v)", rec.Body, err)
	}
	if string(a.q.last.Prompt) != "[5,6]" {
		t.Errorf("querier got prompt %s", a.q.last.Prompt)
	}
	for _, tc := range []struct {
		body   string
		status int
		code   string
	}{
		{`{"model":"nope","prompt":"x"}`, 404, "model_not_found"},
		{`{"model":"m","prompt":1}`, 400, "invalid_request"},
		{`{"model":"m","token_ids":[` + strings.Repeat("7,", admin.MaxQueryTokens) + `7]}`, 413, "request_too_large"},
		{`{"model":"m","prompt":"x"}x`, 400, "invalid_request"},
	} {
		rec := a.do("POST", "/api/index/query", "", []byte(tc.body))
		var e openAIError
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
			t.Errorf("%.60s: %d %.200s, want %d %s", tc.body, rec.Code, rec.Body, tc.status, tc.code)
		}
	}
	// Beyond loopback the query needs the token, as every read does.
	closed := newIndexAPI(t, true)
	if rec := closed.do("POST", "/api/index/query", "", []byte(`{"model":"m","prompt":"x"}`)); rec.Code != 401 {
		t.Errorf("query without the token beyond loopback: %d", rec.Code)
	}
	if rec := closed.do("POST", "/api/index/query", "tok", []byte(`{"model":"m","prompt":"x"}`)); rec.Code != 200 {
		t.Errorf("query with the token beyond loopback: %d", rec.Code)
	}
}

func TestIndexSnapshotRestoreEndpoints(t *testing.T) {
	src := newIndexAPI(t, false)
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), make([]uint32, 64), 16)
	src.ix.Predict(proto.WorkerKey{ID: "a"}, hashes, 0)
	rec := src.do("GET", "/api/index/snapshot", "", nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/octet-stream" || !bytes.HasPrefix(rec.Body.Bytes(), []byte("KVRIDX")) {
		t.Fatalf("snapshot: %d %q %.20q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes())
	}
	snap := rec.Body.Bytes()

	dst := newIndexAPI(t, false)
	if rec := dst.do("POST", "/api/index/restore", "", snap); rec.Code != 401 {
		t.Errorf("restore without the token: %d, want 401 (a write)", rec.Code)
	}
	if rec := dst.do("POST", "/api/index/restore", "wrong", snap); rec.Code != 401 {
		t.Errorf("restore with a wrong token: %d, want 401", rec.Code)
	}
	// A corrupt snapshot (cut short; another version) is refused and changes nothing.
	other := bytes.Clone(snap)
	other[6] = 9
	for name, body := range map[string][]byte{"truncated": snap[:len(snap)-2], "version 9": other, "empty": nil} {
		rec := dst.do("POST", "/api/index/restore", "tok", body)
		var e openAIError
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || rec.Code != 400 || e.Error.Code != "invalid_request" {
			t.Errorf("%s: %d %s, want 400 invalid_request", name, rec.Code, rec.Body)
		}
		if n := len(dst.ix.Match(hashes, nil)); n != 0 {
			t.Errorf("%s: a refused snapshot installed %d workers", name, n)
		}
	}
	// One more worker of 100k entries (1.6 MB) past the 1 MiB bound.
	big := append(bytes.Clone(snap[:len(snap)-1]), 1, 1, 'b', 0, 0xa0, 0x8d, 0x06)
	big = append(big, bytes.Repeat([]byte{0xff}, 16*100000)...)
	if rec := dst.do("POST", "/api/index/restore", "tok", big); rec.Code != 413 {
		t.Errorf("restore over the size bound: %d %s, want 413", rec.Code, rec.Body)
	}
	rec = dst.do("POST", "/api/index/restore", "tok", snap)
	var res admin.RestoreResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || rec.Code != 200 || res.Blocks != len(hashes) || res.Workers != 1 {
		t.Fatalf("restore: %d %s", rec.Code, rec.Body)
	}
	if ms := dst.ix.Match(hashes, nil); len(ms) != 1 || ms[0].Blocks != len(hashes) || ms[0].Confirmed != 0 {
		t.Errorf("restored match %+v, want worker a holding %d predicted blocks", ms, len(hashes))
	}
}
