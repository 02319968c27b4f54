package admin

import (
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

//go:embed static
var static embed.FS

// Backend is what the admin API reads and acts on; the composition root (cmd/stack)
// fills it in. Nil interface and function fields and a nil Index disable their part of
// the answers.
type Backend struct {
	// Pool is the worker pool; required.
	Pool *upstream.Pool
	// Index is the prefix index; nil when cache-aware routing has none.
	Index indexer.Backend
	// SampleEvery is how many Match calls of the index one hot-prefix sample stands for
	// (indexer.Options.SampleEvery); 0 means indexer.DefaultSampleEvery.
	SampleEvery int
	// Feeds returns the state of every ZMQ event feed; nil when none.
	Feeds func() []kvevents.WorkerState
	// Traffic is the router's record of its own traffic; nil leaves the traffic figures
	// out (null).
	Traffic TrafficSource
	// Decisions lists recent routing decisions; nil answers none.
	Decisions DecisionSource
	// Gatherer serves the router's metrics; the API reads the tokenizer's error counters
	// and the event feeds' lag from it. Nil disables those figures.
	Gatherer prometheus.Gatherer
	// Reload re-reads the config file and applies what can change at run time.
	Reload func() (ReloadReport, error)
	// DrainTimeout bounds how long a removed worker's requests in flight may take to
	// finish before it is gone (DELETE /api/workers/{id}); 0 means 30s.
	DrainTimeout time.Duration
	// Querier answers POST /api/index/query; nil answers 409.
	Querier IndexQuerier
	// MaxRestoreBytes bounds the body of POST /api/index/restore; 0 means
	// DefaultMaxRestoreBytes.
	MaxRestoreBytes int64
	// Info describes the router for the page header.
	Info Info
	// MetricsMaxAge is how old a worker's scraped metrics may be to be shown as current.
	MetricsMaxAge time.Duration
}

// Info describes the running router.
type Info struct {
	Policy       string    `json:"policy"`
	TokenizeMode string    `json:"tokenize_mode"`
	EventSource  string    `json:"event_source"`
	Listen       string    `json:"listen"`
	ConfigFile   string    `json:"config_file"`
	Started      time.Time `json:"started"`
}

// ReloadReport says what a config reload did.
type ReloadReport struct {
	// File is the config file that was read.
	File string `json:"file"`
	// Applied lists the settings whose new values are in effect now.
	Applied []string `json:"applied"`
	// RestartRequired lists the settings that changed in the file but only take effect
	// after a restart.
	RestartRequired []string `json:"restart_required"`
	// Refused lists the settings the file asks for that could not be applied, with why
	// (a static worker whose id or URL a worker of another source has).
	Refused []string `json:"refused,omitempty"`
	// Unchanged is true when the file equals the running config.
	Unchanged bool `json:"unchanged"`
}

// Options configure the handler.
type Options struct {
	Backend Backend
	// Token is the bearer token; "" means none is configured (reads are open only when
	// RequireToken is false, and write actions are refused).
	Token string
	// RequireToken makes reads need the token too: set it when the listener is not on a
	// loopback address.
	RequireToken bool
}

// ErrNoToken is returned by [New] when RequireToken is set without a token.
var ErrNoToken = errors.New("admin: the admin API listens beyond loopback but no token is configured (set admin.token or KVROUTE_ADMIN_TOKEN)")

// handler is the admin API.
type handler struct {
	b     Backend
	token string
	authR bool
	mux   *http.ServeMux
}

// New returns the admin API and dashboard handler.
func New(opts Options) (http.Handler, error) {
	if opts.Backend.Pool == nil {
		return nil, errors.New("admin: Backend.Pool is required")
	}
	if opts.RequireToken && opts.Token == "" {
		return nil, ErrNoToken
	}
	if opts.Backend.SampleEvery <= 0 {
		opts.Backend.SampleEvery = indexer.DefaultSampleEvery
	}
	if opts.Backend.MetricsMaxAge <= 0 {
		opts.Backend.MetricsMaxAge = 3 * time.Second
	}
	if opts.Backend.MaxRestoreBytes <= 0 {
		opts.Backend.MaxRestoreBytes = DefaultMaxRestoreBytes
	}
	if opts.Backend.DrainTimeout <= 0 {
		opts.Backend.DrainTimeout = 30 * time.Second
	}
	h := &handler{b: opts.Backend, token: opts.Token, authR: opts.RequireToken, mux: http.NewServeMux()}
	assets, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("admin: assets: %w", err)
	}
	files := http.FileServerFS(assets)
	h.mux.HandleFunc("GET /{$}", h.page)
	h.mux.Handle("GET /assets/", http.StripPrefix("/assets", files))
	h.mux.HandleFunc("GET /api/overview", h.overview)
	h.mux.HandleFunc("GET /api/workers", h.workers)
	h.mux.HandleFunc("GET /api/workers/{id}", h.worker)
	h.mux.HandleFunc("GET /api/stats", h.stats)
	h.mux.HandleFunc("GET /api/decisions", h.decisions)
	h.mux.HandleFunc("GET /api/prefixes", h.prefixes)
	h.mux.HandleFunc("POST /api/workers/{id}/{action}", h.workerAction)
	h.mux.HandleFunc("POST /api/workers", h.addWorker)
	h.mux.HandleFunc("DELETE /api/workers/{id}", h.removeWorker)
	h.mux.HandleFunc("POST /api/reload", h.reload)
	h.mux.HandleFunc("POST /api/index/query", h.indexQuery)
	h.mux.HandleFunc("GET /api/index/snapshot", h.indexSnapshot)
	h.mux.HandleFunc("POST /api/index/restore", h.indexRestore)
	h.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no admin endpoint %s %s", r.Method, r.URL.Path))
	})
	// Every other path: a JSON 404 too, not ServeMux's text/plain one.
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Errorf("no admin page %s", r.URL.Path))
	})
	return h, nil
}

