package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/hooks"
	"github.com/handoff/handoff/release"
)

func setupRun(fs *flag.FlagSet) func([]string) int {
	cfgPath := fs.String("c", "", "config `file` (default: $AGENT_CONFIG, ./deploy.toml, /etc/agent/deploy.toml)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	format := fs.String("log-format", "text", "log `format`: text or json (to stderr)")
	return func(args []string) int {
		if len(args) != 0 {
			return usageErr("run takes no arguments")
		}
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*level)); err != nil {
			return usageErr("-log-level %q: want debug, info, warn or error", *level)
		}
		hopts := &slog.HandlerOptions{Level: lv}
		var h slog.Handler
		switch *format {
		case "text":
			h = slog.NewTextHandler(os.Stderr, hopts)
		case "json":
			h = slog.NewJSONHandler(os.Stderr, hopts)
		default:
			return usageErr("-log-format %q: want text or json", *format)
		}
		cfg, code := loadConfigFlag(*cfgPath)
		if cfg == nil {
			return code
		}
		return runDaemon(cfg, slog.New(h))
	}
}

// daemon composes the release store, the cluster master, the hook runner
// and the control socket. One operation (deploy, rollback, reload) runs at a
// time; at most one more waits, and a newer waiter supersedes it.
type daemon struct {
	cfg    *Config
	log    *slog.Logger
	store  *release.Store
	socks  *cluster.Sockets
	master *cluster.Master
	hooks  *hooks.Runner
	start  time.Time

	mu       sync.Mutex
	running  *op
	waiting  *op
	stopping bool
	ctx      context.Context // of the operations; nil until the control socket serves
	lost     listenLost      // lost listening sockets (listenwatch.go)
	opsWG    sync.WaitGroup
	up       upgrader      // SIGUSR2: upgrade.go
	metrics  *agentMetrics // metrics.go; nil when off, set before anything runs
}

// op is one deploy, rollback or reload, queued or running.
type op struct {
	req     Request   // ID filled in for deploys
	since   time.Time // submitted
	started time.Time // set by execute
	log     *opLog
	first   bool             // the start-up generation: not recorded in history
	recover bool             // a reload onto a replaced listening socket
	lost    []*ListenLostDoc // listening sockets lost during it; guarded by daemon.mu
}

func (o *op) describe() string {
	s := o.req.Op
	if o.req.ID != "" {
		s += " " + o.req.ID
	} else if o.req.To != "" {
		s += " to " + o.req.To
	}
	if o.req.URL != "" {
		s += " (" + release.RedactURL(o.req.URL) + ")"
	}
	return s
}

func (o *op) running() *RunningOp {
	if o == nil {
		return nil
	}
	id := o.req.ID
	if id == "" {
		id = o.req.To
	}
	return &RunningOp{Op: o.req.Op, ID: id, URL: release.RedactURL(o.req.URL), Since: o.since}
}

