package main

// The Prometheus endpoint ([metrics] address): GET /metrics on a socket of
// its own, served by the agent process (never on the app's sockets, never
// in the request path), in the text format of package metrics.
//
// Counters count from this process's start: an in-place upgrade (SIGUSR2)
// hands the endpoint's listening socket over (it never stops accepting)
// but starts every counter again from 0, which Prometheus's rate() and
// increase() take as a counter reset. Gauges (workers, generation, release)
// are read at each scrape and carry on. An address in use at start is a
// config error (exit 2), like a [[listen]] address.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/metrics"
)

// metricsFile names the endpoint's socket among the files handed over.
const metricsFile = "metrics"

// opStart labels the start-up generation in handoff_deploys_total.
const opStart = "start"

// agentMetrics is the agent's registry and its HTTP server. A nil
// *agentMetrics is the endpoint off: every method is then a no-op, so that
// an agent without [metrics] neither registers nor collects anything.
type agentMetrics struct {
	reg        *metrics.Registry
	deploys    *metrics.CounterVec   // op, result (the result's code)
	duration   *metrics.HistogramVec // op
	readiness  *metrics.Histogram
	fetchBytes *metrics.Counter
	hookFails  *metrics.CounterVec // stage

	ln   net.Listener
	srv  *http.Server
	done chan error // Serve's return
}

// readinessBuckets span a delay readiness of a few ms to a timeout of
// minutes.
var readinessBuckets = []float64{.05, .1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300}

// newAgentMetrics registers the agent's metrics; the scrape-time ones read
// d's master, store, lost-socket record and upgrade state, so it is made
// once they are set (serveMetrics).
func newAgentMetrics(d *daemon) *agentMetrics {
	r := metrics.NewRegistry()
	m := &agentMetrics{reg: r,
		deploys:    r.CounterVec("handoff_deploys_total", "Operations ended, by op (deploy, rollback, reload, start) and result (the reply's code: ok, failed, busy, superseded, not_found, usage, config, restart_needed, internal).", "op", "result"),
		duration:   r.HistogramVec("handoff_deploy_duration_seconds", "Time from an operation's start to its result, by op.", metrics.DefBuckets, "op"),
		readiness:  r.Histogram("handoff_readiness_seconds", "Time from a reload's start to the readiness quorum of the new generation (successful reloads).", readinessBuckets),
		fetchBytes: r.Counter("handoff_fetch_bytes_total", "Bytes of release artifacts downloaded or copied."),
		hookFails:  r.CounterVec("handoff_hook_failures_total", "Hook stages that failed, by stage.", "stage"),
	}
	m.zeroSeries()
	snap := &scrapeSnapshot{}
	r.BeforeScrape(func() { snap.read(d) })
	registerWorkerFamilies(r, snap)
	registerRescueFamilies(r, snap)
	r.Func("handoff_listeners_lost_total", "Listening sockets a worker shut down or whose unix path went, restored by the agent.", metrics.TypeCounter, nil, func(emit func(float64, ...string)) {
		emit(float64(snap.lost))
	})
	r.Func("handoff_agent_info", "1, labelled with the agent's version and its in-place upgrades so far (counters restart at each).", metrics.TypeGauge, []string{"version", "upgrades"}, func(emit func(float64, ...string)) {
		emit(1, agentVersion(), strconv.Itoa(d.up.state.Upgrades)) // set before the endpoint serves, never after
	})
	r.AddRuntime()
	return m
}

// zeroSeries makes the usual series exist from the start at 0, so that
// increase() sees the first failure (a series born at 1 has no increase).
func (m *agentMetrics) zeroSeries() {
	for _, op := range []string{control.OpDeploy, control.OpRollback, control.OpReload} {
		for _, code := range []string{control.CodeOK, control.CodeFailed} {
			m.deploys.With(op, code)
		}
	}
	for _, stage := range []control.Stage{control.StagePreActivate, control.StagePostDeploy, control.StagePostRollback, control.StageOnFailure} {
		m.hookFails.With(string(stage))
	}
}

// scrapeSnapshot is what the scrape-time families read: taken once per
// scrape, guarded by the registry's scrape lock.
type scrapeSnapshot struct {
	st     cluster.Status
	cur    string
	curErr error
	lost   int
}

func (s *scrapeSnapshot) read(d *daemon) {
	s.st = d.master.Status()
	s.cur, s.curErr = d.store.Current()
	d.mu.Lock()
	s.lost = d.lost.count
	d.mu.Unlock()
}

