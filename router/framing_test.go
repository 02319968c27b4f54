package router

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// parseHead reads a request head the way the server does (names kept as sent).
func parseHead(raw string) (*fasthttp.RequestHeader, error) {
	var h fasthttp.RequestHeader
	h.DisableNormalizing()
	err := h.Read(bufio.NewReader(strings.NewReader(raw)))
	return &h, err
}

func TestCheckFraming(t *testing.T) {
	const line = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
	cases := []struct {
		name, fields string
		ok           bool
	}{
		{"content-length", "Content-Length: 5\r\n", true},
		{"chunked", "Transfer-Encoding: chunked\r\n", true},
		{"chunked in another case", "transfer-encoding: Chunked\r\n", true},
		{"no body", "", true},
		{"both, content-length first", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", false},
		{"both, chunked first", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", false},
		{"both, odd case", "content-LENGTH: 5\r\ntransfer-ENCODING: chunked\r\n", false},
		{"identity", "Transfer-Encoding: identity\r\n", false},
		{"identity with content-length", "Transfer-Encoding: identity\r\nContent-Length: 5\r\n", false},
		{"padded chunked", "Transfer-Encoding:   chunked  \r\n", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := parseHead(line + c.fields + "\r\n")
			if err != nil {
				t.Skipf("fasthttp refuses it already: %v", err)
			}
			err = checkFraming(h)
			if (err == nil) != c.ok {
				t.Errorf("checkFraming = %v, want ok %v", err, c.ok)
			}
			if err != nil && !errors.Is(err, errMalformed) {
				t.Errorf("error %v does not wrap errMalformed", err)
			}
		})
	}
}

// Whatever header block fasthttp accepts, what checkFraming lets through has one
// unambiguous framing: never both Content-Length and Transfer-Encoding, and a
// Transfer-Encoding only as chunked.
func FuzzCheckFraming(f *testing.F) {
	for _, s := range []string{
		"Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Content-Length: 49\r\nTransfer-Encoding: chunked\r\n",
		"Transfer-Encoding: identity\r\nContent-Length: 0\r\n", "Transfer-Encoding: chunked, identity\r\n",
		"Transfer-Encoding: xchunked\r\n", "Content-Length: 0\r\nContent-Length: 5\r\n", "Transfer-Encoding :chunked\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, fields string) {
		h, err := parseHead("POST / HTTP/1.1\r\nHost: x\r\n" + fields + "\r\n")
		if err != nil || checkFraming(h) != nil {
			return
		}
		var te, cl int
		for _, ln := range bytes.Split(h.RawHeaders(), []byte("\n")) {
			name, value, _ := bytes.Cut(ln, []byte(":"))
			switch {
			case bytes.EqualFold(bytes.TrimSpace(name), []byte("transfer-encoding")):
				te++
				if !bytes.EqualFold(bytes.TrimSpace(value), []byte("chunked")) {
					t.Errorf("accepted Transfer-Encoding %q", value)
				}
			case bytes.EqualFold(bytes.TrimSpace(name), []byte("content-length")):
				cl++
			}
		}
		if te > 1 || (te > 0 && cl > 0) {
			t.Errorf("accepted %d Transfer-Encoding and %d Content-Length fields: %q", te, cl, fields)
		}
	})
}
