package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// Config is what a tokenizer_config.json says about chat: the templates and the
// special-token strings templates see (bos_token, eos_token, ...). It is immutable
// and safe for concurrent use.
type Config struct {
	// Templates maps a template name to its parsed template; a config with a single
	// string template names it "default".
	Templates map[string]*jinja.Template
	// iteratesContent holds the names of templates that loop over a message's
	// content parts; vLLM detects these and passes such templates content as a list
	// of {"type": "text", "text": ...} parts (its "openai" content format).
	iteratesContent map[string]bool
	// SpecialTokens holds bos_token, eos_token, unk_token, pad_token, sep_token,
	// cls_token and mask_token when set, as transformers' special_tokens_map does.
	SpecialTokens map[string]string
}

// ErrNoTemplate is returned when the config has no chat template to render with.
var ErrNoTemplate = errors.New("no chat template")

// LoadConfig reads tokenizer_config.json, or the one inside a directory.
func LoadConfig(path string) (*Config, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "tokenizer_config.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load chat config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("load chat config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes the contents of a tokenizer_config.json and parses its chat
// templates. A template that does not parse is an error here, not at render time.
// A config without a template is valid; Render then returns ErrNoTemplate.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode tokenizer_config.json: %w", err)
	}
	c := &Config{Templates: map[string]*jinja.Template{}, SpecialTokens: map[string]string{}, iteratesContent: map[string]bool{}}
	for _, k := range []string{"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"} {
		if s, ok := tokenString(raw[k]); ok {
			c.SpecialTokens[k] = s
		}
	}
	if t, ok := raw["chat_template"]; ok && string(t) != "null" {
		var src string
		if err := json.Unmarshal(t, &src); err == nil {
			tmpl, err := jinja.Parse(src)
			if err != nil {
				return nil, fmt.Errorf("chat_template: %w", err)
			}
			c.Templates["default"] = tmpl
			c.iteratesContent["default"] = contentLoopRe.MatchString(src)
		} else {
			var named []struct {
				Name     string `json:"name"`
				Template string `json:"template"`
			}
			if err := json.Unmarshal(t, &named); err != nil {
				return nil, fmt.Errorf("chat_template is neither a string nor a list of named templates: %w", err)
			}
			for _, n := range named {
				tmpl, err := jinja.Parse(n.Template)
				if err != nil {
					return nil, fmt.Errorf("chat_template %q: %w", n.Name, err)
				}
				c.Templates[n.Name] = tmpl
				c.iteratesContent[n.Name] = contentLoopRe.MatchString(n.Template)
			}
		}
	}
	return c, nil
}

// contentLoopRe finds a for loop over a message's content, the signal vLLM's
// content-format detection looks for (vllm/entrypoints/chat_utils.py).
var contentLoopRe = regexp.MustCompile(`\{%-?\s*for\s+\w+\s+in\s+\w+(\[['"]content['"]\]|\.content)\s*-?%\}`)

