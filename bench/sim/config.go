package sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/kvroute/kvroute/bench/sim/kvevents"
	"gopkg.in/yaml.v3"
)

// Config describes one simulated worker. Start from [DefaultConfig]; the YAML keys are
// the field tags.
type Config struct {
	// Model is the served model name (the "model" field of requests must match it, and
	// it is the model_name metric label). Default "kvsim".
	Model string `yaml:"model"`
	// LoRA names the LoRA adapters the worker serves beside Model, as vLLM with
	// --enable-lora --lora-modules: /v1/models lists each with "parent" set to Model,
	// requests may name one as their model, and its KV blocks are its own (the adapter is
	// part of every block's hash, so an adapter's blocks never match the base model's or
	// another adapter's) and are published with lora_name and lora_id (the adapter's
	// position in this list, from 1, as vLLM numbers the adapters it loads). Default none.
	LoRA []string `yaml:"lora"`
	// Engine is the engine the worker imitates: "vllm" or "sglang" (event flavour and
	// metric names). Default "vllm".
	Engine string `yaml:"engine"`
	// EventFormat is the KV-event encoding: "array" (legacy vLLM), "map" (map-encoded
	// events, vLLM PR #42892) or "map-batch" (map events in a map batch). Default
	// "array".
	EventFormat string `yaml:"event_format"`
	// DigestHashes sends block hashes as 32-byte digests instead of uint64 (vLLM with
	// VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0). Default false.
	DigestHashes bool `yaml:"digest_hashes"`
	// Topic is the first frame of every event message. Default "".
	Topic string `yaml:"topic"`
	// BufferSteps is how many event batches the replay socket keeps. Default 10000.
	BufferSteps int `yaml:"buffer_steps"`
	// DPRank is the data-parallel rank sent in the event batches of DP rank 0 (rank r
	// sends DPRank+r); -1 omits it. Default 0.
	DPRank int `yaml:"dp_rank"`
	// DataParallelSize is the number of data-parallel ranks, each a full engine with its
	// own KV cache (KVBlocks each) and event sockets, behind one HTTP server. Default 1.
	DataParallelSize int `yaml:"data_parallel_size"`
	// BlockSize is the KV-cache block size in tokens. Default 16.
	BlockSize int `yaml:"block_size"`
	// KVBlocks is the KV-cache capacity in blocks; 0 takes the profile's capacity scaled
	// to BlockSize. Default 0.
	KVBlocks int `yaml:"kv_blocks"`
	// CPUBlocks is the capacity, in blocks, of a CPU offload tier modelled on vLLM's
	// OffloadingConnector (see offload.go): every block the engine computes is also
	// stored there (published as BlockStored with medium "CPU", evictions as
	// BlockRemoved "CPU"), and a prompt's prefix missing from the GPU cache but held
	// there is loaded back at CPUBandwidth instead of recomputed. 0 means no CPU tier.
	// Default 0.
	CPUBlocks int `yaml:"cpu_blocks"`
	// CPUBandwidth is the CPU-to-GPU copy bandwidth of the offload tier in GB/s (1e9
	// bytes per second), for all of a worker's GPUs together. Default 25 (an assumption:
	// about 40% of PCIe Gen5 x16's 64 GB/s).
	CPUBandwidth float64 `yaml:"cpu_bandwidth"`
	// MaxNumSeqs is the most requests running at once. Default 256.
	MaxNumSeqs int `yaml:"max_num_seqs"`
	// MaxNumBatchedTokens is the most tokens computed in one step. Default 8192.
	MaxNumBatchedTokens int `yaml:"max_num_batched_tokens"`
	// MaxModelLen is the most tokens (prompt plus output) of one request. Default 32768.
	MaxModelLen int `yaml:"max_model_len"`
	// Profile names the latency profile (see [Profiles]). Default "test".
	Profile string `yaml:"profile"`
	// TimeScale multiplies every modelled duration: 0.1 runs ten times faster than real
	// time. Default 1.
	TimeScale float64 `yaml:"time_scale"`
	// StreamChunkTokens is how many tokens a streamed chunk carries at most; the first
	// token and the last chunk go out at once. Default 1.
	StreamChunkTokens int `yaml:"stream_chunk_tokens"`
	// MeanOutputTokens sets the natural reply length of requests without ignore_eos:
	// a deterministic function of the prompt, uniform in [1, 2*MeanOutputTokens], then
	// clamped to [min_tokens, max_tokens]. Default 64.
	MeanOutputTokens int `yaml:"mean_output_tokens"`
	// Seed seeds the engine-hash chain and the fault injector. Worker i of a fleet uses
	// Seed+i, so equal content gets different engine hashes on different workers, as
	// vLLM with a random hash seed does. Default 1.
	Seed int64 `yaml:"seed"`
	// Faults are the faults active from the start. Default none.
	Faults Faults `yaml:"faults"`
	// RequireAPIKey, when set, makes the worker answer 401 to every request without
	// exactly one "Authorization: Bearer <RequireAPIKey>" header, on every path but the
	// /sim/ control endpoints. That is stricter than vLLM's --api-key, which guards /v1/*
	// only, so that a test sees every request a client makes carry the key. Default "".
	RequireAPIKey string `yaml:"require_api_key"`

	// Role is the worker's part in prefill/decode disaggregation (see pd.go and the
	// package doc): "prefill", "decode" or "both" ("" is "both"). Default "both".
	Role string `yaml:"role"`
	// BootstrapPort is the port of the P/D side channel of a prefill worker (SGLang's
	// bootstrap_port, vLLM's remote_port); 0 picks a free port. A prefill fleet gives
	// worker i BootstrapPort+i. Decode and both workers have no side channel; on a decode worker
	// it is the port an SGLang request with a null bootstrap_port pulls from (SGLang's
	// default-port rule; 8998 when 0). Default 0.
	BootstrapPort int `yaml:"bootstrap_port"`
	// PDLinkGbps is the bandwidth of the link a KV transfer crosses, in Gbit/s; 0 means
	// 100. Default 0.
	PDLinkGbps float64 `yaml:"pd_link_gbps"`
	// KVBytesPerToken is the KV size of one token moved by a transfer; 0 takes the
	// profile's. Default 0.
	KVBytesPerToken int `yaml:"kv_bytes_per_token"`
	// PDTransferTimeoutMS bounds how long a decode worker waits for its KV (the pull
	// call, and an SGLang room's prefill) before failing the request; 0 means 30000.
	// Default 0.
	PDTransferTimeoutMS int `yaml:"pd_transfer_timeout_ms"`
	// PDKVHoldMS is how long a prefill worker holds a finished request's blocks for the
	// transfer before freeing them (vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT); 0 means
	// 480000. Default 0.
	PDKVHoldMS int `yaml:"pd_kv_hold_ms"`

	// Tokenizer replaces the built-in [WordTokenizer] (Go API only). If it also
	// implements [ChatTemplate] it renders chats too.
	Tokenizer Tokenizer `yaml:"-"`
	// BodyTokenizer, when set, tokenizes every request instead of Tokenizer, from the
	// request body as the engine does (Go API only; the kvsim command sets it from
	// --tokenizer or tokenizer_path).
	BodyTokenizer BodyTokenizer `yaml:"-"`
}

