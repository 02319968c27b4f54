package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/kvroute/kvroute/router/tokenize/chat"
)

// tokenizeStdin is where runTokenize reads its input; tests replace it.
var tokenizeStdin io.Reader = os.Stdin

func init() {
	register(command{name: "tokenize", summary: "print the token ids of stdin (text, or a chat request with --chat)", run: runTokenize})
}

// runTokenize implements
//
//	kvroute tokenize --tokenizer PATH [--chat] [--no-special] [--prompt]
//
// It loads PATH (a tokenizer.json, or a directory holding it and
// tokenizer_config.json) with chat.Load, the loader the router's local
// tokenization mode uses, reads stdin, and prints {"tokens":[...]}. With --chat,
// stdin is an OpenAI chat completion request, encoded with Encoder.EncodeChat.
func runTokenize(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokenize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("tokenizer", "", "tokenizer.json, or a directory holding tokenizer.json and tokenizer_config.json")
	isChat := fs.Bool("chat", false, "stdin is an OpenAI chat completion request; render its chat template first")
	noSpecial := fs.Bool("no-special", false, "text mode: do not add the post-processor's special tokens (BOS)")
	showPrompt := fs.Bool("prompt", false, "with --chat, also print the rendered prompt as \"prompt\"")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: kvroute tokenize --tokenizer PATH [--chat] [--no-special] [--prompt] < input")
		return 2
	}
	enc, err := chat.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "kvroute tokenize: %v\n", err)
		return 1
	}
	in, err := io.ReadAll(tokenizeStdin)
	if err != nil {
		fmt.Fprintf(stderr, "kvroute tokenize: read stdin: %v\n", err)
		return 1
	}
	out := struct {
		Tokens []uint32 `json:"tokens"`
		Prompt *string  `json:"prompt,omitempty"`
	}{}
	if *isChat {
		prompt, _, err := enc.Render(in)
		if err != nil {
			fmt.Fprintf(stderr, "kvroute tokenize: %v\n", err)
			return 1
		}
		if out.Tokens, err = enc.EncodeChat(in); err != nil {
			fmt.Fprintf(stderr, "kvroute tokenize: %v\n", err)
			return 1
		}
		if *showPrompt {
			out.Prompt = &prompt
		}
	} else {
		out.Tokens = enc.Encode(string(in), !*noSpecial)
	}
	if out.Tokens == nil {
		out.Tokens = []uint32{}
	}
	je := json.NewEncoder(stdout)
	je.SetEscapeHTML(false)
	if err := je.Encode(out); err != nil {
		fmt.Fprintf(stderr, "kvroute tokenize: %v\n", err)
		return 1
	}
	return 0
}
