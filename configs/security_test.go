package configs

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/kvroute/kvroute/configs/tlstest"
)

func TestSecurityGoodFileValues(t *testing.T) {
	cfg, err := LoadFile("testdata/security.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if k := cfg.Auth.Keys; len(k) != 2 || k[0].Name != "team-a" || k[0].KeyEnv != "KVROUTE_TEST_KEY_A" || k[1].Name != "ci" || k[0].Burst != 10 {
		t.Errorf("auth.keys: %+v", k)
	}
	if cfg.Limits.MaxConnectionsPerIP != 50 || cfg.Limits.WriteTimeout.String() != "20s" || cfg.RateLimit.MaxClients != 1000 ||
		cfg.Limits.MaxInflightBodyBytes != 256<<20 {
		t.Errorf("limits: %+v rate_limit: %+v", cfg.Limits, cfg.RateLimit)
	}
	if w := cfg.Workers[0]; string(w.APIKey) != "worker-a-key" || w.TLS == nil || w.TLS.ServerName != "gpu-a.internal" {
		t.Errorf("worker a: %+v", w)
	}
	if !cfg.TLS.Enabled() || cfg.TLS.MinVersion != "1.3" {
		t.Errorf("tls: %+v", cfg.TLS)
	}
}

func TestSecurityDefaultsAreOffOrSafe(t *testing.T) {
	cfg, err := LoadFile("testdata/minimal.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.Enabled() || cfg.TLS.Enabled() || cfg.RateLimit.RequestsPerSecond != 0 || cfg.Limits.MaxConnectionsPerIP != 0 {
		t.Errorf("an optional security feature is on by default: %+v %+v %+v", cfg.Auth, cfg.TLS, cfg.RateLimit)
	}
	l := cfg.Limits
	if l.MaxHeaderBytes != 8192 || l.MaxConnections != 10000 || l.HeaderTimeout.String() != "10s" ||
		l.BodyTimeout.String() != "1m0s" || l.IdleTimeout.String() != "2m0s" || l.WriteTimeout.String() != "1m0s" ||
		l.MaxInflightBodyBytes != 1<<30 {
		t.Errorf("limit defaults: %+v", l)
	}
	if err := cfg.CheckFiles(); err != nil {
		t.Errorf("CheckFiles of a config without secrets or files: %v", err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	cfg, err := Load([]byte(`auth: {keys: [{name: k, key: "very-secret-value"}]}
upstream: {api_key: "another-secret"}
workers: [{url: "http://a:1", api_key: "worker-secret"}]`))
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", *cfg), fmt.Sprintf("%#v", cfg.Auth), string(out)} {
		for _, secret := range []string{"very-secret-value", "another-secret", "worker-secret"} {
			if strings.Contains(s, secret) {
				t.Errorf("secret %q printed in %s", secret, s)
			}
		}
	}
	if k, err := cfg.Auth.Keys[0].Resolve(); err != nil || k != "very-secret-value" {
		t.Errorf("Resolve() = %q, %v", k, err)
	}
}

func TestKeysFromEnvironment(t *testing.T) {
	cfg, err := Load([]byte(`auth: {keys: [{name: k, key_env: KVROUTE_TEST_INBOUND}]}
upstream: {api_key_env: KVROUTE_TEST_FLEET}
workers: [{id: own, url: "http://a:1", api_key_env: KVROUTE_TEST_OWN}, {id: fleet, url: "http://b:1"}]`))
	if err != nil {
		t.Fatal(err)
	}
	// Unset: every missing variable is named, with the key or worker it belongs to.
	err = cfg.CheckFiles()
	for _, want := range []string{
		"auth.keys[0] (k): key_env: environment variable KVROUTE_TEST_INBOUND is not set or empty",
		"workers[0] (own): api_key_env: environment variable KVROUTE_TEST_OWN is not set",
		"workers[1] (fleet): upstream.api_key_env: environment variable KVROUTE_TEST_FLEET is not set",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckFiles() = %v, want it to contain %q", err, want)
		}
	}
	t.Setenv("KVROUTE_TEST_INBOUND", "in-key")
	t.Setenv("KVROUTE_TEST_OWN", "own-key")
	t.Setenv("KVROUTE_TEST_FLEET", "fleet-key")
	if err := cfg.CheckFiles(); err != nil {
		t.Fatalf("CheckFiles with the variables set: %v", err)
	}
	for i, want := range []string{"own-key", "fleet-key"} {
		if got, err := cfg.WorkerAPIKey(cfg.Workers[i]); err != nil || got != want {
			t.Errorf("WorkerAPIKey(workers[%d]) = %q, %v; want %q", i, got, err, want)
		}
	}
}

