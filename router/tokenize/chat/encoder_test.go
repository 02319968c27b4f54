package chat

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// TestEncodeChatConversation sends the turns of growing conversations through one
// Encoder (whose conversation cache holds the earlier turns) and checks each
// result against rendering and encoding from scratch.
func TestEncodeChatConversation(t *testing.T) {
	texts := []string{"Hello there!", "Sure, here is a list:\n\n1. one\n2. two", "你好 🤗", "  spaced  out  ", "func f() {\n\treturn 1\n}", "It's 12:30."}
	for _, m := range chatModels {
		t.Run(m, func(t *testing.T) {
			enc := loadEncoder(t, m)
			for conv := 0; conv < 3; conv++ {
				var msgs []map[string]string
				for turn := 0; turn < 6; turn++ {
					msgs = append(msgs, map[string]string{"role": "user", "content": texts[(conv+turn)%len(texts)] + strings.Repeat(" more", conv)})
					body, err := json.Marshal(map[string]any{"messages": msgs})
					if err != nil {
						t.Fatal(err)
					}
					got, err := enc.EncodeChat(body)
					if err != nil {
						t.Fatal(err)
					}
					prompt, _, err := enc.Render(body)
					if err != nil {
						t.Fatal(err)
					}
					if want := enc.Tokenizer().Encode(prompt, false); !slices.Equal(got, want) {
						t.Fatalf("conversation %d turn %d: cached %v, cold %v", conv, turn, got, want)
					}
					msgs = append(msgs, map[string]string{"role": "assistant", "content": texts[(conv+turn+1)%len(texts)]})
				}
			}
		})
	}
}
