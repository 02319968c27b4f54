package stack

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/tokenize/chat"
)

// encoderCaches exports the conversation caches of the local tokenizers this router
// loaded (tokenize mode local, and auto's models with a tokenizer, loaded at their first
// request), per tokenizer directory:
//
//	kvroute_tokenize_message_cache_entries{tokenizer}          converted messages held
//	kvroute_tokenize_message_cache_bytes{tokenizer}            their accounted bytes (a quarter of the 64 MB budget at most)
//	kvroute_tokenize_message_cache_lookups_total{tokenizer,result}  hit or miss
//	kvroute_tokenize_message_cache_evictions_total{tokenizer}
//	kvroute_tokenize_conversation_cache_entries{tokenizer}     recent requests' message lists held
//	kvroute_tokenize_conversation_cache_bytes{tokenizer}       their accounted bytes (an eighth of the budget at most)
//	kvroute_tokenize_conversation_cache_lookups_total{tokenizer,result}  hit (a request took its earlier messages from one) or miss
//	kvroute_tokenize_render_loop_iterations_total{tokenizer,result}  iterations of the template's loops over the messages: copied from the conversation's previous render, or run
//
// Safe for concurrent use.
type encoderCaches struct {
	mu   sync.Mutex // guards encs
	encs map[string]*chat.Encoder

	entries, bytes, lookups, evictions  *prometheus.Desc
	convEntries, convBytes, convLookups *prometheus.Desc
	renderIters                         *prometheus.Desc
}

func newEncoderCaches() *encoderCaches {
	l := []string{"tokenizer"}
	return &encoderCaches{
		encs: map[string]*chat.Encoder{},
		entries: prometheus.NewDesc("kvroute_tokenize_message_cache_entries",
			"Chat messages held converted by the local tokenizer's conversation cache.", l, nil),
		bytes: prometheus.NewDesc("kvroute_tokenize_message_cache_bytes",
			"Accounted bytes of the local tokenizer's message cache (bounded by a quarter of its 64 MB conversation budget).", l, nil),
		lookups: prometheus.NewDesc("kvroute_tokenize_message_cache_lookups_total",
			"Lookups of chat messages in the local tokenizer's message cache, by result (hit: the message was not decoded again).",
			[]string{"tokenizer", "result"}, nil),
		evictions: prometheus.NewDesc("kvroute_tokenize_message_cache_evictions_total",
			"Messages evicted from the local tokenizer's message cache to stay within its bound.", l, nil),
		convEntries: prometheus.NewDesc("kvroute_tokenize_conversation_cache_entries",
			"Message lists of recent chat requests held by the local tokenizer's conversation cache.", l, nil),
		convBytes: prometheus.NewDesc("kvroute_tokenize_conversation_cache_bytes",
			"Accounted bytes of the local tokenizer's conversation cache (bounded by an eighth of its 64 MB conversation budget).", l, nil),
		convLookups: prometheus.NewDesc("kvroute_tokenize_conversation_cache_lookups_total",
			"Chat requests by whether they took their earlier messages from the local tokenizer's conversation cache (hit) or not (miss).",
			[]string{"tokenizer", "result"}, nil),
		renderIters: prometheus.NewDesc("kvroute_tokenize_render_loop_iterations_total",
			"Iterations of the chat templates' loops over the messages, by whether the render copied them from the conversation's previous render (copied) or ran them (run).",
			[]string{"tokenizer", "result"}, nil),
	}
}

// load loads the tokenizer in dir (see chat.Load) and exports its caches.
func (c *encoderCaches) load(dir string) (blockhash.Tokenizer, error) {
	enc, err := chat.Load(dir)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.encs[dir] = enc // a reload of the same directory replaces the old encoder
	c.mu.Unlock()
	return enc, nil
}

// Describe implements prometheus.Collector.
func (c *encoderCaches) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.entries
	ch <- c.bytes
	ch <- c.lookups
	ch <- c.evictions
	ch <- c.convEntries
	ch <- c.convBytes
	ch <- c.convLookups
	ch <- c.renderIters
}

// Collect implements prometheus.Collector.
func (c *encoderCaches) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for dir, enc := range c.encs {
		s := enc.CacheStats()
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Messages), dir)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.MessageBytes), dir)
		ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(s.MessageHits), dir, "hit")
		ch <- prometheus.MustNewConstMetric(c.lookups, prometheus.CounterValue, float64(s.MessageMisses), dir, "miss")
		ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(s.MessageEvictions), dir)
		ch <- prometheus.MustNewConstMetric(c.convEntries, prometheus.GaugeValue, float64(s.Conversations), dir)
		ch <- prometheus.MustNewConstMetric(c.convBytes, prometheus.GaugeValue, float64(s.ConversationBytes), dir)
		ch <- prometheus.MustNewConstMetric(c.convLookups, prometheus.CounterValue, float64(s.ConversationHits), dir, "hit")
		ch <- prometheus.MustNewConstMetric(c.convLookups, prometheus.CounterValue, float64(s.ConversationMisses), dir, "miss")
		ch <- prometheus.MustNewConstMetric(c.renderIters, prometheus.CounterValue, float64(s.RenderCopied), dir, "copied")
		ch <- prometheus.MustNewConstMetric(c.renderIters, prometheus.CounterValue, float64(s.RenderRan), dir, "run")
	}
}
