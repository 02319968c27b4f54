package sim

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
)

type simResponse struct {
	ID                 string  `json:"id"`
	Object             string  `json:"object"`
	Status             string  `json:"status"`
	PreviousResponseID *string `json:"previous_response_id"`
	Output             []struct {
		Type    string `json:"type"`
		Role    string `json:"role"`
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	} `json:"output"`
	Usage *struct {
		InputTokens        int `json:"input_tokens"`
		OutputTokens       int `json:"output_tokens"`
		InputTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"input_tokens_details"`
	} `json:"usage"`
}

func respond(t *testing.T, url string, body map[string]any) simResponse {
	t.Helper()
	resp, out := post(t, url+"/v1/responses", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	var r simResponse
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func do(t *testing.T, method, url string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestResponsesStoreAndChain(t *testing.T) {
	f := startFleet(t, 2, nil)
	w, other := f.Workers()[0], f.Workers()[1]
	first := respond(t, w.URL(), map[string]any{"model": "kvsim", "instructions": "be brief", "input": "tell me a story", "max_output_tokens": 8})
	if !strings.HasPrefix(first.ID, "resp_") || first.Object != "response" || first.Status != "completed" ||
		len(first.Output) != 1 || first.Output[0].Content[0].Type != "output_text" || first.Usage == nil || first.Usage.OutputTokens == 0 {
		t.Fatalf("first %+v", first)
	}
	// The follow-up is prompted with the conversation so far: its input is longer and
	// its prefix is cached.
	second := respond(t, w.URL(), map[string]any{"model": "kvsim", "instructions": "be brief", "previous_response_id": first.ID,
		"input": []map[string]any{{"role": "user", "content": []map[string]any{{"type": "input_text", "text": "and then?"}}}}})
	if second.Usage.InputTokens <= first.Usage.InputTokens+first.Usage.OutputTokens || second.Usage.InputTokensDetails.CachedTokens == 0 ||
		second.PreviousResponseID == nil || *second.PreviousResponseID != first.ID {
		t.Fatalf("second %+v after %+v", second.Usage, first.Usage)
	}
	// Another worker does not hold it.
	resp, out := post(t, other.URL()+"/v1/responses", map[string]any{"model": "kvsim", "previous_response_id": first.ID, "input": "x"})
	if resp.StatusCode != 404 || !strings.Contains(string(out), "not found") {
		t.Fatalf("other worker: %d %s", resp.StatusCode, out)
	}
	if code, out := do(t, "GET", w.URL()+"/v1/responses/"+first.ID); code != 200 || !strings.Contains(string(out), first.ID) {
		t.Fatalf("GET %d %s", code, out)
	}
	if code, out := do(t, "POST", w.URL()+"/v1/responses/"+first.ID+"/cancel"); code != 200 {
		t.Fatalf("cancel %d %s", code, out)
	}
	if code, out := do(t, "DELETE", w.URL()+"/v1/responses/"+first.ID); code != 200 || !strings.Contains(string(out), `"deleted":true`) {
		t.Fatalf("DELETE %d %s", code, out)
	}
	if code, _ := do(t, "GET", w.URL()+"/v1/responses/"+first.ID); code != 404 {
		t.Fatalf("GET after DELETE: %d", code)
	}
	// store false: not retrievable.
	r := respond(t, w.URL(), map[string]any{"model": "kvsim", "input": "hi", "store": false, "max_output_tokens": 2})
	if code, _ := do(t, "GET", w.URL()+"/v1/responses/"+r.ID); code != 404 {
		t.Fatalf("GET of an unstored response: %d", code)
	}
}

func TestResponsesStream(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.StreamChunkTokens = 3 })
	w := f.Workers()[0]
	b, _ := json.Marshal(map[string]any{"model": "kvsim", "input": "hello", "stream": true, "max_output_tokens": 7})
	resp, err := http.Post(w.URL()+"/v1/responses", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var types []string
	var id, text string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Type     string `json:"type"`
			Delta    string `json:"delta"`
			Response *struct {
				ID string `json:"id"`
			} `json:"response"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatal(err)
		}
		types = append(types, ev.Type)
		if ev.Type == "response.created" {
			id = ev.Response.ID
		}
		text += ev.Delta
	}
	if len(types) < 6 || types[0] != "response.created" || types[len(types)-1] != "response.completed" || !strings.HasPrefix(id, "resp_") {
		t.Fatalf("events %v id %q", types, id)
	}
	if n := len(strings.Fields(text)); n != 7 {
		t.Fatalf("deltas %q: %d words", text, n)
	}
	if code, _ := do(t, "GET", w.URL()+"/v1/responses/"+id); code != 200 {
		t.Fatalf("streamed response not stored: %d", code)
	}
}

func TestAuxEndpoints(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	for _, p := range []string{"/detokenize", "/v1/rerank", "/rerank", "/v1/score", "/score", "/pooling", "/classify"} {
		resp, out := post(t, w.URL()+p, map[string]any{"model": "kvsim", "tokens": []int{1, 2}, "query": "q", "documents": []string{"a", "b"}, "input": "x"})
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", p, resp.StatusCode, out)
		}
	}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.WriteField("model", "kvsim")
	fw, _ := mw.CreateFormFile("file", "a.wav")
	_, _ = fw.Write([]byte("RIFF...."))
	_ = mw.Close()
	resp, err := http.Post(w.URL()+"/v1/audio/transcriptions", mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"text"`) {
		t.Fatalf("audio: %d %s", resp.StatusCode, out)
	}
}

// FuzzResponsesInput feeds arbitrary inputs to the Responses input decoder: it never
// panics, and every error is a 400 *apiError.
func FuzzResponsesInput(f *testing.F) {
	for _, s := range []string{`"hi"`, `[{"role":"user","content":"a"}]`, `[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]`,
		`[{"type":"function_call"}]`, `[{"role":"user","content":[{"type":"input_image"}]}]`, `null`, `{}`, `[1]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := responsesInput(raw); err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error %v is not a 400 apiError", err)
			}
		}
	})
}