func TestDuplicateKeysAcrossSources(t *testing.T) {
	t.Setenv("KVROUTE_TEST_DUP", "the-same-key-1")
	cfg, err := Load([]byte(`auth: {keys: [{name: a, key: "the-same-key-1"}, {name: b, key_env: KVROUTE_TEST_DUP}]}
workers: [{url: "http://a:1"}]`))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckFiles(); err == nil || !strings.Contains(err.Error(), "auth.keys[1] (b): same key as a") {
		t.Errorf("CheckFiles() = %v, want the duplicate reported", err)
	}
}

func TestCheckFilesCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "test CA")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	certFile, keyFile := ca.Issue(t, "127.0.0.1").Write(t, dir, "server")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	load := func(y string) *Config {
		t.Helper()
		cfg, err := Load([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	good := load(fmt.Sprintf(`tls: {cert_file: %q, key_file: %q, client_ca_file: %q}
upstream: {tls: {ca_file: %q, cert_file: %q, key_file: %q}}
workers: [{url: "https://127.0.0.1:1"}]`, certFile, keyFile, caFile, caFile, certFile, keyFile))
	if err := good.CheckFiles(); err != nil {
		t.Fatalf("good files: %v", err)
	}
	sc, err := good.TLS.ServerConfig()
	if err != nil || len(sc.Certificates) != 1 || sc.ClientAuth != tls.RequireAndVerifyClientCert || sc.MinVersion != tls.VersionTLS12 {
		t.Errorf("ServerConfig() = %+v, %v", sc, err)
	}
	cc, err := good.WorkerTLS(good.Workers[0])
	if err != nil || cc.ServerName != "127.0.0.1" || cc.RootCAs == nil || len(cc.Certificates) != 1 || cc.InsecureSkipVerify {
		t.Errorf("WorkerTLS() = %+v, %v", cc, err)
	}

	bad := load(fmt.Sprintf(`tls: {cert_file: %q, key_file: %q, client_ca_file: %q}
upstream: {tls: {ca_file: %q}}
workers: [{id: w1, url: "https://127.0.0.1:1"}, {id: w2, url: "https://127.0.0.1:2", tls: {cert_file: %q, key_file: %q}}, {id: plain, url: "http://127.0.0.1:3"}]`,
		missing, keyFile, garbage, garbage, certFile, missing))
	err = bad.CheckFiles()
	for _, want := range []string{
		`tls.cert_file "` + missing + `"`, "no such file or directory",
		"workers[0] (w1): upstream.tls.ca_file: " + garbage + ": no PEM certificate found",
		`workers[1] (w2): tls.cert_file "` + certFile + `", key_file "` + missing + `"`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckFiles() = %v\nwant it to contain %q", err, want)
		}
	}
	if err != nil && strings.Contains(err.Error(), "plain") {
		t.Errorf("an http:// worker's TLS files were checked: %v", err)
	}
	// The client CA is checked once the certificate loads.
	bad.TLS.CertFile = certFile
	if err := bad.CheckFiles(); err == nil || !strings.Contains(err.Error(), "tls.client_ca_file: "+garbage+": no PEM certificate found") {
		t.Errorf("CheckFiles() = %v, want the client CA problem", err)
	}
}

func TestWarnings(t *testing.T) {
	cfg, err := Load([]byte(`listen: ":8080"
auth: {keys: [{name: inline, key: "inline-key-1"}]}
upstream: {tls: {insecure_skip_verify: true}}
workers: [{id: s, url: "https://a:1"}, {id: p, url: "http://b:1"}]`))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(AdminTokenEnv, "")
	got := strings.Join(cfg.Warnings(), "\n")
	for _, want := range []string{"workers[0] (s): insecure_skip_verify is on", "without tls: keys cross the network in clear",
		"/metrics on the main listener stays open", "auth.keys[0] (inline): the key is in the config file"} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings %q miss %q", got, want)
		}
	}
	if strings.Contains(got, "(p)") {
		t.Errorf("an http:// worker got a TLS warning: %s", got)
	}
	quiet, _ := Load([]byte(`listen: "127.0.0.1:8080"
workers: [{url: "http://b:1"}]`))
	if w := quiet.Warnings(); len(w) != 0 {
		t.Errorf("warnings for a plain loopback config: %q", w)
	}
}

func TestBurstFor(t *testing.T) {
	for _, c := range []struct {
		rps   float64
		burst int
		want  float64
	}{{10, 0, 10}, {0.5, 0, 1}, {2.5, 0, 3}, {10, 4, 4}} {
		if got := BurstFor(c.rps, c.burst); got != c.want {
			t.Errorf("BurstFor(%v, %d) = %v, want %v", c.rps, c.burst, got, c.want)
		}
	}
}
