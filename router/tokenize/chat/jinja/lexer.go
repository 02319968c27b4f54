package jinja

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// tokKind is the kind of a lexer token.
type tokKind uint8

const (
	tText     tokKind = iota // template text outside tags
	tVarBegin                // {{
	tVarEnd                  // }}
	tBlkBegin                // {%
	tBlkEnd                  // %}
	tName
	tString
	tInt
	tFloat
	tOp
	tEOF
)

type token struct {
	kind tokKind
	val  string
	line int
}

func (t token) String() string {
	switch t.kind {
	case tEOF:
		return "end of template"
	case tText:
		return "text"
	}
	return fmt.Sprintf("%q", t.val)
}

var (
	lstripRe = regexp.MustCompile(`(?m)^[ \t]*(\{[#%])`)
	trimRe   = regexp.MustCompile(`([#%]\})\n`)
)

// preprocess applies Jinja's keep_trailing_newline=False, lstrip_blocks=True and
// trim_blocks=True, the environment transformers renders chat templates with, the
// same way @huggingface/jinja does.
func preprocess(src string) string {
	src = strings.TrimSuffix(src, "\n")
	src = lstripRe.ReplaceAllString(src, "$1")
	return trimRe.ReplaceAllString(src, "$1")
}

// ops are the operator tokens, longest first.
var ops = []string{"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"}

// lex splits a template into tokens.
func lex(src string) ([]token, error) {
	src = preprocess(src)
	var toks []token
	line := 1
	i := 0
	for i < len(src) {
		// Text up to the next tag.
		j := i
		for j < len(src) {
			if src[j] == '{' && j+1 < len(src) && (src[j+1] == '{' || src[j+1] == '%' || src[j+1] == '#') {
				break
			}
			j++
		}
		text := src[i:j]
		if j+2 < len(src) && src[j+2] == '-' {
			text = strings.TrimRight(text, " \t\r\n\f\v")
		}
		if text != "" {
			toks = append(toks, token{kind: tText, val: text, line: line})
		}
		line += strings.Count(src[i:j], "\n")
		if j >= len(src) {
			break
		}
		i = j + 2
		if i < len(src) && src[i] == '-' {
			i++
		}
		switch src[j+1] {
		case '#':
			k := strings.Index(src[i:], "#}")
			if k < 0 {
				return nil, fmt.Errorf("line %d: unclosed comment", line)
			}
			line += strings.Count(src[i:i+k], "\n")
			trim := k > 0 && src[i+k-1] == '-'
			i += k + 2
			if trim {
				i = skipSpace(src, i)
			}
			continue
		case '{':
			toks = append(toks, token{kind: tVarBegin, val: "{{", line: line})
		default:
			toks = append(toks, token{kind: tBlkBegin, val: "{%", line: line})
		}
		closer := "}}"
		if src[j+1] == '%' {
			closer = "%}"
		}
		// Expression tokens up to the closer.
		for {
			for i < len(src) && strings.IndexByte(" \t\r\n", src[i]) >= 0 {
				if src[i] == '\n' {
					line++
				}
				i++
			}
			if i >= len(src) {
				return nil, fmt.Errorf("line %d: unclosed tag", line)
			}
			if strings.HasPrefix(src[i:], "-"+closer) || strings.HasPrefix(src[i:], closer) {
				trim := src[i] == '-'
				if trim {
					i++
				}
				i += 2
				kind := tVarEnd
				if closer == "%}" {
					kind = tBlkEnd
				}
				toks = append(toks, token{kind: kind, val: closer, line: line})
				if trim {
					i = skipSpace(src, i)
				}
				break
			}
			c := src[i]
			switch {
			case c == '\'' || c == '"':
				s, n, err := lexString(src[i:])
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", line, err)
				}
				toks = append(toks, token{kind: tString, val: s, line: line})
				i += n
			case c >= '0' && c <= '9':
				k := i
				for k < len(src) && (src[k] >= '0' && src[k] <= '9' || src[k] == '_') {
					k++
				}
				kind := tInt
				if k+1 < len(src) && src[k] == '.' && src[k+1] >= '0' && src[k+1] <= '9' {
					kind = tFloat
					k++
					for k < len(src) && src[k] >= '0' && src[k] <= '9' {
						k++
					}
				}
				if k < len(src) && (src[k] == 'e' || src[k] == 'E') {
					e := k + 1
					if e < len(src) && (src[e] == '+' || src[e] == '-') {
						e++
					}
					if e < len(src) && src[e] >= '0' && src[e] <= '9' {
						for e < len(src) && src[e] >= '0' && src[e] <= '9' {
							e++
						}
						kind, k = tFloat, e
					}
				}
				toks = append(toks, token{kind: kind, val: strings.ReplaceAll(src[i:k], "_", ""), line: line})
				i = k
			case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
				k := i
				for k < len(src) && (src[k] == '_' || src[k] >= 'a' && src[k] <= 'z' || src[k] >= 'A' && src[k] <= 'Z' || src[k] >= '0' && src[k] <= '9') {
					k++
				}
				toks = append(toks, token{kind: tName, val: src[i:k], line: line})
				i = k
			default:
				found := false
				for _, op := range ops {
					if strings.HasPrefix(src[i:], op) {
						toks = append(toks, token{kind: tOp, val: op, line: line})
						i += len(op)
						found = true
						break
					}
				}
				if !found {
					return nil, fmt.Errorf("line %d: unexpected character %q", line, c)
				}
			}
		}
	}
	toks = append(toks, token{kind: tEOF, line: line})
	return toks, nil
}

func skipSpace(s string, i int) int {
	for i < len(s) && strings.IndexByte(" \t\r\n\f\v", s[i]) >= 0 {
		i++
	}
	return i
}

// lexString reads a quoted string literal with Python escapes and returns its value
// and length in the source.
func lexString(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == q:
			return b.String(), i + 1, nil
		case c == '\\' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case '\\', '\'', '"':
				b.WriteByte(s[i])
			case 'x', 'u', 'U':
				n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[s[i]]
				if i+n < len(s) {
					if v, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32); err == nil && utf8.ValidRune(rune(v)) {
						b.WriteRune(rune(v))
						i += n
						continue
					}
				}
				b.WriteByte('\\')
				b.WriteByte(s[i])
			case '\n':
			default:
				b.WriteByte('\\')
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, fmt.Errorf("unterminated string")
}