// FleetConfig describes a fleet of identical workers.
type FleetConfig struct {
	// Workers is the number of workers. Default 1.
	Workers int `yaml:"workers"`
	// Host is the address every socket binds to. Default "127.0.0.1".
	Host string `yaml:"host"`
	// BasePort, when positive, gives worker i the HTTP port BasePort+3i, the event PUB
	// port BasePort+3i+1 and the replay port BasePort+3i+2; 0 picks free ports. With
	// D data-parallel ranks a worker takes 1+2D ports: HTTP, D event ports, D replay
	// ports. Default 0.
	BasePort int `yaml:"base_port"`
	// TokenizerPath is a model directory (tokenizer.json and tokenizer_config.json) or a
	// tokenizer.json file the kvsim command loads with kvroute's router/tokenize/chat and sets as
	// every worker's BodyTokenizer; the sim package itself does not read it. Default ""
	// (the built-in tokenizer).
	TokenizerPath string `yaml:"tokenizer_path"`
	// IDPrefix starts every worker's id: IDPrefix+"0", IDPrefix+"1", ... (e.g. "p" and
	// "d" for a prefill and a decode fleet). Default "w".
	IDPrefix string `yaml:"id_prefix"`
	// Worker is the configuration of every worker; in YAML its keys sit at the top level.
	Worker Config `yaml:",inline"`
}

// DefaultConfig returns a worker configuration with every default set.
func DefaultConfig() Config {
	return Config{
		Model:               "kvsim",
		Engine:              "vllm",
		EventFormat:         "array",
		BufferSteps:         10000,
		BlockSize:           16,
		MaxNumSeqs:          256,
		MaxNumBatchedTokens: 8192,
		MaxModelLen:         32768,
		Profile:             "test",
		TimeScale:           1,
		StreamChunkTokens:   1,
		MeanOutputTokens:    64,
		Seed:                1,
		DataParallelSize:    1,
		Role:                RoleBoth,
		CPUBandwidth:        25,
	}
}

// DefaultFleetConfig returns a one-worker fleet configuration with every default set.
func DefaultFleetConfig() FleetConfig {
	return FleetConfig{Workers: 1, Host: "127.0.0.1", IDPrefix: "w", Worker: DefaultConfig()}
}