// tokenString reads a special token written as a string or as an AddedToken object.
func tokenString(b json.RawMessage) (string, bool) {
	if len(b) == 0 || string(b) == "null" {
		return "", false
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		return s, true
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if json.Unmarshal(b, &obj) == nil && obj.Content != nil {
		return *obj.Content, true
	}
	return "", false
}

// Options are the arguments of one render beyond the messages, as transformers'
// apply_chat_template takes them.
type Options struct {
	// AddGenerationPrompt appends the assistant header so the model answers.
	AddGenerationPrompt bool
	// Tools are the tool definitions, nil when the request has none (the template
	// then sees tools = none).
	Tools []jinja.Value
	// Documents are retrieval documents for RAG templates, nil when none.
	Documents []jinja.Value
	// Template names one of several templates; "" picks as transformers does:
	// "tool_use" when tools are given and it exists, else "default".
	Template string
	// ContentParts holds, per message, its content as text parts: [s] for a
	// string, none for null, the parts of a list (nil: use the content string).
	// Templates that loop over content parts see them as
	// [{"type": "text", "text": ...}], as vLLM passes them; other templates see
	// the parts joined with "\n".
	ContentParts [][]string
	// Vars are extra template variables (chat_template_kwargs, e.g.
	// enable_thinking). They override the special tokens but not messages, tools,
	// documents or add_generation_prompt.
	Vars map[string]jinja.Value
}

// pick returns the template to render with.
func (c *Config) pick(o *Options) (*jinja.Template, string, error) {
	name := o.Template
	if name == "" {
		if _, ok := c.Templates["tool_use"]; ok && o.Tools != nil {
			name = "tool_use"
		} else {
			name = "default"
		}
	}
	t, ok := c.Templates[name]
	if !ok {
		if len(c.Templates) == 0 {
			return nil, "", ErrNoTemplate
		}
		return nil, "", fmt.Errorf("%w named %q", ErrNoTemplate, name)
	}
	return t, name, nil
}

// asParts rewrites each message's content as a list of text parts.
func asParts(messages []jinja.Value, parts [][]string) []jinja.Value {
	out := make([]jinja.Value, len(messages))
	for i, m := range messages {
		d, ok := m.(*jinja.Dict)
		if !ok {
			out[i] = m
			continue
		}
		var texts []string
		if i < len(parts) && parts[i] != nil {
			texts = parts[i]
		} else if s, ok := get(d, "content").(string); ok {
			texts = []string{s}
		}
		list := make([]jinja.Value, len(texts))
		for k, t := range texts {
			p := jinja.NewDict()
			p.Set("type", "text")
			p.Set("text", t)
			list[k] = p
		}
		nd := jinja.NewDict()
		for _, k := range d.Keys() {
			v, _ := d.Get(k)
			if k == "content" {
				v = list
			}
			nd.Set(k, v)
		}
		out[i] = nd
	}
	return out
}

// Render renders messages (each a *jinja.Dict with role, content, ...) with the
// config's template.
func (c *Config) Render(messages []jinja.Value, o Options) (string, error) {
	out, _, err := c.render(messages, o, nil, false)
	return out, err
}

// RenderFrom is Render that also returns the render's jinja.Prior and resumes from
// prior, the Prior of an earlier render of the same conversation (nil: none): the
// template's loop over the messages skips the earlier messages that render as they
// did then (jinja.Template.RenderFrom). The output is Render's.
func (c *Config) RenderFrom(messages []jinja.Value, o Options, prior *jinja.Prior) (string, *jinja.Prior, error) {
	return c.render(messages, o, prior, true)
}

func (c *Config) render(messages []jinja.Value, o Options, prior *jinja.Prior, resume bool) (string, *jinja.Prior, error) {
	t, name, err := c.pick(&o)
	if err != nil {
		return "", nil, err
	}
	if c.iteratesContent[name] {
		messages = asParts(messages, o.ContentParts)
	}
	vars := make(map[string]jinja.Value, len(c.SpecialTokens)+len(o.Vars)+4)
	for k, v := range c.SpecialTokens {
		vars[k] = v
	}
	for k, v := range o.Vars {
		vars[k] = v
	}
	vars["messages"] = messages
	vars["tools"] = nil
	if o.Tools != nil {
		vars["tools"] = o.Tools
	}
	vars["documents"] = nil
	if o.Documents != nil {
		vars["documents"] = o.Documents
	}
	vars["add_generation_prompt"] = o.AddGenerationPrompt
	var out string
	var next *jinja.Prior
	if resume {
		// A render from a prior writes over its output (jinja's outBuf): no buffer to
		// size, and no pass over every message to size it.
		size := 0
		if prior == nil {
			size = promptSize(messages, o.ContentParts)
		}
		out, next, err = t.RenderFrom(vars, size, prior)
	} else {
		out, err = t.RenderSize(vars, promptSize(messages, o.ContentParts))
	}
	if err != nil {
		return "", nil, fmt.Errorf("render chat template: %w", err)
	}
	return out, next, nil
}

// promptSize estimates a prompt's length from its messages' contents, plus room for
// each turn's markup, for the render's output buffer.
func promptSize(messages []jinja.Value, parts [][]string) int {
	n := 256
	for i, m := range messages {
		n += 64
		if i < len(parts) && parts[i] != nil {
			for _, p := range parts[i] {
				n += len(p) + 1
			}
			continue
		}
		if d, ok := m.(*jinja.Dict); ok {
			if s, ok := get(d, "content").(string); ok {
				n += len(s)
			}
		}
	}
	return n
}