func notify(log *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// runDaemon is `agent run`; it returns the exit code.
func runDaemon(cfg *Config, log *slog.Logger) int {
	d := &daemon{cfg: cfg, log: log, start: time.Now(), hooks: &hooks.Runner{Timeout: cfg.Hooks.Timeout, Logger: log}}
	log.Info("Starting", "version", agentVersion(), "config", cfg.Path, "root", cfg.Root, "pid", os.Getpid())

	store, err := release.Open(cfg.Root, release.Options{
		Allow: cfg.Fetch.Allow, AllowHosts: cfg.Fetch.AllowHosts, RequireChecksum: cfg.Fetch.RequireChecksum, MaxBytes: cfg.Fetch.MaxBytes,
		MaxFiles: cfg.Fetch.MaxFiles, Timeout: cfg.Fetch.Timeout, Logger: log,
	})
	if err != nil {
		log.Error("Cannot open the release root", "err", err)
		return exitFailed
	}
	d.store = store

	specs := make([]cluster.ListenSpec, len(cfg.Listen))
	for i, l := range cfg.Listen {
		specs[i] = cluster.ListenSpec{Name: l.Name, Address: l.Address, KeepNagle: !l.NoDelay, NoRescue: !l.Rescue}
	}
	socks, err := d.openSockets(specs)
	if err != nil {
		// An address in use or not bindable is a config error: name its line.
		var se *cluster.SocketError
		if errors.As(err, &se) && (errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EACCES)) {
			for _, l := range cfg.Listen {
				if l.Name == se.Name && l.Address != "" {
					fmt.Fprintf(os.Stderr, "%s:%d:%d: listen.address: %v\n", cfg.Path, l.Pos.Line, l.Pos.Col, err)
					return exitUsage
				}
			}
		}
		// Nothing to listen on (no [[listen]] and no socket from systemd) or a
		// socket named in the config that systemd did not pass: the config
		// does not fit this start, which is the operator's to fix.
		if errors.Is(err, cluster.ErrNoSockets) || errors.Is(err, cluster.ErrInvalidSpec) {
			fmt.Fprintf(os.Stderr, "%s: %v\n", cfg.Path, err)
			return exitUsage
		}
		log.Error("Cannot open the listening sockets", "err", err)
		return exitFailed
	}
	defer socks.Close()
	d.socks = socks
	log.Info("Listening", "addrs", socks.Addrs())

	env := cfg.App.EnvList()
	if cfg.App.Adapter == adapterNode {
		path, extra, err := setupNodeAdapter(cfg.App, cfg.Root, socks.Names(), socks.Addrs(), socks.Inodes(), !d.up.resumed)
		if err != nil {
			log.Error("Cannot set up the Node adapter", "err", err)
			return exitFailed
		}
		env = append(env, extra...)
		log.Info("Node adapter", "preload", path)
	}
	master, err := d.newMaster(cluster.Config{
		Command: cfg.App.Command, Workers: cfg.App.Workers, Env: env, StopSignal: cfg.App.StopSignal,
		DrainTimeout: cfg.App.DrainTimeout, RescueLinger: cfg.App.RescueLinger,
		Readiness: cluster.Readiness{Mode: cfg.Readiness.Mode, Timeout: cfg.Readiness.Timeout, Quorum: cfg.Readiness.Quorum,
			Delay: cfg.Readiness.Delay, Probation: cfg.Readiness.Probation,
			HTTP: cluster.HTTPCheck{Path: cfg.Readiness.HTTPPath, Host: cfg.Readiness.HTTPHost,
				Status: cfg.Readiness.HTTPStatus, Timeout: cfg.Readiness.HTTPTimeout}},
		BackoffMin: cfg.Restart.BackoffMin, BackoffMax: cfg.Restart.BackoffMax, Logger: log,
		ListenCheck: listenCheck(cfg.App.ListenCheck), OnSocketLost: d.socketLost,
	}, socks)
	if err != nil {
		log.Error("Cannot start the worker master", "err", err)
		return exitFailed
	}
	d.master = master

	gid := -1
	if len(cfg.Control.AllowGIDs) > 0 {
		gid = cfg.Control.AllowGIDs[0]
	}
	ln, err := d.listenControl(cfg.Control.Socket, gid)
	if err != nil {
		log.Error("Cannot serve the control socket", "err", err)
		master.Shutdown(context.Background())
		return exitFailed
	}
	if code := d.serveMetrics(); code != exitOK {
		ln.Close()
		master.Shutdown(context.Background())
		return code
	}
	defer d.metrics.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	srv := newControlServer(ln, cfg.Control.AllowUIDs, cfg.Control.AllowGIDs, log, func(req Request) *opLog { return d.submit(ctx, req) })
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	log.Info("Control socket ready", "path", cfg.Control.Socket)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	replayEarlySignals(sigs)

	// The first generation, from current; or wait for the first deploy.
	cur, cerr := store.Current()
	switch {
	case d.up.resumed: // the workers handed over by the agent this process replaced serve
		d.markReady(d.statusLine())
	case cerr == nil:
		d.mu.Lock()
		d.startLocked(ctx, &op{req: Request{Op: opReload, ID: cur}, since: time.Now(), log: newOpLog(), first: true})
		d.mu.Unlock()
	case errors.Is(cerr, release.ErrNoCurrent):
		log.Info("No current release: waiting for the first deploy")
		d.markReady("waiting for the first deploy")
	default:
		log.Error("Current release is unusable: waiting for a deploy or rollback", "err", cerr)
		d.markReady("current release unusable: " + cerr.Error())
	}

	code := exitOK
loop:
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR2:
				d.upgradeOnSignal(ctx, ln)
			case syscall.SIGHUP:
				log.Info("SIGHUP: reloading from current")
				l := d.submit(ctx, Request{Op: opReload})
				if res, done := l.Result(); done && res.Code != codeOK {
					log.Warn("SIGHUP reload not started", "code", res.Code, "err", res.Error)
				}
			default:
				log.Info("Stopping", "signal", sig.String())
				break loop
			}
		case err := <-serveDone:
			log.Error("Control socket failed", "err", err)
			serveDone = nil
			code = exitFailed
			break loop
		}
	}

	notify(log, "STOPPING=1")
	d.mu.Lock()
	d.stopping = true
	if d.waiting != nil {
		d.waiting.log.finish(Message{Code: codeInternal, Op: d.waiting.req.Op, Error: "the agent is shutting down"})
		d.waiting = nil
	}
	d.mu.Unlock()
	cancel() // aborts a running operation; it restores current and reports
	d.opsWG.Wait()
	srv.Close()
	if serveDone != nil {
		<-serveDone
	}
	sctx, scancel := context.WithTimeout(context.Background(), cfg.App.DrainTimeout+5*time.Second)
	defer scancel()
	if err := master.Shutdown(sctx); err != nil {
		log.Warn("Shutdown", "err", err)
	}
	log.Info("Stopped")
	return code
}