// Validate reports the first invalid field, quoting its value.
func (c *Config) Validate() error {
	if c.Model == "" {
		return errors.New("model must not be empty")
	}
	for i, a := range c.LoRA {
		if a == "" || a == c.Model || slices.Contains(c.LoRA[:i], a) {
			return fmt.Errorf("lora adapter %q must be non-empty, unique and not the model's name", a)
		}
	}
	if err := c.eventFormat().Validate(); err != nil {
		return err
	}
	if _, err := LookupProfile(c.Profile); err != nil {
		return err
	}
	checks := []struct {
		name string
		v    int
		min  int
	}{
		{"buffer_steps", c.BufferSteps, 1},
		{"block_size", c.BlockSize, 1},
		{"kv_blocks", c.KVBlocks, 0},
		{"max_num_seqs", c.MaxNumSeqs, 1},
		{"max_num_batched_tokens", c.MaxNumBatchedTokens, 1},
		{"max_model_len", c.MaxModelLen, 1},
		{"stream_chunk_tokens", c.StreamChunkTokens, 1},
		{"mean_output_tokens", c.MeanOutputTokens, 1},
		{"dp_rank", c.DPRank, -1},
		{"data_parallel_size", c.DataParallelSize, 1},
		{"cpu_blocks", c.CPUBlocks, 0},
	}
	for _, ch := range checks {
		if ch.v < ch.min {
			return fmt.Errorf("%s must be at least %d, got %d", ch.name, ch.min, ch.v)
		}
	}
	if c.DataParallelSize > 64 {
		return fmt.Errorf("data_parallel_size must be at most 64, got %d", c.DataParallelSize)
	}
	if !(c.TimeScale > 0) || c.TimeScale > 1e6 {
		return fmt.Errorf("time_scale must be in (0, 1e6], got %v", c.TimeScale)
	}
	if err := c.validatePD(); err != nil {
		return err
	}
	if !(c.CPUBandwidth > 0) || c.CPUBandwidth > 1e6 {
		return fmt.Errorf("cpu_bandwidth must be in (0, 1e6] GB/s, got %v", c.CPUBandwidth)
	}
	if err := c.Faults.Validate(); err != nil {
		return fmt.Errorf("faults: %w", err)
	}
	return nil
}

// Validate reports the first invalid field of the fleet or its worker configuration.
func (c *FleetConfig) Validate() error {
	if c.Workers < 1 || c.Workers > 1024 {
		return fmt.Errorf("workers must be in [1, 1024], got %d", c.Workers)
	}
	if c.Host == "" {
		return errors.New("host must not be empty")
	}
	if len(c.IDPrefix) > 64 {
		return fmt.Errorf("id_prefix must have at most 64 bytes, got %d", len(c.IDPrefix))
	}
	if err := c.Worker.Validate(); err != nil {
		return err
	}
	if c.Worker.BootstrapPort > 0 && c.Worker.BootstrapPort+c.Workers > 65536 {
		return fmt.Errorf("bootstrap_port %d leaves no room for %d workers", c.Worker.BootstrapPort, c.Workers)
	}
	if stride := c.portStride(); c.BasePort < 0 || c.BasePort+stride*c.Workers > 65536 {
		return fmt.Errorf("base_port %d leaves no room for %d workers (%d ports each)", c.BasePort, c.Workers, stride)
	}
	return nil
}

func (c *Config) eventFormat() kvevents.Format {
	return kvevents.Format{
		Engine:       kvevents.Engine(c.Engine),
		Layout:       kvevents.Layout(c.EventFormat),
		DigestHashes: c.DigestHashes,
	}
}

// ParseFleetConfig decodes a YAML fleet configuration over the defaults, strictly
// (unknown keys are errors), and validates it. It does no I/O.
func ParseFleetConfig(data []byte) (FleetConfig, error) {
	c := DefaultFleetConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("decode kvsim config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("invalid kvsim config: %w", err)
	}
	return c, nil
}

// LoadFleetConfig reads and parses a YAML fleet configuration file.
func LoadFleetConfig(path string) (FleetConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return DefaultFleetConfig(), fmt.Errorf("read kvsim config: %w", err)
	}
	c, err := ParseFleetConfig(data)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// tokenizers returns what the worker tokenizes with: BodyTokenizer if set, else the
// configured Tokenizer (or the built-in one) with its chat template (or the built-in
// format).
func (c *Config) tokenizers() tokenizers {
	t := tokenizers{tk: WordTokenizer{}, tmpl: WordTokenizer{}, body: c.BodyTokenizer}
	if c.Tokenizer != nil {
		t.tk = c.Tokenizer
		if tmpl, ok := c.Tokenizer.(ChatTemplate); ok {
			t.tmpl = tmpl
		}
	}
	return t
}

// portStride is the number of ports each worker takes from BasePort.
func (c *FleetConfig) portStride() int { return 1 + 2*c.Worker.DataParallelSize }
