package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/configs/tlstest"
)

func checkConfig(t *testing.T, yaml string) (code int, stdout, stderr string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kvroute.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code = run([]string{"check-config", path}, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCheckConfigReportsCertificatesAndKeys(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "ca")
	cert, key := ca.Issue(t, "127.0.0.1").Write(t, dir, "server")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	unreadable := dir // a directory: unreadable as a file, even for root
	missing := filepath.Join(dir, "missing.crt")

	code, out, errOut := checkConfig(t, "listen: 127.0.0.1:8443\ntls: {cert_file: "+cert+", key_file: "+key+", client_ca_file: "+caFile+"}\n"+
		"upstream: {tls: {ca_file: "+caFile+"}}\nworkers: [{url: \"https://127.0.0.1:8000\"}]\n")
	if code != 0 || !strings.Contains(out, ": ok") || errOut != "" {
		t.Errorf("good files: code %d stdout %q stderr %q", code, out, errOut)
	}

	code, _, errOut = checkConfig(t, "tls: {cert_file: "+missing+", key_file: "+key+"}\n"+
		"auth: {keys: [{name: ops, key_env: KVROUTE_TEST_UNSET_KEY}]}\n"+
		"workers: [{id: g, url: \"https://127.0.0.1:8000\", tls: {ca_file: "+unreadable+"}}]\n")
	if code != 1 {
		t.Errorf("bad files: exit code %d, want 1", code)
	}
	wants := []string{`tls.cert_file "` + missing + `"`, "no such file or directory",
		"auth.keys[0] (ops): key_env: environment variable KVROUTE_TEST_UNSET_KEY is not set or empty",
		"workers[0] (g): tls.ca_file: read CA file", "is a directory"}
	for _, want := range wants {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q\nmisses %q", errOut, want)
		}
	}

	code, _, errOut = checkConfig(t, "upstream: {tls: {insecure_skip_verify: true}}\nworkers: [{id: s, url: \"https://127.0.0.1:8000\"}]\n")
	if code != 0 || !strings.Contains(errOut, "warning: workers[0] (s): insecure_skip_verify is on") {
		t.Errorf("insecure_skip_verify: code %d stderr %q, want a warning", code, errOut)
	}
}