// cookieName holds the token for the page's own requests after GET /?token=.
const cookieName = "kvroute_admin"

// ServeHTTP authenticates, then dispatches.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !isRead(r) {
		switch {
		case h.token == "":
			writeError(w, http.StatusForbidden, errors.New("write actions are disabled: no admin token is configured (set admin.token or KVROUTE_ADMIN_TOKEN)"))
			return
		case !h.match(bearer(r)):
			w.Header().Set("WWW-Authenticate", `Bearer realm="kvroute admin"`)
			writeError(w, http.StatusUnauthorized, errors.New("write actions need the admin token as Authorization: Bearer TOKEN"))
			return
		}
	} else if h.authR {
		if t := r.URL.Query().Get("token"); t != "" && r.URL.Path == "/" && h.match(t) {
			// The page was opened with its token: keep it in a cookie and drop it from the URL.
			http.SetCookie(w, &http.Cookie{Name: cookieName, Value: t, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			w.Header().Set("Location", "./") // relative: right under any mount prefix
			w.WriteHeader(http.StatusSeeOther)
			return
		}
		tok := bearer(r)
		if c, err := r.Cookie(cookieName); tok == "" && err == nil {
			tok = c.Value
		}
		if !h.match(tok) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="kvroute admin"`)
			writeError(w, http.StatusUnauthorized, errors.New("the admin API needs the admin token (Authorization: Bearer TOKEN, or open the page as /?token=TOKEN)"))
			return
		}
	}
	h.mux.ServeHTTP(w, cleaned(r))
}

// isRead reports whether r only reads: a GET or HEAD, or the index query (a POST for its
// JSON body, but it changes nothing).
func isRead(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return true
	case http.MethodPost:
		return cleaned(r).URL.Path == "/api/index/query"
	}
	return false
}

// cleaned returns r with its path cleaned ("//x" and "/a/../x" become "/x"), so the
// mux serves it instead of redirecting to the clean path: the redirect's absolute
// Location would leave a mount prefix (the router's admin.path_prefix).
func cleaned(r *http.Request) *http.Request {
	p := r.URL.Path
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	if c == r.URL.Path {
		return r
	}
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.Path, u.RawPath = c, ""
	r2.URL = &u
	return r2
}

func (h *handler) match(tok string) bool {
	return h.token != "" && tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(h.token)) == 1
}

func bearer(r *http.Request) string {
	a := r.Header.Get("Authorization")
	if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return ""
}

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b)
}

// Overview is everything the dashboard polls, in one answer.
type Overview struct {
	Time      time.Time    `json:"time"`
	Info      Info         `json:"info"`
	Workers   []WorkerView `json:"workers"`
	Stats     StatsView    `json:"stats"`
	Decisions []Decision   `json:"decisions"`
	Prefixes  []PrefixView `json:"prefixes"`
	// Writable is true when write actions are possible (a token is configured).
	Writable bool `json:"writable"`
}

func (h *handler) overview(w http.ResponseWriter, r *http.Request) {
	fam := h.gather()
	var ix *indexer.Stats
	if h.b.Index != nil {
		s := h.b.Index.Stats()
		ix = &s
	}
	o := Overview{
		Time: time.Now(), Info: h.b.Info, Workers: h.workerViews(fam, ix, ""),
		Stats: h.statsView(fam), Prefixes: h.prefixViews(ix, 16), Writable: h.token != "",
	}
	if h.b.Decisions != nil {
		o.Decisions = h.b.Decisions.Decisions(12)
	}
	writeJSON(w, http.StatusOK, o)
}

func (h *handler) workers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.workerViews(h.gather(), h.indexStats(), ""))
}

func (h *handler) worker(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if h.b.Pool.Worker(id) == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("no worker %q", id))
		return
	}
	writeJSON(w, http.StatusOK, h.workerViews(h.gather(), h.indexStats(), id)[0])
}

func (h *handler) stats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.statsView(h.gather()))
}

func (h *handler) decisions(w http.ResponseWriter, r *http.Request) {
	n, err := count(r, 50, 256)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	d := []Decision{}
	if h.b.Decisions != nil {
		d = h.b.Decisions.Decisions(n)
	}
	writeJSON(w, http.StatusOK, d)
}

func (h *handler) prefixes(w http.ResponseWriter, r *http.Request) {
	n, err := count(r, 20, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, h.prefixViews(h.indexStats(), n))
}

// count reads the n query parameter: def when absent, an error unless 1..limit.
func count(r *http.Request, def, limit int) (int, error) {
	s := r.URL.Query().Get("n")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > limit {
		return 0, fmt.Errorf("n: %q must be an integer from 1 to %d", s, limit)
	}
	return n, nil
}

// ActionResult answers a write action.
type ActionResult struct {
	Worker string `json:"worker"`
	Action string `json:"action"`
	// Changed is false when the action was a no-op (drain of a drained worker).
	Changed bool `json:"changed"`
	// Cleared is the number of index entries (worker, DP rank) cleared by "clear".
	Cleared int `json:"cleared,omitempty"`
	// State is the worker after the action.
	State WorkerView `json:"state"`
}

func (h *handler) workerAction(w http.ResponseWriter, r *http.Request) {
	id, action := r.PathValue("id"), r.PathValue("action")
	wk := h.b.Pool.Worker(id)
	if wk == nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("no worker %q", id))
		return
	}
	res := ActionResult{Worker: id, Action: action}
	switch action {
	case "drain":
		res.Changed = wk.Drain()
	case "undrain":
		res.Changed = wk.Undrain()
	case "clear":
		if h.b.Index == nil {
			writeError(w, http.StatusConflict, errors.New("the router has no prefix index"))
			return
		}
		for _, ws := range h.b.Index.Stats().Workers {
			if ws.Worker.ID == id {
				h.b.Index.ClearWorker(ws.Worker)
				res.Cleared++
			}
		}
		res.Changed = res.Cleared > 0
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown worker action %q (want drain, undrain or clear)", action))
		return
	}
	res.State = h.workerViews(h.gather(), h.indexStats(), id)[0]
	writeJSON(w, http.StatusOK, res)
}

// WorkerSpec is the body of POST /api/workers: the keys of a workers entry of the
// config file.
type WorkerSpec struct {
	URL       string   `json:"url"`
	ID        string   `json:"id"`
	Events    string   `json:"events"`
	Replay    string   `json:"replay"`
	Models    []string `json:"models"`
	DPRanks   int      `json:"dp_ranks"`
	APIKeyEnv string   `json:"api_key_env"`
	MaxConns  int      `json:"max_conns"`
}

// maxSpecBytes bounds the body of POST /api/workers.
const maxSpecBytes = 64 << 10

// DecodeWorkerSpec decodes a POST /api/workers body strictly (unknown keys, trailing
// data and bodies over 64 KiB are errors) into a worker with its defaults filled, not
// yet validated.
func DecodeWorkerSpec(body io.Reader) (configs.Worker, error) {
	dec := json.NewDecoder(io.LimitReader(body, maxSpecBytes+1))
	dec.DisallowUnknownFields()
	var s WorkerSpec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return configs.Worker{}, fmt.Errorf("body: want one JSON object of at most %d bytes with url and optional id, events, replay, models, dp_ranks, api_key_env, max_conns", maxSpecBytes)
		}
		return configs.Worker{}, fmt.Errorf("body: %w", err)
	}
	if dec.More() {
		return configs.Worker{}, errors.New("body: trailing data after the JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return configs.Worker{}, errors.New("body: trailing data after the JSON object")
	}
	return configs.Worker{URL: strings.TrimRight(s.URL, "/"), ID: s.ID, Events: s.Events, Replay: s.Replay,
		Models: s.Models, DPRanks: s.DPRanks, APIKeyEnv: s.APIKeyEnv, MaxConns: s.MaxConns}, nil
}

// addWorker adds a worker from the API (source "api"): 201 with its view.
func (h *handler) addWorker(w http.ResponseWriter, r *http.Request) {
	wc, err := DecodeWorkerSpec(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err := configs.ValidateWorker(&wc); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	added, err := h.b.Pool.Add(wc, upstream.SourceAPI)
	switch {
	case errors.Is(err, upstream.ErrDuplicateID), errors.Is(err, upstream.ErrDuplicateURL):
		writeError(w, http.StatusConflict, err)
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, err)
		return
	}
	w.Header().Set("Location", "workers/"+added.ID)
	writeJSON(w, http.StatusCreated, h.workerViews(h.gather(), h.indexStats(), added.ID)[0])
}

// removeWorker starts a worker's leave: 202 with its view (state leaving). From then
// GET /api/workers/{id} answers 404, and GET /api/workers lists it as leaving until its
// requests in flight have finished.
func (h *handler) removeWorker(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wk := h.b.Pool.Worker(id)
	if _, err := h.b.Pool.Remove(id, h.b.DrainTimeout); err != nil {
		writeError(w, http.StatusNotFound, err)
		return
	}
	writeJSON(w, http.StatusAccepted, h.workerView(wk, h.indexStats(), nil, false))
}

func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	if h.b.Reload == nil {
		writeError(w, http.StatusNotImplemented, errors.New("this router cannot reload its config"))
		return
	}
	rep, err := h.b.Reload()
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Errorf("reload: nothing applied: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (h *handler) indexStats() *indexer.Stats {
	if h.b.Index == nil {
		return nil
	}
	s := h.b.Index.Stats()
	return &s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("encode: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, err error) {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