// registerWorkerFamilies adds the generation, release and worker families.
func registerWorkerFamilies(r *metrics.Registry, snap *scrapeSnapshot) {
	states := [...]string{cluster.WorkerStarting, cluster.WorkerReady, cluster.WorkerBackoff, cluster.WorkerStopping, cluster.WorkerExited}
	r.Func("handoff_workers", "Worker slots of the live generations, by state.", metrics.TypeGauge, []string{"state"}, func(emit func(float64, ...string)) {
		var n [len(states)]int
		for _, g := range snap.st.Generations {
			for _, w := range g.Workers {
				for i, s := range states {
					if w.State == s {
						n[i]++
					}
				}
			}
		}
		for i, s := range states {
			emit(float64(n[i]), s)
		}
	})
	r.Func("handoff_generation", "Id of the serving generation; 0 when none serves.", metrics.TypeGauge, nil, func(emit func(float64, ...string)) {
		id := 0
		for _, g := range snap.st.Generations {
			if g.State == cluster.GenServing {
				id = g.ID
			}
		}
		emit(float64(id))
	})
	r.Func("handoff_release_info", "1 for the release current names; no series when there is none.", metrics.TypeGauge, []string{"release"}, func(emit func(float64, ...string)) {
		if snap.curErr == nil {
			emit(1, snap.cur)
		}
	})
	r.Func("handoff_worker_restarts_total", "Workers restarted after they died (restart policy with backoff).", metrics.TypeCounter, nil, func(emit func(float64, ...string)) {
		emit(float64(snap.st.Restarts))
	})
	r.Func("handoff_worker_exits_total", "Worker processes ended, by reason: stopped (by the agent), exited (on its own), killed (by a signal the agent did not send), start_failed.", metrics.TypeCounter, []string{"reason"}, func(emit func(float64, ...string)) {
		e := snap.st.Exits
		emit(float64(e.Stopped), "stopped")
		emit(float64(e.Exited), "exited")
		emit(float64(e.Killed), "killed")
		emit(float64(e.StartFailed), "start_failed")
	})
}

// registerRescueFamilies adds connection rescue's families.
func registerRescueFamilies(r *metrics.Registry, snap *scrapeSnapshot) {
	r.Func("handoff_rescue_held_connections_total", "Client connections of stopping workers that connection rescue held.", metrics.TypeCounter, nil, func(emit func(float64, ...string)) {
		emit(float64(snap.st.Rescued.Held))
	})
	r.Func("handoff_rescued_connections_total", "Held connections by outcome: forwarded (their requests went to the serving generation), idle, gone, abandoned, refused (not HTTP/1.x), failed (502 sent).", metrics.TypeCounter, []string{"outcome"}, func(emit func(float64, ...string)) {
		s := snap.st.Rescued
		emit(float64(s.Forwarded), "forwarded")
		emit(float64(s.Idle), "idle")
		emit(float64(s.Gone), "gone")
		emit(float64(s.Abandoned), "abandoned")
		emit(float64(s.Refused), "refused")
		emit(float64(s.Failed), "failed")
	})
	r.Func("handoff_rescued_requests_total", "Requests connection rescue forwarded, by kind: waiting (unread by the worker) or replayed (read and dropped unanswered by it).", metrics.TypeCounter, []string{"kind"}, func(emit func(float64, ...string)) {
		s := snap.st.Rescued
		emit(float64(s.Requests-s.Replayed), "waiting")
		emit(float64(s.Replayed), "replayed")
	})
}

// operation counts an ended operation.
func (m *agentMetrics) operation(o *op, res control.Message) {
	if m == nil {
		return
	}
	name := o.req.Op
	if o.first {
		name = opStart
	}
	m.deploys.With(name, res.Code).Inc()
	m.duration.With(name).Observe(res.Elapsed)
}

// refused counts an operation that never ran (busy, superseded).
func (m *agentMetrics) refused(op, code string) {
	if m != nil {
		m.deploys.With(op, code).Inc()
	}
}

// ready records how long a successful reload took to reach its quorum.
func (m *agentMetrics) ready(after time.Duration) {
	if m != nil {
		m.readiness.Observe(after.Seconds())
	}
}

// fetched counts artifact bytes.
func (m *agentMetrics) fetched(n int64) {
	if m != nil {
		m.fetchBytes.Add(float64(n))
	}
}

