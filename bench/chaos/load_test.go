package chaos

import (
	"bytes"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	const chunk = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
	const errEvent = "data: {\"error\":{\"message\":\"worker w1 failed mid-stream\",\"type\":\"upstream_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n"
	for _, tc := range []struct {
		name   string
		status int
		stream bool
		body   string
		want   Outcome
	}{
		{"stream complete", 200, true, chunk + chunk + "data: [DONE]\n\n", Completed},
		{"stream error event", 200, true, chunk + errEvent, CleanError},
		{"stream cut", 200, true, chunk + chunk, Lost},
		{"stream empty", 200, true, "", Lost},
		{"stream error event then more", 200, true, errEvent + chunk, Lost},
		{"completion", 200, false, `{"id":"c","choices":[{"message":{"content":"hi"}}]}`, Completed},
		{"completion without choices", 200, false, `{"id":"c"}`, Lost},
		{"openai error", 503, false, `{"error":{"message":"no healthy worker","type":"service_unavailable","param":null,"code":"no_healthy_worker"}}`, CleanError},
		{"openai error on a stream", 502, true, `{"error":{"message":"m","type":"upstream_error"}}`, CleanError},
		{"html error", 502, false, "<html>502 Bad Gateway</html>", Lost},
		{"error without type", 500, false, `{"error":{"message":"m"}}`, Lost},
	} {
		if got := classify(tc.status, tc.stream, []byte(tc.body)); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	var tl Tally
	tl.Add(Completed, true, "w0", "")
	tl.Add(CleanError, true, "w1", "error event")
	tl.Add(Refused, false, "", "refused")
	tl.Add(Hung, false, "", "deadline")
	var b bytes.Buffer
	if err := WriteTable(&b, []Row{RowFrom("a | b", &tl, "x")}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || lines[2] != "| a / b | 4 | 1 | 1 | 1 | 1 | x |" {
		t.Errorf("table:\n%s", b.String())
	}
}
