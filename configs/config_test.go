package configs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestGoodFiles(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.good.yaml")
	files = append(files, "kvroute.example.yaml")
	if len(files) < 3 {
		t.Fatalf("found only %d good files", len(files))
	}
	for _, f := range files {
		if _, err := LoadFile(f); err != nil {
			t.Errorf("LoadFile(%s): %v", f, err)
		}
	}
}

func TestMinimalGetsDefaults(t *testing.T) {
	cfg, err := LoadFile("testdata/minimal.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	if cfg.Listen != want.Listen || cfg.Policy != want.Policy || cfg.MaxBodyBytes != 32<<20 ||
		cfg.Timeouts != want.Timeouts || cfg.Health.Path != "/health" || !cfg.Headers.Worker {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	if cfg.Events.MaxMessageBytes != 4<<20 {
		t.Errorf("events.max_message_bytes default %d, want 4 MiB", cfg.Events.MaxMessageBytes)
	}
	if cfg.Tokenize.Mode != "auto" || cfg.Tokenize.Dir != "" {
		t.Errorf("tokenize default mode %q dir %q, want auto and none", cfg.Tokenize.Mode, cfg.Tokenize.Dir)
	}
	if w := cfg.Workers[0]; w.ID != "127.0.0.1:8000" || w.MaxConns != 1024 {
		t.Errorf("worker defaults: got id %q max_conns %d", w.ID, w.MaxConns)
	}
}

func TestFullFileValues(t *testing.T) {
	cfg, err := LoadFile("testdata/full.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timeouts.Idle != 2*time.Second || cfg.Health.EjectBase != 100*time.Millisecond || cfg.Headers.Worker {
		t.Errorf("values not decoded: %+v", cfg)
	}
	if cfg.Events.MaxMessageBytes != 1<<20 {
		t.Errorf("events.max_message_bytes %d, want 1048576", cfg.Events.MaxMessageBytes)
	}
	if a := cfg.Admin; a.Listen != "127.0.0.1:9191" || a.PathPrefix != "/admin" || cfg.AdminToken() != "s3cret" {
		t.Errorf("admin: %+v", a)
	}
	if cfg.Source != "testdata/full.good.yaml" {
		t.Errorf("Source = %q, want the file name", cfg.Source)
	}
	if w := cfg.Workers[0]; w.ID != "a" || len(w.Models) != 2 || w.Replay != "tcp://gpu-a:5558" || w.MaxConns != 8 {
		t.Errorf("worker a: %+v", w)
	}
}

func TestReplicaValues(t *testing.T) {
	cfg, err := LoadFile("testdata/replica.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := Replica{NATSURL: "nats://10.0.0.2:4222", ID: "router-a", Cluster: "prod-eu", FlushInterval: 2 * time.Millisecond,
		Heartbeat: 500 * time.Millisecond, ExpireAfter: 2 * time.Second}
	if cfg.Replica != want {
		t.Errorf("replica %+v, want %+v", cfg.Replica, want)
	}
	if d := Default().Replica; d.NATSURL != "" || d.Cluster != "default" || d.Heartbeat != time.Second || d.WarmTimeout != 5*time.Second {
		t.Errorf("replica defaults %+v", d)
	}
}

func TestQueueValues(t *testing.T) {
	cfg, err := LoadFile("testdata/queue.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	q := cfg.Queue
	if q.MaxSize != 64 || q.Timeout != 5*time.Second || strings.Join(q.Classes, ",") != "interactive,batch" || q.DefaultClass != "batch" {
		t.Errorf("queue %+v", q)
	}
	if cfg.Auth.Keys[0].Priority != "interactive" || cfg.Auth.Keys[1].Priority != "" {
		t.Errorf("key priorities %q %q", cfg.Auth.Keys[0].Priority, cfg.Auth.Keys[1].Priority)
	}
	if i := q.ClassIndex("batch"); i != 1 {
		t.Errorf("ClassIndex(batch) = %d, want 1", i)
	}
	d := Default().Queue
	if d.MaxSize != 256 || d.Timeout != 30*time.Second || strings.Join(d.Classes, ",") != "high,normal,low" || d.DefaultClass != "normal" {
		t.Errorf("queue defaults %+v", d)
	}
}

func TestIndexValues(t *testing.T) {
	cfg, err := LoadFile("testdata/index.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ix := cfg.Index; ix.SnapshotFile != "/var/lib/kvroute/index.snapshot" || ix.SnapshotInterval != 30*time.Second {
		t.Errorf("index %+v", ix)
	}
	if d := Default().Index; d.SnapshotFile != "" || d.SnapshotInterval != time.Minute {
		t.Errorf("index defaults %+v", d)
	}
}

func TestBadFiles(t *testing.T) {
	// Each bad file must fail with an error naming the file and containing every want.
	cases := map[string][]string{
		"unknown_key":        {"field listen_addr not found"},
		"unknown_worker_key": {"field weight not found"},
		"no_workers":         {"at least one worker"},
		"discovery": {`discovery.dns.name: "vllm svc"`, `discovery.dns.type: "MX"`, `discovery.dns.interval: "-1s"`,
			"discovery.dns.replay_port: 5558 set without events_port", "discovery.kubernetes.label_selector: required",
			`port 8000 and port_name "http" both set`},
		"bad_policy":            {`policy: "fastest"`, "round_robin"},
		"bad_url_scheme":        {`workers[0]: url: "ftp://a:1"`, "scheme"},
		"url_path":              {`"http://a:1/v1"`, "path"},
		"dup_id":                {`workers[1].id: "x" is already used by workers[0]`},
		"dup_default_id":        {`workers[1].id: "a:1"`},
		"bad_duration":          {"5 seconds"},
		"zero_timeout":          {`timeouts.total: "0s" must be positive`},
		"negative_body":         {"max_body_bytes: -1"},
		"bad_listen":            {`listen: "8080"`},
		"bad_events":            {`events: "a:5557"`},
		"events_max_message":    {"events.max_message_bytes: 1000 must be at least 65536"},
		"replay_without_events": {`replay: "tcp://a:5558" set without events`},
		"eject_order":           {`eject_max: "1s" is shorter`},
		"attempts":              {"max_attempts: 0"},
		"not_yaml":              {"decode"},
		"bad_tokenize_mode":     {`tokenize.mode: "spacy"`},
		"nats_without_url":      {`events.nats.url: ""`},
		"bad_tokenize_model":    {`tokenize.models["m"]: "local:"`},
		"tokenize_cache":        {"tokenize.cache_entries: -5 must be at least 1"},
		"cache_aware_ranges":    {"cache_aware.max_kv_usage: 1.5", "cache_aware.temperature: -1", "cache_aware.affinity_weight: 1.5 must be in [0, 1]"},
		"bad_admin":             {`admin.listen: "9090"`, `admin.path_prefix: "/v1/admin"`},
		"replica": {`replica.nats_url: "10.0.0.2:4222"`, `replica.cluster: "prod.eu"`,
			`replica.expire_after: "1s" must be longer than heartbeat "2s"`, `replica.warm_timeout: "-1s"`},
		"auth_key_source": {"auth.keys[0]: set key or key_env", "auth.keys[1]: set key or key_env, not both",
			`auth.keys[2].key_env: "not a var" is not an environment variable name`, "auth.keys[3].key: shorter than 8",
			`auth.keys[3].name: "a" is already used by auth.keys[0]`},
		"auth_dup_key": {"auth.keys[1].key: same key as auth.keys[0]", `auth.keys[1].name: "bad name!"`},
		"rate_limit": {"rate_limit.requests_per_second: -1", "rate_limit.burst: -2", "rate_limit.max_clients: 0",
			"auth.keys[0].requests_per_second: -3"},
		"limits": {"limits.max_header_bytes: 100", "limits.max_connections: 0", "limits.max_connections_per_ip: -1",
			`limits.header_timeout: "0s"`, `limits.write_timeout: "-1s"`},
		"body_budget":   {"limits.max_inflight_body_bytes: 1000 must be at least max_body_bytes (1048576)"},
		"tls_listener":  {`tls: cert_file "a.crt" and key_file "" must be set together`, `tls.min_version: "1.0"`},
		"tls_client_ca": {`tls.client_ca_file: "ca.pem" set without cert_file`},
		"upstream_keys": {"upstream: set api_key or api_key_env, not both", `upstream.tls: cert_file "c.pem"`,
			"workers[0]: set api_key or api_key_env, not both", `workers[1]: tls: set but url "http://b:1" is not https://`},
		// What serve refused or could not use after check-config said ok (issue #15).
		"admin_no_token": {`admin.listen: "0.0.0.0:9090" is beyond loopback but no admin token`,
			`admin.path_prefix: "/admin" mounts the admin on listen ":8080" beyond loopback`},
		"port_range": {`listen: "127.0.0.1:99999" has a port that is not a number from 0 to 65535`,
			`admin.listen: "127.0.0.1:http" has a port`, `workers[0]: url: "http://a:99999": port must be a number from 1 to 65535`,
			`workers[1]: events: "tcp://b:99999": port must be`, `workers[2]: replay: "tcp://c:0": port must be`},
		"dp_ranks_ports": {`workers[0]: events: "tcp://a:65534": with dp_ranks 4 the last rank would publish on port 65537`,
			`workers[1]: replay: "tcp://b:65535": with dp_ranks 2 the last rank would publish on port 65536`},
		"queue": {"queue.max_size: -1 must be zero (off) or positive", `queue.timeout: "0s" must be positive`,
			`queue.classes[1]: "gold" is already queue.classes[0]`, `queue.classes[2]: "bad class" must be`,
			`queue.default_class: "normal" is not one of queue.classes (gold, gold, bad class)`,
			`auth.keys[0].priority: "platinum" is not one of queue.classes`},
		"valkey":       {`index.backend: "redis" must be memory or valkey`},
		"valkey_url":   {`index.valkey.url: "http://h:6379" must be redis://HOST:PORT`, `index.valkey.timeout: "0s" must be at least 1ms`},
		"valkey_nourl": {`index.valkey.url: required with index.backend valkey`},
		"index":        {`index.snapshot_interval: "500ms" must be at least 1s`, `index.snapshot_file: "/var/lib/kvroute/" must name a file`},
		"passthrough": {`passthrough[0]: "v1/foo" must start with /`, `passthrough[1]: "/tokenize" is already a route of the router`,
			`passthrough[3]: "/v1/extra" is already passthrough[2]`, `passthrough[4]: "/x?y=1" must be a path`,
			`passthrough[5]: "/v1/responses/x" is already a route`, "responses.max_entries: 0 must be positive", `responses.ttl: "0s" must be positive`},
		"queue_classes": {"queue.classes: 0 classes, must be 1 to 16", `queue.default_class: "normal" is not one of queue.classes ()`},
		"zmq_endpoints": {`tokenize.mode: "local:  "`, `workers[0]: events: "ipc:///tmp/kv" must be a tcp://host:port`,
			`workers[1]: events: "tcp://*:5557" is a bind address`},
	}
	t.Setenv(AdminTokenEnv, "") // admin_no_token must not depend on the environment
	files, _ := filepath.Glob("testdata/*.bad.yaml")
	if len(files) != len(cases) {
		t.Errorf("%d bad files but %d cases: keep them in step", len(files), len(cases))
	}
	for name, wants := range cases {
		path := filepath.Join("testdata", name+".bad.yaml")
		_, err := LoadFile(path)
		if err == nil {
			t.Errorf("%s: loaded without error", name)
			continue
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, path+": ") {
			t.Errorf("%s: error does not name the file: %v", name, msg)
		}
		for _, w := range wants {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q does not contain %q", name, msg, w)
			}
		}
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	_, err := Load([]byte("policy: x\nmax_attempts: 0\nworkers: [{url: 'ftp://a'}]"))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"policy", "max_attempts", "workers[0]"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q misses the %s problem", err, w)
		}
	}
}

func TestLoadFileMissing(t *testing.T) {
	_, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("missing file: got %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestParseWorkerFlag(t *testing.T) {
	cases := []struct {
		in      string
		want    Worker
		wantErr string
	}{
		{in: "http://h:8000", want: Worker{ID: "h:8000", URL: "http://h:8000", MaxConns: 1024, DPRanks: 1}},
		{in: "http://h:8000/,events=tcp://h:5557,replay=tcp://h:5558,id=g0,models=a|b",
			want: Worker{ID: "g0", URL: "http://h:8000", Events: "tcp://h:5557", Replay: "tcp://h:5558", Models: []string{"a", "b"}, MaxConns: 1024, DPRanks: 1}},
		{in: "http://h:8000,dp_ranks=4", want: Worker{ID: "h:8000", URL: "http://h:8000", MaxConns: 1024, DPRanks: 4}},
		{in: "http://h:8000,dp_ranks=x", wantErr: `dp_ranks "x"`},
		{in: "https://h:8443,api_key_env=GPU_KEY", want: Worker{ID: "h:8443", URL: "https://h:8443", MaxConns: 1024, DPRanks: 1, APIKeyEnv: "GPU_KEY"}},
		{in: "http://h:8000,weight=2", wantErr: `unknown option "weight"`},
		{in: "http://h:8000,events", wantErr: "not key=value"},
	}
	for _, c := range cases {
		got, err := ParseWorkerFlag(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseWorkerFlag(%q) error = %v, want %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil || got.ID != c.want.ID || got.URL != c.want.URL || got.Events != c.want.Events ||
			got.Replay != c.want.Replay || strings.Join(got.Models, "|") != strings.Join(c.want.Models, "|") || got.MaxConns != c.want.MaxConns ||
			got.DPRanks != c.want.DPRanks || got.APIKeyEnv != c.want.APIKeyEnv {
			t.Errorf("ParseWorkerFlag(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	for _, p := range []string{"kvroute.example.yaml", "testdata/full.good.yaml", "testdata/unknown_key.bad.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Load(data)
		if err == nil && cfg.Validate() != nil {
			t.Fatal("Load returned a config that does not validate")
		}
	})
}

func TestAdminTokenFromEnv(t *testing.T) {
	t.Setenv(AdminTokenEnv, "from-env")
	cfg := Default()
	if got := cfg.AdminToken(); got != "from-env" {
		t.Errorf("AdminToken() = %q, want the environment's", got)
	}
	cfg.Admin.Token = "from-file"
	if got := cfg.AdminToken(); got != "from-file" {
		t.Errorf("AdminToken() = %q, want the config's", got)
	}
	if d := Default(); d.Admin.Listen != "127.0.0.1:9090" {
		t.Errorf("default admin.listen = %q", d.Admin.Listen)
	}
}

// The edges of the checks serve used to do on its own: the last port, the last rank,
// and what counts as loopback for the admin's token rule.
func TestPortsAndLoopback(t *testing.T) {
	t.Setenv(AdminTokenEnv, "")
	cases := []struct {
		yaml    string
		wantErr string // "" means valid
	}{
		{yaml: `workers: [{url: "http://a:65535", events: "tcp://a:65535"}]`},
		{yaml: `workers: [{url: "http://a:1", events: "tcp://a:65534", replay: "tcp://a:65533", dp_ranks: 2}]`},
		{yaml: `workers: [{url: "http://a:1", events: "tcp://a:65535", dp_ranks: 2}]`, wantErr: "port 65536"},
		{yaml: `workers: [{url: "http://a:0"}]`, wantErr: "port must be a number from 1"},
		{yaml: `workers: [{url: "http://a"}]`},
		{yaml: "listen: \"127.0.0.1:0\"\nadmin: {listen: \"127.0.0.1:0\"}\nworkers: [{url: \"http://a:1\"}]"},
		{yaml: "listen: \":8080\"\nadmin: {listen: \"localhost:9090\"}\nworkers: [{url: \"http://a:1\"}]"},
		{yaml: "listen: \"[::1]:8080\"\nadmin: {listen: \"\", path_prefix: /admin}\nworkers: [{url: \"http://a:1\"}]"},
		{yaml: "admin: {listen: \"10.0.0.1:9090\"}\nworkers: [{url: \"http://a:1\"}]", wantErr: "beyond loopback"},
		{yaml: "admin: {listen: \"10.0.0.1:9090\", token: t0k3n}\nworkers: [{url: \"http://a:1\"}]"},
		{yaml: "admin: {listen: \"\", path_prefix: /admin}\nworkers: [{url: \"http://a:1\"}]", wantErr: "beyond loopback"},
	}
	for _, c := range cases {
		_, err := Load([]byte(c.yaml))
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: %v, want valid", c.yaml, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: error %v, want %q", c.yaml, err, c.wantErr)
		}
	}
	t.Setenv(AdminTokenEnv, "from-env")
	if _, err := Load([]byte("admin: {listen: \"0.0.0.0:9090\"}\nworkers: [{url: \"http://a:1\"}]")); err != nil {
		t.Errorf("admin beyond loopback with %s set: %v", AdminTokenEnv, err)
	}
}