// hookFailed counts a failed hook stage.
func (m *agentMetrics) hookFailed(stage control.Stage) {
	if m != nil {
		m.hookFails.With(string(stage)).Inc()
	}
}

// listenMetrics binds the endpoint's socket, or adopts the one handed over
// by an upgrade when the address is unchanged. It returns nil when off.
func listenMetrics(addr string, inherited *os.File) (net.Listener, error) {
	if inherited != nil {
		defer inherited.Close()
		if l, err := net.FileListener(inherited); err == nil {
			if addr != "" && sameAddr(listenerAddr(l), addr) {
				return l, nil
			}
			// The config moved the endpoint or turned it off.
			if u, ok := l.(*net.UnixListener); ok {
				os.Remove(u.Addr().String())
			}
			l.Close()
		}
	}
	if addr == "" {
		return nil, nil
	}
	path, unix := strings.CutPrefix(addr, "unix:")
	if !unix {
		return net.Listen("tcp", addr)
	}
	l, err := net.Listen("unix", path)
	if errors.Is(err, syscall.EADDRINUSE) {
		// A socket file left by a killed agent: replace it when nobody
		// answers on it.
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			c.Close()
		} else if fi, serr := os.Lstat(path); serr == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path)
			l, err = net.Listen("unix", path)
		}
	}
	return l, err
}

// sameAddr reports whether the socket bound at got is the one the config's
// want asks for (port 0: any port on the same host).
func sameAddr(got, want string) bool {
	if got == want {
		return true
	}
	wh, wp, err := net.SplitHostPort(want)
	gh, _, gerr := net.SplitHostPort(got)
	return err == nil && gerr == nil && wp == "0" && wh == gh
}

// listenerAddr is l's address as the config writes it.
func listenerAddr(l net.Listener) string {
	if u, ok := l.(*net.UnixListener); ok {
		return "unix:" + u.Addr().String()
	}
	return l.Addr().String()
}

// serve starts the HTTP server on ln in a goroutine that close stops and
// waits for.
func (m *agentMetrics) serve(ln net.Listener) {
	if u, ok := ln.(*net.UnixListener); ok {
		u.SetUnlinkOnClose(false) // an upgrade hands it over; close removes the path itself
	}
	m.ln = ln
	m.srv = &http.Server{Handler: m.reg, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}
	m.done = make(chan error, 1)
	go func() { m.done <- m.srv.Serve(ln) }()
}

// addr is where the endpoint listens ("" when off), for status.
func (m *agentMetrics) addr() string {
	if m == nil {
		return ""
	}
	return listenerAddr(m.ln)
}

// file returns a copy of the endpoint's socket for an upgrade, or nil.
func (m *agentMetrics) file() *os.File {
	if m == nil {
		return nil
	}
	f, err := m.ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		return nil
	}
	return f
}

// close stops the server within a few seconds and waits for it.
func (m *agentMetrics) close() {
	if m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		m.srv.Close()
	}
	<-m.done
	if u, ok := m.ln.(*net.UnixListener); ok {
		os.Remove(u.Addr().String())
	}
}

// serveMetrics opens the endpoint (adopting the socket an upgrade handed
// over) and serves it; it returns exitOK, or the exit code of a refused
// start: an address that cannot be bound is a config error at its line. An
// agent started by an upgrade goes on without the endpoint instead: the
// workers it adopted must not die for it.
func (d *daemon) serveMetrics() int {
	cfg := d.cfg.Metrics
	ln, err := listenMetrics(cfg.Address, d.up.metricsFile)
	d.up.metricsFile = nil
	switch {
	case err == nil && ln == nil: // off
		return exitOK
	case err == nil:
		d.metrics = newAgentMetrics(d)
		d.metrics.serve(ln)
		d.log.Info("Metrics endpoint ready", "addr", d.metrics.addr())
		return exitOK
	case d.up.resumed:
		d.log.Error("Cannot serve the metrics endpoint: going on without it", "addr", cfg.Address, "err", err)
		return exitOK
	case errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EACCES):
		fmt.Fprintf(os.Stderr, "%s:%d:%d: metrics.address: %v\n", d.cfg.Path, cfg.Pos.Line, cfg.Pos.Col, err)
		return exitUsage
	}
	d.log.Error("Cannot serve the metrics endpoint", "addr", cfg.Address, "err", err)
	return exitFailed
}
