// Command kvsim serves a fleet of simulated vLLM/SGLang workers on loopback (package
// bench/sim). It prints one JSON line per worker, {"id","url","events","replay"} (plus
// "ranks" with --data-parallel-size > 1), then serves until SIGINT or SIGTERM, when it
// stops gracefully.
//
//	kvsim --workers 4 --base-port 0 [--config kvsim.yaml] [flags]
//
// Flags override the YAML file's values; the YAML keys are those of sim.FleetConfig.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/router/tokenize/chat"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "kvsim:", err)
		os.Exit(2)
	}
}

// run parses args, starts the fleet, prints the workers and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kvsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := sim.DefaultFleetConfig()
	configPath := fs.String("config", "", "YAML fleet configuration file (flags override it)")
	workers := fs.Int("workers", def.Workers, "number of workers")
	host := fs.String("host", def.Host, "address to bind")
	basePort := fs.Int("base-port", def.BasePort, "worker i uses ports P+3i (HTTP), P+3i+1 (events), P+3i+2 (replay); 0: free ports")
	w := def.Worker
	model := fs.String("model", w.Model, "served model name")
	lora := fs.String("lora", strings.Join(w.LoRA, ","), "comma-separated LoRA adapters served beside the model (listed in /v1/models with parent = the model)")
	engine := fs.String("engine", w.Engine, "engine to imitate: vllm or sglang")
	eventFormat := fs.String("event-format", w.EventFormat, "KV-event encoding: array, map or map-batch")
	digest := fs.Bool("digest-hashes", w.DigestHashes, "send block hashes as 32-byte digests (vLLM)")
	topic := fs.String("topic", w.Topic, "KV-event topic")
	bufferSteps := fs.Int("buffer-steps", w.BufferSteps, "event batches kept for replay")
	dpRank := fs.Int("dp-rank", w.DPRank, "data-parallel rank in rank 0's event batches (-1: omit)")
	dpSize := fs.Int("data-parallel-size", w.DataParallelSize, "data-parallel ranks per worker (engines with their own cache and event ports)")
	blockSize := fs.Int("block-size", w.BlockSize, "KV-cache block size in tokens")
	kvBlocks := fs.Int("kv-blocks", w.KVBlocks, "KV-cache capacity in blocks (0: the profile's)")
	cpuBlocks := fs.Int("cpu-blocks", w.CPUBlocks, "CPU offload tier capacity in blocks: computed blocks are also kept there (events with medium CPU) and loaded back at --cpu-bandwidth (0: no tier)")
	cpuBandwidth := fs.Float64("cpu-bandwidth", w.CPUBandwidth, "CPU offload tier's CPU-to-GPU copy bandwidth in GB/s")
	maxSeqs := fs.Int("max-num-seqs", w.MaxNumSeqs, "most running requests")
	maxBatched := fs.Int("max-num-batched-tokens", w.MaxNumBatchedTokens, "most tokens per engine step")
	maxLen := fs.Int("max-model-len", w.MaxModelLen, "most tokens per request")
	profile := fs.String("profile", w.Profile, "latency profile: test, llama-3.1-8b-h100, qwen3-32b-2xh100")
	timeScale := fs.Float64("time-scale", w.TimeScale, "multiplies modelled durations (0.1: 10x faster)")
	chunkTokens := fs.Int("stream-chunk-tokens", w.StreamChunkTokens, "tokens per streamed chunk")
	meanOut := fs.Int("mean-output-tokens", w.MeanOutputTokens, "mean natural output length")
	seed := fs.Int64("seed", w.Seed, "seed of engine hashes and faults")
	eventDelay := fs.Duration("event-delay", time.Duration(w.Faults.EventDelayMS)*time.Millisecond, "send every KV-event batch this late, stamped with the engine time of its change (a lagging feed; faults.event_delay_ms, POST /sim/fault)")
	role := fs.String("role", w.Role, "P/D role: prefill, decode or both")
	idPrefix := fs.String("id-prefix", def.IDPrefix, "worker ids are this prefix and the index (e.g. p for a prefill fleet)")
	bootstrapPort := fs.Int("bootstrap-port", w.BootstrapPort, "P/D side-channel port of prefill workers (SGLang's bootstrap port, vLLM's remote_port); worker i uses P+i; 0: free ports")
	linkGbps := fs.Float64("pd-link-gbps", w.PDLinkGbps, "bandwidth of the P/D KV-transfer link in Gbit/s (0: 100)")
	kvBytes := fs.Int("kv-bytes-per-token", w.KVBytesPerToken, "KV bytes per token moved by a P/D transfer (0: the profile's)")
	xferTimeout := fs.Int("pd-transfer-timeout-ms", w.PDTransferTimeoutMS, "how long a decode worker waits for its KV before failing the request (0: 30000)")
	kvHold := fs.Int("pd-kv-hold-ms", w.PDKVHoldMS, "how long a prefill worker holds a finished request's KV for the transfer (0: 480000)")
	tokenizer := fs.String("tokenizer", def.TokenizerPath, "model directory (tokenizer.json + tokenizer_config.json) or tokenizer.json: tokenize with kvroute's router/tokenize/chat instead of the built-in tokenizer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg := def
	if *configPath != "" {
		c, err := sim.LoadFleetConfig(*configPath)
		if err != nil {
			return err
		}
		cfg = c
	}
	set := map[string]func(){
		"workers": func() { cfg.Workers = *workers }, "host": func() { cfg.Host = *host },
		"base-port": func() { cfg.BasePort = *basePort }, "model": func() { cfg.Worker.Model = *model },
		"engine": func() { cfg.Worker.Engine = *engine }, "event-format": func() { cfg.Worker.EventFormat = *eventFormat },
		"digest-hashes": func() { cfg.Worker.DigestHashes = *digest }, "topic": func() { cfg.Worker.Topic = *topic },
		"buffer-steps": func() { cfg.Worker.BufferSteps = *bufferSteps }, "dp-rank": func() { cfg.Worker.DPRank = *dpRank },
		"data-parallel-size": func() { cfg.Worker.DataParallelSize = *dpSize },
		"block-size":         func() { cfg.Worker.BlockSize = *blockSize }, "kv-blocks": func() { cfg.Worker.KVBlocks = *kvBlocks },
		"max-num-seqs": func() { cfg.Worker.MaxNumSeqs = *maxSeqs }, "max-num-batched-tokens": func() { cfg.Worker.MaxNumBatchedTokens = *maxBatched },
		"max-model-len": func() { cfg.Worker.MaxModelLen = *maxLen }, "profile": func() { cfg.Worker.Profile = *profile },
		"time-scale": func() { cfg.Worker.TimeScale = *timeScale }, "stream-chunk-tokens": func() { cfg.Worker.StreamChunkTokens = *chunkTokens },
		"mean-output-tokens": func() { cfg.Worker.MeanOutputTokens = *meanOut }, "seed": func() { cfg.Worker.Seed = *seed },
		"tokenizer": func() { cfg.TokenizerPath = *tokenizer },
		"role":      func() { cfg.Worker.Role = *role }, "id-prefix": func() { cfg.IDPrefix = *idPrefix }, "bootstrap-port": func() { cfg.Worker.BootstrapPort = *bootstrapPort },
		"pd-link-gbps": func() { cfg.Worker.PDLinkGbps = *linkGbps }, "kv-bytes-per-token": func() { cfg.Worker.KVBytesPerToken = *kvBytes },
		"pd-transfer-timeout-ms": func() { cfg.Worker.PDTransferTimeoutMS = *xferTimeout }, "pd-kv-hold-ms": func() { cfg.Worker.PDKVHoldMS = *kvHold }, "lora": func() { cfg.Worker.LoRA = splitList(*lora) },
		"event-delay": func() { cfg.Worker.Faults.EventDelayMS = eventDelay.Milliseconds() },
		"cpu-blocks":  func() { cfg.Worker.CPUBlocks = *cpuBlocks }, "cpu-bandwidth": func() { cfg.Worker.CPUBandwidth = *cpuBandwidth },
	}
	fs.Visit(func(f *flag.Flag) {
		if apply, ok := set[f.Name]; ok {
			apply()
		}
	})
	if cfg.TokenizerPath != "" {
		enc, err := chat.Load(cfg.TokenizerPath)
		if err != nil {
			return fmt.Errorf("load tokenizer: %w", err)
		}
		cfg.Worker.BodyTokenizer = enc
	}
	// The fleet outlives ctx so that in-flight requests can finish after the signal.
	fleet, err := sim.StartFleet(context.WithoutCancel(ctx), cfg)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for _, info := range fleet.Infos() {
		if err := enc.Encode(info); err != nil {
			_ = fleet.Close()
			return fmt.Errorf("print workers: %w", err)
		}
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return fleet.Shutdown(sctx)
}

var _ sim.BodyTokenizer = (*chat.Encoder)(nil)

// splitList splits a comma-separated flag value, dropping spaces around items; an empty
// value is an empty list.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
