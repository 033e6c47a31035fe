package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/config"
	"github.com/handoff/handoff/control"
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
	// cfg is the config in force: replaced by the running operation
	// (configlive.go) under mu; operations read it freely, others under mu.
	cfg         *config.Config
	cfgSince    time.Time            // when cfg was read; guarded like cfg
	envFiles    []control.EnvFileDoc // as the serving generation read them; guarded by mu
	nodePreload string               // the Node adapter's preload, once written
	srv         *control.Server      // the control server, once it serves
	log         *slog.Logger
	store       *release.Store
	socks       *cluster.Sockets
	master      *cluster.Master
	hooks       *hooks.Runner
	start       time.Time

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
	req     control.Request // ID filled in for deploys
	since   time.Time       // submitted
	started time.Time       // set by execute
	log     *control.Log
	first   bool                     // the start-up generation: not recorded in history
	reread  bool                     // a reload asked for (CLI, SIGHUP): re-reads the config file first
	recover bool                     // a reload onto a replaced listening socket
	lost    []*control.ListenLostDoc // listening sockets lost during it; guarded by daemon.mu
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

func (o *op) running() *control.RunningOp {
	if o == nil {
		return nil
	}
	id := o.req.ID
	if id == "" {
		id = o.req.To
	}
	return &control.RunningOp{Op: o.req.Op, ID: id, URL: release.RedactURL(o.req.URL), Since: o.since}
}

// sdStatus is sd_notify's free-form status line, which go-systemd has no
// constant for.
const sdStatus = "STATUS="

// notify sends states to systemd (a no-op outside a Type=notify unit).
func notify(log *slog.Logger, states ...string) {
	state := strings.Join(states, "\n")
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// runDaemon is `agent run`: config → open → serve → shut down. It returns
// the exit code.
func runDaemon(cfg *config.Config, log *slog.Logger) int {
	d := &daemon{cfg: cfg, cfgSince: time.Now(), log: log, start: time.Now(), hooks: &hooks.Runner{Timeout: cfg.Hooks.Timeout, Logger: log}}
	log.Info("Starting", "version", agentVersion(), "config", cfg.Path, "root", cfg.Root, "pid", os.Getpid())
	if code := d.openRoot(); code != exitOK {
		return code
	}
	if code := d.openListeners(); code != exitOK {
		return code
	}
	defer d.socks.Close()
	if code := d.startMaster(); code != exitOK {
		return code
	}
	ln, err := d.listenControl(cfg.Control.Socket, controlGID(cfg.Control))
	if err != nil {
		log.Error("Cannot serve the control socket", "err", err)
		d.master.Shutdown(context.Background())
		return exitFailed
	}
	if code := d.serveMetrics(); code != exitOK {
		ln.Close()
		d.master.Shutdown(context.Background())
		return code
	}
	defer d.metrics.close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, serveDone := d.serveControl(ctx, ln)
	// The signals stay caught until the end: one arriving during the
	// shutdown must not kill the agent before its workers drained.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	replayEarlySignals(sigs)
	d.startFirst(ctx)
	code, serveEnded := d.serve(ctx, ln, sigs, serveDone)
	d.shutdown(cancel, srv, serveDone, serveEnded)
	return code
}

// openRoot opens the release root.
func (d *daemon) openRoot() int {
	opts := fetchOptions(d.cfg.Fetch)
	opts.Logger = d.log
	store, err := release.Open(d.cfg.Root, opts)
	if err != nil {
		d.log.Error("Cannot open the release root", "err", err)
		return exitFailed
	}
	d.store = store
	return exitOK
}

// openListeners opens (or adopts) the listening sockets. An address the
// agent cannot bind, or a set of sockets that does not fit this start, is
// the operator's to fix: exit 2 naming the config.
func (d *daemon) openListeners() int {
	cfg := d.cfg
	specs := make([]cluster.ListenSpec, len(cfg.Listen))
	for i, l := range cfg.Listen {
		specs[i] = cluster.ListenSpec{Name: l.Name, Address: l.Address, KeepNagle: !l.NoDelay, NoRescue: !l.Rescue}
	}
	socks, err := d.openSockets(specs)
	if err == nil {
		d.socks = socks
		d.log.Info("Listening", "addrs", socks.Addrs())
		return exitOK
	}
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
	// socket named in the config that systemd did not pass.
	if errors.Is(err, cluster.ErrNoSockets) || errors.Is(err, cluster.ErrInvalidSpec) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cfg.Path, err)
		return exitUsage
	}
	d.log.Error("Cannot open the listening sockets", "err", err)
	return exitFailed
}

