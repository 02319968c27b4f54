package chat

import (
	"errors"
	"slices"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

func TestParseRequest(t *testing.T) {
	req, err := ParseRequest([]byte(`{"model":"m","messages":[
		{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"name":"bob"},
		{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"x\": 1.0, \"y\": [1]}"}}]},
		{"role":"tool","tool_call_id":"c1","content":"42"}],
		"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
		"add_generation_prompt":false,"chat_template_kwargs":{"enable_thinking":false}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := jinja.ToJSON(req.Messages, jinja.JSONOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"role": "user", "content": "a\nb", "name": "bob"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1.0, "y": [1]}}}]}, {"role": "tool", "content": "42", "tool_call_id": "c1"}]`
	if got != want {
		t.Errorf("messages\n got  %s\n want %s", got, want)
	}
	tools, _ := jinja.ToJSON(req.Options.Tools, jinja.JSONOptions{})
	if want := `[{"type": "function", "function": {"name": "f", "description": null, "parameters": {"type": "object"}}}]`; tools != want {
		t.Errorf("tools\n got  %s\n want %s", tools, want)
	}
	if req.Options.AddGenerationPrompt {
		t.Error("add_generation_prompt: got true, want false")
	}
	if v := req.Options.Vars["enable_thinking"]; v != false {
		t.Errorf("enable_thinking: got %v", v)
	}
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		body        string
		unsupported bool
	}{
		{`not json`, false},
		{`[]`, false},
		{`{"messages": "x"}`, false},
		{`{"messages": [{"content": "no role"}]}`, false},
		{`{"messages": [{"role": "user", "content": 5}]}`, false},
		{`{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}]}`, false},
		{`{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}`, true},
		{`{"messages": [{"role": "user", "content": "x"}], "continue_final_message": true}`, true},
	}
	for _, tt := range tests {
		_, err := ParseRequest([]byte(tt.body))
		if err == nil {
			t.Errorf("ParseRequest(%s): no error", tt.body)
			continue
		}
		if errors.Is(err, ErrUnsupportedContent) != tt.unsupported {
			t.Errorf("ParseRequest(%s): %v, unsupported want %v", tt.body, err, tt.unsupported)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := ParseConfig([]byte(`{"chat_template": "{% if x %}"}`)); err == nil {
		t.Error("unparsable template accepted")
	}
	c, err := ParseConfig([]byte(`{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T{{ bos_token }}"}], "bos_token": {"content": "<s>"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := c.Render(nil, Options{}); err != nil || s != "D" {
		t.Errorf("default template: %q, %v", s, err)
	}
	if s, err := c.Render(nil, Options{Tools: []jinja.Value{}}); err != nil || s != "T<s>" {
		t.Errorf("tool_use template: %q, %v", s, err)
	}
	empty, err := ParseConfig([]byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Render(nil, Options{}); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("no template: got %v", err)
	}
}

// FuzzParseRequest checks that no request body panics, and that a request that
// renders always renders to the same prompt and encodes, through the encoder's
// conversation cache (shared by every input of the run, so it holds earlier inputs'
// prompts), to exactly the ids a cold encode of that prompt gives.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	f.Add([]byte(`{"messages":[{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":"{}"}}]}],"tools":[{"type":"function","function":{"name":"f"}}]}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"chat_template_kwargs":{"enable_thinking":false}}`))
	enc := loadEncoder(f, "qwen3")
	f.Fuzz(func(t *testing.T, body []byte) {
		if _, err := ParseRequest(body); err != nil {
			return
		}
		ids, err := enc.EncodeChat(body)
		prompt, req, rerr := enc.Render(body)
		if (err == nil) != (rerr == nil) {
			t.Fatalf("EncodeChat err %v, Render err %v", err, rerr)
		}
		if err != nil {
			return
		}
		if again, _, _ := enc.Render(body); again != prompt {
			t.Fatalf("two renders differ:\n%q\n%q", prompt, again)
		}
		if want := enc.Tokenizer().Encode(prompt, req.AddSpecialTokens); !slices.Equal(ids, want) {
			t.Fatalf("prompt %q: EncodeChat %v, cold Encode %v", prompt, ids, want)
		}
	})
}
