package tokenize

import (
	"fmt"
	"strings"

	"github.com/dlclark/regexp2"
	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites one segment of text (the text between added tokens).
type normalizer interface {
	normalize(s string) string
}

type unicodeNorm struct{ f norm.Form }

func (n unicodeNorm) normalize(s string) string {
	// Most text is already normal: check without copying first.
	if n.f.IsNormalString(s) {
		return s
	}
	return n.f.String(s)
}

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

type stripNorm struct{ left, right bool }

func (n stripNorm) normalize(s string) string {
	if n.left {
		s = strings.TrimLeftFunc(s, isSpace)
	}
	if n.right {
		s = strings.TrimRightFunc(s, isSpace)
	}
	return s
}

// prependNorm prepends a string to non-empty segments.
type prependNorm string

func (p prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return string(p) + s
}

type replaceNorm struct {
	old, new string
	re       *regexp2.Regexp // set for a Regex pattern
}

func (r replaceNorm) normalize(s string) string {
	if r.re == nil {
		return strings.ReplaceAll(s, r.old, r.new)
	}
	out, err := r.re.Replace(s, r.new, -1, -1)
	if err != nil { // timeout: leave the text as it is rather than hang
		return s
	}
	return out
}

type seqNorm []normalizer

func (q seqNorm) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

func buildNormalizer(c component) (normalizer, error) {
	switch c.Type {
	case "Sequence":
		var q seqNorm
		for _, raw := range c.Normalizers {
			sub, err := decodeComponent(raw)
			if err != nil {
				return nil, fmt.Errorf("normalizer sequence: %w", err)
			}
			n, err := buildNormalizer(sub)
			if err != nil {
				return nil, err
			}
			q = append(q, n)
		}
		return q, nil
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Strip":
		return stripNorm{left: c.StripLeft, right: c.StripRight}, nil
	case "Prepend":
		return prependNorm(c.Prepend), nil
	case "Replace":
		if c.Pattern == nil {
			return nil, fmt.Errorf("replace normalizer without pattern")
		}
		if c.Pattern.String != nil {
			return replaceNorm{old: *c.Pattern.String, new: c.Content}, nil
		}
		if c.Pattern.Regex != nil {
			re, err := regexp2.Compile(*c.Pattern.Regex, regexp2.None)
			if err != nil {
				return nil, fmt.Errorf("compile replace pattern %q: %w", *c.Pattern.Regex, err)
			}
			re.MatchTimeout = regexTimeout
			return replaceNorm{re: re, new: c.Content}, nil
		}
		return nil, fmt.Errorf("replace normalizer pattern with neither String nor Regex")
	}
	return nil, fmt.Errorf("unsupported normalizer %q", c.Type)
}
