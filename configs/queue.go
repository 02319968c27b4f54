package configs

import (
	"slices"
	"strings"
	"time"
)

// Queue configures the router's wait queue (router/queue.go). A request queues only when
// every available worker serving its model is full: filtered out by the load guard,
// cache_aware.max_inflight or cache_aware.max_kv_usage. Without the queue such a
// request is refused at once although the fleet is healthy; with it, it waits for the
// first free slot, like Dynamo's --router-queue-threshold and the SGLang gateway's
// --queue-size. A queued request keeps the memory of its body, counted against
// limits.max_inflight_body_bytes as any request in flight, so the queue holds at most
// min(max_size x max_body_bytes, limits.max_inflight_body_bytes) bytes of bodies.
type Queue struct {
	// MaxSize bounds the requests waiting at once, all classes together; one more gets
	// 429 server_overloaded with Retry-After. 0 turns the queue off: a full fleet
	// answers 429 at once. Default 256: on, because a fleet that is full for a moment
	// (a burst) should make clients wait a little rather than fail, and the queue costs
	// nothing while the fleet is not full (it only engages when the load guard filters
	// out every worker, which by default, without cache_aware.max_inflight, happens
	// only when every worker reports a full KV cache).
	MaxSize int `yaml:"max_size"`
	// Timeout bounds one request's wait in the queue; past it the request gets 429
	// server_overloaded with Retry-After. It counts from the request's entry into the
	// queue, and its routing (timeouts.*) starts afresh once it leaves. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// Classes names the priority classes, highest first (1 to 16 of letters, digits,
	// '.', '_' and '-'). A request's class comes from its x-kvroute-priority header, else
	// from its API key (auth.keys[].priority), else DefaultClass; a header naming no
	// class gets 400. The queue is FIFO within a class and serves a higher class first.
	// Default [high, normal, low].
	Classes []string `yaml:"classes"`
	// DefaultClass is the class of a request that names none; one of Classes. Default
	// "normal".
	DefaultClass string `yaml:"default_class"`
}

// MaxQueueClasses bounds queue.classes: the classes are metric labels.
const MaxQueueClasses = 16

// ClassIndex returns the position of class name in Classes (0 is the highest), or -1.
func (q *Queue) ClassIndex(name string) int { return slices.Index(q.Classes, name) }

func defaultQueue() Queue {
	return Queue{MaxSize: 256, Timeout: 30 * time.Second, Classes: []string{"high", "normal", "low"}, DefaultClass: "normal"}
}

// validateQueue appends the queue settings' problems, and those of the API keys'
// priority classes, with bad.
func (c *Config) validateQueue(bad func(format string, args ...any)) {
	q := c.Queue
	if q.MaxSize < 0 {
		bad("queue.max_size: %d must be zero (off) or positive", q.MaxSize)
	}
	if q.Timeout <= 0 {
		bad("queue.timeout: %q must be positive", q.Timeout.String())
	}
	if len(q.Classes) == 0 || len(q.Classes) > MaxQueueClasses {
		bad("queue.classes: %d classes, must be 1 to %d", len(q.Classes), MaxQueueClasses)
	}
	for i, name := range q.Classes {
		if !keyName.MatchString(name) {
			bad("queue.classes[%d]: %q must be 1 to 64 letters, digits, '.', '_' or '-'", i, name)
		} else if j := slices.Index(q.Classes, name); j < i {
			bad("queue.classes[%d]: %q is already queue.classes[%d]", i, name, j)
		}
	}
	list := strings.Join(q.Classes, ", ")
	if q.ClassIndex(q.DefaultClass) < 0 {
		bad("queue.default_class: %q is not one of queue.classes (%s)", q.DefaultClass, list)
	}
	for i, k := range c.Auth.Keys {
		if k.Priority != "" && q.ClassIndex(k.Priority) < 0 {
			bad("auth.keys[%d].priority: %q is not one of queue.classes (%s)", i, k.Priority, list)
		}
	}
}