func (d *daemon) markReady(status string) {
	notify(d.log, "READY=1\nSTATUS="+status)
}

func result(o *op, code, format string, a ...any) Message {
	return Message{Code: code, Op: o.req.Op, ID: o.req.ID, Error: fmt.Sprintf(format, a...)}
}

// submit answers a request: status and history at once, operations by
// starting or queueing them. The returned log always ends with a result.
func (d *daemon) submit(ctx context.Context, req Request) *opLog {
	switch req.Op {
	case opPing:
		return finishedLog(Message{Code: codeOK, Op: opPing})
	case opStatus:
		st := d.status()
		return finishedLog(Message{Code: codeOK, Op: opStatus, Status: st})
	case opHistory:
		h, err := d.store.History()
		if err != nil {
			return finishedLog(Message{Code: codeInternal, Op: opHistory, Error: err.Error()})
		}
		return finishedLog(Message{Code: codeOK, Op: opHistory, History: historyEntries(h)})
	case opDeploy:
		if strings.TrimSpace(req.URL) == "" {
			return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: "deploy needs a URL"})
		}
		if req.ID == "" {
			req.ID = release.NewID()
		} else if err := release.ValidateID(req.ID); err != nil {
			return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: fmt.Sprintf("--id %q: %v", req.ID, err)})
		}
		if req.To != "" {
			return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: "deploy takes no target"})
		}
	case opRollback:
		if req.To != "" {
			if err := release.ValidateID(req.To); err != nil {
				return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: fmt.Sprintf("--to %q: %v", req.To, err)})
			}
		}
		if req.URL != "" || req.ID != "" {
			return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: "rollback takes only a target (--to)"})
		}
	case opReload:
		if req.URL != "" || req.ID != "" || req.To != "" || req.Wait {
			return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: "reload takes no arguments"})
		}
	default:
		return finishedLog(Message{Code: codeUsage, Op: req.Op, Error: fmt.Sprintf("unknown op %q", req.Op)})
	}

	o := &op{req: req, since: time.Now(), log: newOpLog()}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.stopping:
		o.log.finish(result(o, codeInternal, "the agent is shutting down"))
	case d.running == nil:
		d.startLocked(ctx, o)
	case !req.Wait:
		d.metrics.refused(req.Op, codeBusy)
		o.log.finish(result(o, codeBusy, "%s is running since %s", d.running.describe(), d.running.since.Format("15:04:05")))
	default:
		if d.waiting != nil {
			d.metrics.refused(d.waiting.req.Op, codeSuperseded)
			d.waiting.log.finish(result(d.waiting, codeSuperseded, "superseded by %s, queued at %s", o.describe(), o.since.Format("15:04:05")))
			d.log.Info("Queued operation superseded", "old", d.waiting.describe(), "new", o.describe())
		}
		d.waiting = o
		o.log.emit(Message{Stage: "queued", Kind: "start", Message: fmt.Sprintf("waiting for %s (running since %s)", d.running.describe(), d.running.since.Format("15:04:05"))})
	}
	return o.log
}

