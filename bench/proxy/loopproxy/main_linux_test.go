package main

import "testing"

// The end of an answer is found wherever the reads split it, and only there.
func TestRespFramingSplits(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
		{"empty", "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"},
		{"chunked with extension and trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"},
	} {
		for cut1 := 0; cut1 <= len(tc.answer); cut1++ {
			for cut2 := cut1; cut2 <= len(tc.answer); cut2++ {
				var f respFraming
				fed, ended := 0, false
				for _, p := range []string{tc.answer[:cut1], tc.answer[cut1:cut2], tc.answer[cut2:]} {
					if p == "" {
						continue
					}
					fed += len(p)
					done, bad := f.scan([]byte(p))
					if bad || done != (fed == len(tc.answer)) {
						t.Fatalf("%s cut at %d, %d: after %d bytes done %v bad %v", tc.name, cut1, cut2, fed, done, bad)
					}
					ended = done
				}
				if !ended {
					t.Fatalf("%s cut at %d, %d: no end", tc.name, cut1, cut2)
				}
			}
		}
	}
}

// Bytes past the end of an answer are refused: the worker is out of step.
func TestRespFramingExtra(t *testing.T) {
	for _, a := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiX",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
	} {
		var f respFraming
		if done, bad := f.scan([]byte(a)); done || !bad {
			t.Errorf("%q: done %v bad %v, want refused", a, done, bad)
		}
	}
}
