package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/configs"
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

// check-config fails every file serve refuses or cannot use (issue #15), with serve's
// own error: the two run one validation.
func TestCheckConfigFailsWhatServeRefuses(t *testing.T) {
	t.Setenv(configs.AdminTokenEnv, "")
	cases := map[string]string{
		"admin_no_token": `admin.listen: "0.0.0.0:9090" is beyond loopback but no admin token`,
		"port_range":     `listen: "127.0.0.1:99999"`,
		"dp_ranks_ports": `with dp_ranks 4 the last rank would publish on port 65537`,
		"zmq_endpoints":  `"tcp://*:5557" is a bind address`,
	}
	for name, want := range cases {
		path := filepath.Join("..", "..", "configs", "testdata", name+".bad.yaml")
		var out, errOut bytes.Buffer
		code := run([]string{"check-config", path}, &out, &errOut)
		if code != 1 || out.Len() != 0 || !strings.Contains(errOut.String(), want) {
			t.Errorf("check-config %s: exit %d stdout %q stderr %q, want exit 1 and %q", name, code, out.String(), errOut.String(), want)
		}
		_, err := serveConfig(path, "", "", "", nil, overrides{})
		if err == nil || err.Error()+"\n" != errOut.String() {
			t.Errorf("serve's config check of %s: %v, want check-config's error %q", name, err, errOut.String())
		}
	}
}
