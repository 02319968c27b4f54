package stack

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/discovery"
	"github.com/kvroute/kvroute/upstream/discovery/dns"
	"github.com/kvroute/kvroute/upstream/discovery/kubernetes"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

// This file connects the pool's membership (upstream/membership.go) to everything keyed
// by worker: the event feeds, the prefix index and routing history, the router's metric
// series and the replica sync; and runs the membership sources: the static workers list
// (applied again at each reload), discovery sources and the admin API (which calls the
// pool directly).

// onMembership is the pool's membership hook. It runs one change at a time.
func (st *Stack) onMembership(c upstream.Change) {
	w := c.Worker
	switch c.Kind {
	case upstream.Joined, upstream.ModelsChanged:
		st.refreshFeeds()
	case upstream.Leaving:
		st.refreshFeeds() // stops its feed, which removes its event entries
		st.forgetIndex(w) // and its predictions: it takes no new request
	case upstream.Left:
		if c.Replaced {
			return // the id belongs to a new worker now
		}
		// Again: a request routed to it just before it left may have recorded its
		// prediction after the first removal.
		st.forgetIndex(w)
		st.Server.ForgetWorker(w.ID)
		st.Scraper.Forget(w.ID)
		if st.Replica != nil {
			st.Replica.Forget(w.ID)
		}
		if st.NATS != nil {
			st.NATS.Forget(w.ID)
		}
	}
}

// forgetIndex removes every DP rank of w from the index and the routing history.
func (st *Stack) forgetIndex(w *upstream.Worker) {
	for r := range max(w.DPRanks, 1) {
		k := proto.WorkerKey{ID: w.ID, DPRank: r}
		st.Backend().RemoveWorker(k)
		if st.History != nil {
			st.History.RemoveWorker(k)
		}
	}
}

// refreshFeeds gives the event manager the feeds of the current members; a no-op
// before Run starts the feeds or without ZMQ events.
func (st *Stack) refreshFeeds() {
	if st.Events == nil || !st.feedsOn.Load() {
		return
	}
	if err := st.setFeeds(); err != nil {
		st.log.Error("event feeds not updated", "err", err)
	}
}

// setFeeds gives the event manager one feed per member that publishes events and
// whose models are known. A feed's model seeds the hashes of its blocks, so it is the
// worker's base model ([upstream.Worker.BaseModel]; adapters' blocks carry their
// lora_name); a worker whose models are not known yet gets its feed when they are (its
// replay buffer then catches the index up).
func (st *Stack) setFeeds() error {
	var feeds []kvevents.WorkerConfig
	for _, w := range st.Pool.Workers() {
		if w.Events == "" {
			continue
		}
		model := w.BaseModel()
		if model == "" {
			st.log.Debug("worker publishes events but its model is unknown yet; its feed starts when it is", "worker", w.ID)
			continue
		}
		feeds = append(feeds, kvevents.WorkerConfig{
			Worker: w.ID, Model: model, Endpoint: w.Events, ReplayEndpoint: w.Replay, DPRanks: w.DPRanks,
		})
	}
	if err := st.Events.Set(feeds); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	return nil
}

// staticMembers are the static workers of cfg as membership, all ready.
func staticMembers(ws []configs.Worker) []discovery.Member {
	out := make([]discovery.Member, len(ws))
	for i, w := range ws {
		out[i] = discovery.Member{Worker: w, Ready: true}
	}
	return out
}

// applyWorkers makes the static members be ws (a reload) and describes the change for
// the reload report ("" when nothing changed) and the workers refused (an id or URL
// that a worker of another source has).
func (st *Stack) applyWorkers(ws []configs.Worker) (change string, refused []string) {
	rep := st.Pool.Sync(upstream.SourceStatic, staticMembers(ws), st.Config.Timeouts.Shutdown)
	var parts []string
	for _, p := range []struct {
		sign string
		ids  []string
	}{{"+", rep.Joined}, {"-", rep.Left}, {"~", rep.Replaced}} {
		for _, id := range p.ids {
			parts = append(parts, p.sign+id)
		}
	}
	for id, why := range rep.Rejected {
		refused = append(refused, fmt.Sprintf("workers[%s]: %s", id, why))
	}
	slices.Sort(refused)
	if len(parts) > 0 {
		change = "workers: " + strings.Join(parts, " ")
	}
	return change, refused
}

// newSources builds the configured discovery sources.
func (st *Stack) newSources() error {
	d := st.Config.Discovery
	if d.DNS != nil {
		src, err := dns.New(*d.DNS, dns.Options{Registerer: st.Registry, Logger: st.log})
		if err != nil {
			return fmt.Errorf("discovery.dns: %w", err)
		}
		st.sources = append(st.sources, src)
	}
	if d.Kubernetes != nil {
		src, err := kubernetes.New(*d.Kubernetes, kubernetes.Options{Registerer: st.Registry, Logger: st.log, Client: st.KubeClient,
			Dynamic: st.KubeDynamic})
		if err != nil {
			return fmt.Errorf("discovery.kubernetes: %w", err)
		}
		st.sources = append(st.sources, src)
	}
	return nil
}

// runDiscovery runs each configured discovery source, applying its views to the pool.
func (st *Stack) runDiscovery(goRun func(func(context.Context))) {
	for _, src := range st.sources {
		goRun(func(ctx context.Context) {
			err := src.Run(ctx, func(ms []discovery.Member) {
				rep := st.Pool.Sync(src.Name(), ms, st.Config.Timeouts.Shutdown)
				if len(rep.Joined)+len(rep.Left)+len(rep.Replaced)+len(rep.Ready)+len(rep.Unready) > 0 {
					st.log.Info("discovery", "source", src.Name(), "joined", rep.Joined, "left", rep.Left,
						"replaced", rep.Replaced, "ready", rep.Ready, "unready", rep.Unready)
				}
			})
			if err != nil && ctx.Err() == nil {
				st.log.Error("discovery source stopped; the workers it found stay", "source", src.Name(), "err", err)
			}
		})
	}
}

// watchSIGHUP starts reloading the config at each SIGHUP until ctx ends. The handler is
// registered before it returns, so a SIGHUP sent once Run is ready never takes the
// process's default action (exit).
func (st *Stack) watchSIGHUP(goRun func(func(context.Context))) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	goRun(func(ctx context.Context) {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if rep, err := st.reload(); err != nil {
					st.log.Error("SIGHUP: config not reloaded", "err", err)
				} else {
					st.log.Info("SIGHUP: config reloaded", "applied", rep.Applied, "restart_required", rep.RestartRequired, "refused", rep.Refused)
				}
			}
		}
	})
}