// startLocked runs o in a goroutine owned by opsWG; when it ends, the
// waiting operation (if any) starts.
func (d *daemon) startLocked(ctx context.Context, o *op) {
	d.running = o
	d.opsWG.Add(1)
	go func() {
		defer d.opsWG.Done()
		res := d.execute(ctx, o)
		// The agent is free again before the client hears the result, so a
		// client may start its next operation as soon as this one returns.
		defer o.log.finish(res)
		d.mu.Lock()
		defer d.mu.Unlock()
		d.doneLocked(ctx)
	}()
}

// doneLocked frees the agent after an operation and starts the one waiting,
// if any, unless the agent is stopping.
func (d *daemon) doneLocked(ctx context.Context) {
	done := d.running
	d.running = nil
	if d.recoverAfterLocked(ctx, done) {
		return // the waiting operation starts after the recovery
	}
	next := d.waiting
	if next == nil {
		return
	}
	d.waiting = nil
	if d.stopping || ctx.Err() != nil {
		next.log.finish(result(next, codeInternal, "the agent is shutting down"))
		return
	}
	d.startLocked(ctx, next)
}

// execute runs o with the root locked and returns its result; the caller
// finishes o's log with it.
func (d *daemon) execute(ctx context.Context, o *op) Message {
	start := time.Now()
	o.started = start
	log := d.log.With("op", o.req.Op, "id", o.req.ID)
	log.Info("Operation start", "what", o.describe())
	if !o.first {
		notify(d.log, "RELOADING=1\nSTATUS="+o.describe())
	}
	var res Message
	lockID := o.req.ID
	if lockID == "" {
		lockID = o.req.To
	}
	lock, err := d.store.Lock(o.req.Op, lockID)
	if err != nil {
		code := codeInternal
		if errors.Is(err, release.ErrLocked) {
			code = codeBusy
		}
		res = result(o, code, "%v", err)
	} else {
		switch o.req.Op {
		case opDeploy:
			res = d.deploy(ctx, o)
		case opRollback:
			res = d.rollback(ctx, o)
		case opReload:
			res = d.reload(ctx, o)
		}
		if err := lock.Release(); err != nil {
			log.Warn("Releasing the root lock", "err", err)
		}
	}
	res.Op = o.req.Op
	res.Current = currentOrEmpty(d.store)
	res.ListenLost = d.lostResult(o)
	res.Elapsed = time.Since(start).Seconds()
	d.metrics.operation(o, res)
	if res.Code == codeOK {
		log.Info("Operation done", "release", res.ID, "elapsed", time.Since(start))
	} else {
		log.Warn("Operation failed", "code", res.Code, "err", res.Error, "restored", res.Restored)
	}
	d.markReady(d.statusLine())
	return res
}