// startMaster starts the worker master (or resumes the one handed over),
// with no generation yet.
func (d *daemon) startMaster() int {
	cc, err := d.clusterConfig(d.cfg, !d.up.resumed)
	if err != nil {
		d.log.Error("Cannot set up the Node adapter", "err", err)
		return exitFailed
	}
	if d.nodePreload != "" {
		d.log.Info("Node adapter", "preload", d.nodePreload)
	}
	master, err := d.newMaster(cc, d.socks)
	if err != nil {
		d.log.Error("Cannot start the worker master", "err", err)
		return exitFailed
	}
	d.master = master
	return exitOK
}

// controlGID is the control socket's group: allow_gids[0], else none (-1).
func controlGID(c config.ControlConfig) int {
	if len(c.AllowGIDs) > 0 {
		return c.AllowGIDs[0]
	}
	return -1
}

// serveControl serves the control socket in a goroutine whose end
// serveDone reports; operations run under ctx.
func (d *daemon) serveControl(ctx context.Context, ln *net.UnixListener) (*control.Server, chan error) {
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	c := d.cfg.Control
	srv := control.NewServer(ln, c.AllowUIDs, c.AllowGIDs, d.log, func(req control.Request) *control.Log { return d.submit(ctx, req) })
	d.srv = srv
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	d.log.Info("Control socket ready", "path", c.Socket)
	return srv, serveDone
}

// startFirst starts the first generation from current, or waits for the
// first deploy.
func (d *daemon) startFirst(ctx context.Context) {
	cur, err := d.store.Current()
	switch {
	case d.up.resumed: // the workers handed over by the agent this process replaced serve
		d.markReady(d.statusLine())
	case err == nil:
		d.mu.Lock()
		d.startLocked(ctx, &op{req: control.Request{Op: control.OpReload, ID: cur}, since: time.Now(), log: control.NewLog(), first: true})
		d.mu.Unlock()
	case errors.Is(err, release.ErrNoCurrent):
		d.log.Info("No current release: waiting for the first deploy")
		d.markReady("waiting for the first deploy")
	default:
		d.log.Error("Current release is unusable: waiting for a deploy or rollback", "err", err)
		d.markReady("current release unusable: " + err.Error())
	}
}

// serve handles signals until one stops the agent (exit 0) or the control
// socket fails (exit 1, serveEnded).
func (d *daemon) serve(ctx context.Context, ln *net.UnixListener, sigs <-chan os.Signal, serveDone <-chan error) (code int, serveEnded bool) {
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGUSR2:
				d.upgradeOnSignal(ctx, ln)
			case syscall.SIGHUP:
				d.log.Info("SIGHUP: re-reading the config and reloading from current")
				l := d.submit(ctx, control.Request{Op: control.OpReload})
				if res, done := l.Result(); done && res.Code != control.CodeOK {
					d.log.Warn("SIGHUP reload not started", "code", res.Code, "err", res.Error)
				}
			default:
				d.log.Info("Stopping", "signal", sig.String())
				return exitOK, false
			}
		case err := <-serveDone:
			d.log.Error("Control socket failed", "err", err)
			return exitFailed, true
		}
	}
}

// shutdown ends the queued operation, aborts the running one (it restores
// current and reports), closes the control socket and drains every worker
// within drain_timeout (+5s).
func (d *daemon) shutdown(cancel context.CancelFunc, srv *control.Server, serveDone <-chan error, serveEnded bool) {
	notify(d.log, sddaemon.SdNotifyStopping)
	d.mu.Lock()
	d.stopping = true
	if d.waiting != nil {
		d.waiting.log.Finish(control.Message{Code: control.CodeInternal, Op: d.waiting.req.Op, Error: "the agent is shutting down"})
		d.waiting = nil
	}
	d.mu.Unlock()
	cancel()
	d.opsWG.Wait()
	srv.Close()
	if !serveEnded {
		<-serveDone
	}
	sctx, scancel := context.WithTimeout(context.Background(), d.cfg.App.DrainTimeout+5*time.Second)
	defer scancel()
	if err := d.master.Shutdown(sctx); err != nil {
		d.log.Warn("Shutdown", "err", err)
	}
	d.log.Info("Stopped")
}

func (d *daemon) markReady(status string) {
	notify(d.log, sddaemon.SdNotifyReady, sdStatus+status)
}

func result(o *op, code, format string, a ...any) control.Message {
	return control.Message{Code: code, Op: o.req.Op, ID: o.req.ID, Error: fmt.Sprintf(format, a...)}
}

