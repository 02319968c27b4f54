package chat

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// ErrUnsupportedContent is wrapped by ParseRequest errors for requests this package
// cannot render the way the engine would (images, audio, continue_final_message);
// the router then asks the engine to tokenize.
var ErrUnsupportedContent = errors.New("unsupported chat content")

// Request is an OpenAI chat completion request reduced to what tokenization needs.
type Request struct {
	// Messages are the conversation in the shape vLLM hands to the template.
	Messages []jinja.Value
	// Options carries tools, documents, add_generation_prompt and
	// chat_template_kwargs.
	Options Options
	// AddSpecialTokens is the request's add_special_tokens (vLLM extension, default
	// false: the template already writes BOS).
	AddSpecialTokens bool
}

// ParseRequest decodes an OpenAI chat completion request body and converts it the
// way vLLM's chat utilities do before rendering (vllm/entrypoints/chat_utils.py,
// "string" content format):
//
//   - content given as a list of text parts becomes the parts joined with "\n";
//     null content becomes ""; templates that loop over content parts get them as
//     a list instead (Options.ContentParts), like vLLM's "openai" content format;
//   - each message is rebuilt as {role, content}, then tool_calls (assistant, with
//     string arguments decoded to objects), reasoning_content, tool_call_id (tool)
//     and name, in that order;
//   - each tool becomes {"type", "function": {"name", "description", "parameters"}},
//     missing fields null, as vLLM's pydantic model_dump writes them.
//
// add_generation_prompt defaults to true, as in vLLM.
func ParseRequest(body []byte) (*Request, error) {
	v, err := jinja.FromJSON(body)
	if err != nil {
		return nil, fmt.Errorf("decode chat request: %w", err)
	}
	root, ok := v.(*jinja.Dict)
	if !ok {
		return nil, errors.New("decode chat request: not a JSON object")
	}
	req := &Request{Options: Options{AddGenerationPrompt: true}}
	rawMsgs, ok := get(root, "messages").([]jinja.Value)
	if !ok {
		return nil, errors.New("chat request: messages must be a list")
	}
	req.Options.ContentParts = make([][]string, len(rawMsgs))
	for i, m := range rawMsgs {
		msg, parts, err := convertMessage(m)
		if err != nil {
			return nil, fmt.Errorf("chat request message %d: %w", i, err)
		}
		req.Messages = append(req.Messages, msg)
		req.Options.ContentParts[i] = parts
	}
	if err := applyOptions(req, root); err != nil {
		return nil, err
	}
	return req, nil
}

// applyOptions reads the request's members besides messages from root into req.
func applyOptions(req *Request, root *jinja.Dict) error {
	if tools, ok := get(root, "tools").([]jinja.Value); ok {
		req.Options.Tools = make([]jinja.Value, 0, len(tools))
		for i, t := range tools {
			td, err := convertTool(t)
			if err != nil {
				return fmt.Errorf("chat request tool %d: %w", i, err)
			}
			req.Options.Tools = append(req.Options.Tools, td)
		}
	}
	if docs, ok := get(root, "documents").([]jinja.Value); ok {
		req.Options.Documents = docs
	}
	if b, ok := get(root, "add_generation_prompt").(bool); ok {
		req.Options.AddGenerationPrompt = b
	}
	if b, ok := get(root, "continue_final_message").(bool); ok && b {
		return fmt.Errorf("%w: continue_final_message", ErrUnsupportedContent)
	}
	if b, ok := get(root, "add_special_tokens").(bool); ok {
		req.AddSpecialTokens = b
	}
	if s, ok := get(root, "chat_template").(string); ok && s != "" {
		return fmt.Errorf("%w: a per-request chat_template", ErrUnsupportedContent)
	}
	if kw, ok := get(root, "chat_template_kwargs").(*jinja.Dict); ok {
		req.Options.Vars = map[string]jinja.Value{}
		for _, k := range kw.Keys() {
			req.Options.Vars[k], _ = kw.Get(k)
		}
	}
	return nil
}