// submit answers a request: status and history at once, operations by
// starting or queueing them. The returned log always ends with a result.
func (d *daemon) submit(ctx context.Context, req control.Request) *control.Log {
	switch req.Op {
	case control.OpPing:
		return control.FinishedLog(control.Message{Code: control.CodeOK, Op: control.OpPing})
	case control.OpStatus:
		st := d.status()
		return control.FinishedLog(control.Message{Code: control.CodeOK, Op: control.OpStatus, Status: st})
	case control.OpHistory:
		h, err := d.store.History()
		if err != nil {
			return control.FinishedLog(control.Message{Code: control.CodeInternal, Op: control.OpHistory, Error: err.Error()})
		}
		return control.FinishedLog(control.Message{Code: control.CodeOK, Op: control.OpHistory, History: historyEntries(h)})
	case control.OpDeploy:
		if strings.TrimSpace(req.URL) == "" {
			return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: "deploy needs a URL"})
		}
		if req.ID == "" {
			req.ID = release.NewID()
		} else if err := release.ValidateID(req.ID); err != nil {
			return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: fmt.Sprintf("--id %q: %v", req.ID, err)})
		}
		if req.To != "" {
			return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: "deploy takes no target"})
		}
	case control.OpRollback:
		if req.To != "" {
			if err := release.ValidateID(req.To); err != nil {
				return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: fmt.Sprintf("--to %q: %v", req.To, err)})
			}
		}
		if req.URL != "" || req.ID != "" {
			return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: "rollback takes only a target (--to)"})
		}
	case control.OpReload:
		if req.URL != "" || req.ID != "" || req.To != "" || req.Wait {
			return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: "reload takes no arguments"})
		}
	default:
		return control.FinishedLog(control.Message{Code: control.CodeUsage, Op: req.Op, Error: fmt.Sprintf("unknown op %q", req.Op)})
	}

	o := &op{req: req, since: time.Now(), log: control.NewLog(), reread: req.Op == control.OpReload}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.stopping:
		o.log.Finish(result(o, control.CodeInternal, "the agent is shutting down"))
	case d.running == nil:
		d.startLocked(ctx, o)
	case !req.Wait:
		d.metrics.refused(req.Op, control.CodeBusy)
		o.log.Finish(result(o, control.CodeBusy, "%s is running since %s", d.running.describe(), d.running.since.Format("15:04:05")))
	default:
		if d.waiting != nil {
			d.metrics.refused(d.waiting.req.Op, control.CodeSuperseded)
			d.waiting.log.Finish(result(d.waiting, control.CodeSuperseded, "superseded by %s, queued at %s", o.describe(), o.since.Format("15:04:05")))
			d.log.Info("Queued operation superseded", "old", d.waiting.describe(), "new", o.describe())
		}
		d.waiting = o
		o.log.Emit(control.Message{Stage: control.StageQueued, Kind: control.KindStart, Message: fmt.Sprintf("waiting for %s (running since %s)", d.running.describe(), d.running.since.Format("15:04:05"))})
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
		defer o.log.Finish(res)
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
		next.log.Finish(result(next, control.CodeInternal, "the agent is shutting down"))
		return
	}
	d.startLocked(ctx, next)
}

// execute runs o with the root locked and returns its result; the caller
// finishes o's log with it.
func (d *daemon) execute(ctx context.Context, o *op) control.Message {
	start := time.Now()
	o.started = start
	log := d.log.With("op", o.req.Op, "id", o.req.ID)
	log.Info("Operation start", "what", o.describe())
	if !o.first {
		notify(d.log, sddaemon.SdNotifyReloading, sdStatus+o.describe())
	}
	var res control.Message
	lockID := o.req.ID
	if lockID == "" {
		lockID = o.req.To
	}
	lock, err := d.store.Lock(o.req.Op, lockID)
	if err != nil {
		code := control.CodeInternal
		if errors.Is(err, release.ErrLocked) {
			code = control.CodeBusy
		}
		res = result(o, code, "%v", err)
	} else {
		switch o.req.Op {
		case control.OpDeploy:
			res = d.deploy(ctx, o)
		case control.OpRollback:
			res = d.rollback(ctx, o)
		case control.OpReload:
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
	if res.Code == control.CodeOK {
		log.Info("Operation done", "release", res.ID, "elapsed", time.Since(start))
	} else {
		log.Warn("Operation failed", "code", res.Code, "err", res.Error, "restored", res.Restored)
	}
	d.markReady(d.statusLine())
	return res
}