func get(d *jinja.Dict, k string) jinja.Value {
	v, _ := d.Get(k)
	return v
}

// convertMessage returns the template's view of one message and its content as
// text parts: [s] for a string, none for null, the parts of a list.
func convertMessage(m jinja.Value) (jinja.Value, []string, error) {
	in, ok := m.(*jinja.Dict)
	if !ok {
		return nil, nil, errors.New("not an object")
	}
	role, ok := get(in, "role").(string)
	if !ok {
		return nil, nil, errors.New("role must be a string")
	}
	var texts []string
	out := jinja.NewDict()
	out.Set("role", role)
	switch c := get(in, "content").(type) {
	case nil:
		texts = []string{}
		out.Set("content", "")
	case string:
		texts = []string{c}
		out.Set("content", c)
	case []jinja.Value:
		texts = []string{}
		for _, p := range c {
			pd, ok := p.(*jinja.Dict)
			if !ok {
				return nil, nil, errors.New("content part is not an object")
			}
			switch typ, _ := get(pd, "type").(string); typ {
			case "text", "input_text", "output_text", "refusal":
				key := "text"
				if typ == "refusal" {
					key = "refusal"
				}
				s, ok := get(pd, key).(string)
				if !ok {
					return nil, nil, fmt.Errorf("%s part without %s", typ, key)
				}
				texts = append(texts, s)
			default:
				return nil, nil, fmt.Errorf("%w: content part %q", ErrUnsupportedContent, typ)
			}
		}
		out.Set("content", strings.Join(texts, "\n"))
	default:
		return nil, nil, errors.New("content must be a string, a list of parts or null")
	}
	switch role {
	case "assistant":
		if tc, ok := get(in, "tool_calls").([]jinja.Value); ok {
			calls := make([]jinja.Value, len(tc))
			for i, c := range tc {
				call, err := convertToolCall(c)
				if err != nil {
					return nil, nil, fmt.Errorf("tool call %d: %w", i, err)
				}
				calls[i] = call
			}
			out.Set("tool_calls", calls)
		}
		if rc, ok := get(in, "reasoning_content").(string); ok {
			out.Set("reasoning_content", rc)
		}
	case "tool":
		if id, ok := in.Get("tool_call_id"); ok {
			out.Set("tool_call_id", id)
		}
	}
	if name, ok := get(in, "name").(string); ok {
		out.Set("name", name)
	}
	return out, texts, nil
}

// convertToolCall copies a tool call and decodes its function.arguments string.
func convertToolCall(c jinja.Value) (jinja.Value, error) {
	in, ok := c.(*jinja.Dict)
	if !ok {
		return nil, errors.New("not an object")
	}
	out := jinja.NewDict()
	for _, k := range in.Keys() {
		v, _ := in.Get(k)
		if fn, ok := v.(*jinja.Dict); ok && k == "function" {
			f2 := jinja.NewDict()
			for _, fk := range fn.Keys() {
				fv, _ := fn.Get(fk)
				if s, ok := fv.(string); ok && fk == "arguments" {
					args, err := jinja.FromJSON([]byte(s))
					if err != nil {
						return nil, fmt.Errorf("arguments are not JSON: %w", err)
					}
					fv = args
				}
				f2.Set(fk, fv)
			}
			v = f2
		}
		out.Set(k, v)
	}
	return out, nil
}

func convertTool(t jinja.Value) (jinja.Value, error) {
	in, ok := t.(*jinja.Dict)
	if !ok {
		return nil, errors.New("not an object")
	}
	fn, ok := get(in, "function").(*jinja.Dict)
	if !ok {
		return nil, errors.New("function must be an object")
	}
	typ, ok := get(in, "type").(string)
	if !ok {
		typ = "function"
	}
	f := jinja.NewDict()
	for _, k := range []string{"name", "description", "parameters"} {
		f.Set(k, get(fn, k))
	}
	out := jinja.NewDict()
	out.Set("type", typ)
	out.Set("function", f)
	return out, nil
}
