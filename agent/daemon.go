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
	opsWG    sync.WaitGroup
}

// op is one deploy, rollback or reload, queued or running.
type op struct {
	req   Request // ID filled in for deploys
	since time.Time
	log   *opLog
	first bool // the start-up generation: not recorded in history
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
		Allow: cfg.Fetch.Allow, RequireChecksum: cfg.Fetch.RequireChecksum, MaxBytes: cfg.Fetch.MaxBytes,
		MaxFiles: cfg.Fetch.MaxFiles, Timeout: cfg.Fetch.Timeout, Logger: log,
	})
	if err != nil {
		log.Error("Cannot open the release root", "err", err)
		return exitFailed
	}
	d.store = store

	specs := make([]cluster.ListenSpec, len(cfg.Listen))
	for i, l := range cfg.Listen {
		specs[i] = cluster.ListenSpec{Name: l.Name, Address: l.Address}
	}
	socks, err := cluster.OpenSockets(specs, log)
	if err != nil {
		log.Error("Cannot open the listening sockets", "err", err)
		return exitFailed
	}
	defer socks.Close()
	d.socks = socks
	log.Info("Listening", "addrs", socks.Addrs())

	master, err := cluster.NewMaster(cluster.Config{
		Command: cfg.App.Command, Workers: cfg.App.Workers, Env: cfg.App.EnvList(), StopSignal: cfg.App.StopSignal,
		DrainTimeout: cfg.App.DrainTimeout,
		Readiness: cluster.Readiness{Mode: cfg.Readiness.Mode, Timeout: cfg.Readiness.Timeout, Quorum: cfg.Readiness.Quorum,
			Delay: cfg.Readiness.Delay, Probation: cfg.Readiness.Probation},
		BackoffMin: cfg.Restart.BackoffMin, BackoffMax: cfg.Restart.BackoffMax, Logger: log,
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
	ln, err := listenControl(cfg.Control.Socket, gid, log)
	if err != nil {
		log.Error("Cannot serve the control socket", "err", err)
		master.Shutdown(context.Background())
		return exitFailed
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := newControlServer(ln, cfg.Control.AllowUIDs, cfg.Control.AllowGIDs, log, func(req Request) *opLog { return d.submit(ctx, req) })
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve() }()
	log.Info("Control socket ready", "path", cfg.Control.Socket)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	// The first generation, from current; or wait for the first deploy.
	cur, cerr := store.Current()
	switch {
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
		o.log.finish(result(o, codeBusy, "%s is running since %s", d.running.describe(), d.running.since.Format("15:04:05")))
	default:
		if d.waiting != nil {
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
		d.execute(ctx, o)
		d.mu.Lock()
		defer d.mu.Unlock()
		d.running = nil
		if next := d.waiting; next != nil {
			d.waiting = nil
			if d.stopping || ctx.Err() != nil {
				next.log.finish(result(next, codeInternal, "the agent is shutting down"))
				return
			}
			d.startLocked(ctx, next)
		}
	}()
}

func (d *daemon) execute(ctx context.Context, o *op) {
	start := time.Now()
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
	res.Elapsed = time.Since(start).Seconds()
	o.log.finish(res)
	if res.Code == codeOK {
		log.Info("Operation done", "release", res.ID, "elapsed", time.Since(start))
	} else {
		log.Warn("Operation failed", "code", res.Code, "err", res.Error, "restored", res.Restored)
	}
	d.markReady(d.statusLine())
}

// statusLine is the one-line STATUS= for systemd.
func (d *daemon) statusLine() string {
	cur, err := d.store.Current()
	if err != nil {
		return "no current release: waiting for a deploy"
	}
	st := d.master.Status()
	n := 0
	for _, g := range st.Generations {
		if g.ReleaseID == cur {
			for _, w := range g.Workers {
				if w.State == "ready" {
					n++
				}
			}
		}
	}
	return fmt.Sprintf("serving %s with %d/%d workers ready", cur, n, d.cfg.App.Workers)
}

func (d *daemon) emit(o *op, stage, kind, format string, a ...any) {
	o.log.emit(Message{Stage: stage, Kind: kind, Message: fmt.Sprintf(format, a...)})
}

// hookEnv is the DEPLOY_* environment of a hook.
func (d *daemon) hookEnv(o *op, id, prev, errText string) []string {
	env := []string{
		"DEPLOY_OP=" + o.req.Op,
		"DEPLOY_RELEASE_ID=" + id,
		"DEPLOY_RELEASE_DIR=" + d.store.Dir(id),
		"DEPLOY_ROOT=" + d.store.Root(),
		"DEPLOY_PREVIOUS_ID=" + prev,
	}
	if o.req.URL != "" {
		env = append(env, "DEPLOY_URL="+release.RedactURL(o.req.URL))
	}
	if errText != "" {
		env = append(env, "DEPLOY_ERROR="+errText)
	}
	return env
}

func (d *daemon) runHooks(ctx context.Context, o *op, stage string, cmds [][]string, id, prev, errText string) error {
	if len(cmds) == 0 {
		if found, err := hooks.Find(d.store.Dir(id), stage); err == nil && len(found) == 0 {
			return nil // nothing to run: say nothing
		}
	}
	d.emit(o, stage, "start", "running hooks in releases/%s", id)
	err := d.hooks.Run(ctx, hooks.Run{
		Stage: stage, Dir: d.store.Dir(id), Commands: cmds, Env: d.hookEnv(o, id, prev, errText),
		Output: func(line string) { o.log.emit(Message{Stage: stage, Kind: "output", Message: line}) },
	})
	if err == nil {
		d.emit(o, stage, "done", "hooks done")
	}
	return err
}

// reloadTo runs Master.Reload on release id, streaming worker events.
func (d *daemon) reloadTo(ctx context.Context, o *op, id string) (*cluster.ReloadResult, error) {
	var mu sync.Mutex
	ready := map[int]int{} // generation -> workers ready
	d.emit(o, "reload", "start", "starting %d workers in releases/%s (readiness %s, timeout %s)", d.cfg.App.Workers, id, d.cfg.Readiness.Mode, d.cfg.Readiness.Timeout)
	res, err := d.master.Reload(ctx, cluster.GenerationSpec{Dir: d.store.Dir(id), ReleaseID: id, Root: d.store.Root()}, func(ev cluster.ReloadEvent) {
		mu.Lock()
		defer mu.Unlock()
		w := ev.Worker
		m := Message{Time: ev.Time, Stage: "reload", Kind: "worker", Worker: &w, PID: ev.PID}
		switch ev.Kind {
		case "worker-started":
			m.Message = fmt.Sprintf("generation %d: worker %d started (pid %d)", ev.Generation, ev.Worker, ev.PID)
		case "worker-ready":
			ready[ev.Generation]++
			m.Message = fmt.Sprintf("generation %d: %d/%d workers ready", ev.Generation, ready[ev.Generation], d.cfg.App.Workers)
		case "worker-exited":
			m.Message = fmt.Sprintf("generation %d: worker %d (pid %d) exited: %s", ev.Generation, ev.Worker, ev.PID, ev.Message)
		default:
			m.Kind = "step"
			m.Worker = nil
			m.Message = fmt.Sprintf("generation %d: %s", ev.Generation, ev.Kind)
			if ev.Message != "" {
				m.Message += ": " + ev.Message
			}
		}
		o.log.emit(m)
	})
	if err == nil {
		d.emit(o, "reload", "done", "generation %d serving releases/%s: ready after %s, old generation retired after %s",
			res.Generation, id, fmtDur(res.ReadyAfter), fmtDur(res.RetiredAfter))
	}
	return res, err
}

func failuresOf(err error) []WorkerVerdict {
	var re *cluster.ReloadError
	if !errors.As(err, &re) {
		return nil
	}
	out := make([]WorkerVerdict, 0, len(re.Workers))
	for _, w := range re.Workers {
		out = append(out, WorkerVerdict{Worker: w.Worker, PID: w.PID, ExitStatus: w.ExitStatus, Verdict: w.Verdict, LastLines: w.LastLines})
	}
	return out
}

func (d *daemon) record(o *op, ev release.Event) {
	if o.first {
		return
	}
	ev.Time = o.since
	ev.Duration = time.Since(o.since)
	if err := d.store.Record(ev); err != nil {
		d.log.Error("Cannot record history", "err", err)
		d.emit(o, "record", "warn", "history not recorded: %v", err)
	}
}

// protected lists the releases of live generations, which Prune keeps.
func (d *daemon) protected() []string {
	var out []string
	for _, g := range d.master.Status().Generations {
		out = append(out, g.ReleaseID)
	}
	return out
}

func (d *daemon) prune(o *op) {
	removed, err := d.store.Prune(d.cfg.KeepReleases, d.protected()...)
	if err != nil {
		d.emit(o, "prune", "warn", "%v", err)
		return
	}
	if len(removed) > 0 {
		d.emit(o, "prune", "done", "removed %s (keeping %d)", strings.Join(removed, ", "), d.cfg.KeepReleases)
	}
}

func currentOrEmpty(s *release.Store) string {
	cur, err := s.Current()
	if err != nil {
		return ""
	}
	return cur
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// restore points current back at prev after a failed switch. The old
// generation was never stopped, so no reload is needed.
func (d *daemon) restore(o *op, prev string) string {
	if prev == "" {
		d.emit(o, "restore", "warn", "there was no previous release to restore")
		return ""
	}
	if err := d.store.Activate(prev); err != nil {
		d.emit(o, "restore", "warn", "cannot point current back at %s: %v", prev, err)
		d.log.Error("Cannot restore current", "release", prev, "err", err)
		return ""
	}
	d.emit(o, "restore", "done", "current -> releases/%s again; its workers kept serving", prev)
	return prev
}

func (d *daemon) onFailure(ctx context.Context, o *op, id, prev, errText string) {
	// on-failure runs even when the operation was canceled.
	hctx := context.WithoutCancel(ctx)
	if err := d.runHooks(hctx, o, "on-failure", d.cfg.Hooks.OnFailure, id, prev, errText); err != nil {
		d.emit(o, "on-failure", "warn", "%v", err)
	}
}

func (d *daemon) deploy(ctx context.Context, o *op) Message {
	id := o.req.ID
	url := release.RedactURL(o.req.URL)
	prev := currentOrEmpty(d.store)
	ev := release.Event{Op: opDeploy, ID: id, From: prev, URL: url}
	fail := func(code, result string, err error, restored string, failures []WorkerVerdict) Message {
		ev.Result, ev.Error = result, err.Error()
		d.record(o, ev)
		return Message{Code: code, ID: id, From: prev, Error: err.Error(), Restored: restored, Failures: failures}
	}

	existing, err := d.store.Releases()
	if err != nil {
		return fail(codeInternal, "failed", err, "", nil)
	}
	existed := contains(existing, id)

	d.emit(o, "fetch", "start", "%s -> releases/%s", url, id)
	var last time.Time
	fetched, err := d.store.Fetch(ctx, release.FetchRequest{URL: o.req.URL, ID: id, Force: existed, Progress: func(done, total int64) {
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || (total > 0 && done == total) {
			last = now
			o.log.emit(Message{Stage: "fetch", Kind: "progress", Done: done, Total: total})
		}
	}})
	if err != nil {
		code := codeFailed
		switch {
		case errors.Is(err, release.ErrInvalidID):
			code = codeUsage
		case errors.Is(err, release.ErrExists):
			code = codeUsage
		}
		return fail(code, "refused", err, "", nil)
	}
	id = fetched
	if existed && id == prev {
		d.emit(o, "fetch", "done", "releases/%s is already current with identical content: nothing to do", id)
		return Message{Code: codeOK, ID: id, From: prev}
	}
	d.emit(o, "fetch", "done", "releases/%s ready (%s)", id, time.Since(o.since).Round(time.Millisecond))

	if !existed {
		if len(d.cfg.Linked) > 0 {
			if err := d.store.Link(id, d.cfg.Linked); err != nil {
				d.removeRelease(o, id)
				return fail(codeFailed, "refused", err, "", nil)
			}
			d.emit(o, "link", "done", "linked %s from shared/", strings.Join(d.cfg.Linked, ", "))
		}
		if err := d.runHooks(ctx, o, "pre-activate", d.cfg.Hooks.PreActivate, id, prev, ""); err != nil {
			d.onFailure(ctx, o, id, prev, err.Error()) // in the release dir, before it goes
			d.removeRelease(o, id)
			return fail(codeFailed, "refused", err, "", nil)
		}
	}

	if err := d.store.Activate(id); err != nil {
		return fail(codeFailed, "failed", err, "", nil)
	}
	d.emit(o, "activate", "done", "current -> releases/%s", id)

	if _, err := d.reloadTo(ctx, o, id); err != nil {
		restored := d.restore(o, prev)
		d.onFailure(ctx, o, id, prev, err.Error())
		return fail(codeFailed, "failed", fmt.Errorf("new workers did not take over: %w", err), restored, failuresOf(err))
	}

	if err := d.runHooks(ctx, o, "post-deploy", d.cfg.Hooks.PostDeploy, id, prev, ""); err != nil {
		if d.cfg.Hooks.PostDeployFailure == "warn" || prev == "" {
			d.emit(o, "post-deploy", "warn", "%v (post_deploy_failure = %q: keeping %s)", err, d.cfg.Hooks.PostDeployFailure, id)
		} else {
			d.emit(o, "rollback", "start", "post-deploy failed: rolling back to %s", prev)
			restored := ""
			if aerr := d.store.Activate(prev); aerr != nil {
				d.emit(o, "rollback", "warn", "cannot point current back at %s: %v", prev, aerr)
			} else if _, rerr := d.reloadTo(context.WithoutCancel(ctx), o, prev); rerr != nil {
				d.emit(o, "rollback", "warn", "reload of %s failed: %v", prev, rerr)
				// current names prev, but the new workers still serve.
				if aerr := d.store.Activate(id); aerr == nil {
					d.emit(o, "rollback", "warn", "current -> releases/%s again, whose workers serve", id)
				}
			} else {
				restored = prev
			}
			d.onFailure(ctx, o, id, prev, err.Error())
			res := fail(codeFailed, "rolled-back", err, restored, nil)
			if restored == "" {
				res.Restored = ""
			}
			return res
		}
	}

	ev.Result = "ok"
	d.record(o, ev)
	d.prune(o)
	return Message{Code: codeOK, ID: id, From: prev}
}

func (d *daemon) removeRelease(o *op, id string) {
	if err := d.store.Remove(id); err != nil {
		d.emit(o, "cleanup", "warn", "cannot remove releases/%s: %v", id, err)
		return
	}
	d.emit(o, "cleanup", "done", "removed releases/%s; nothing changed", id)
}

func (d *daemon) rollback(ctx context.Context, o *op) Message {
	prev := currentOrEmpty(d.store)
	target := o.req.To
	if target == "" {
		t, err := d.store.RollbackTarget()
		if err != nil {
			code := codeInternal
			if errors.Is(err, release.ErrNoRollbackTarget) {
				code = codeNotFound
			}
			return Message{Code: code, From: prev, Error: err.Error()}
		}
		target = t
	}
	o.req.ID = target
	ev := release.Event{Op: opRollback, ID: target, From: prev}
	rels, err := d.store.Releases()
	if err != nil {
		return Message{Code: codeInternal, ID: target, From: prev, Error: err.Error()}
	}
	if !contains(rels, target) {
		return Message{Code: codeNotFound, ID: target, From: prev, Error: fmt.Sprintf("release %s is not on disk (have: %s)", target, strings.Join(rels, ", "))}
	}
	if err := d.store.Activate(target); err != nil {
		ev.Result, ev.Error = "failed", err.Error()
		d.record(o, ev)
		return Message{Code: codeFailed, ID: target, From: prev, Error: err.Error()}
	}
	d.emit(o, "activate", "done", "current -> releases/%s (was %s)", target, orDash(prev))
	if _, err := d.reloadTo(ctx, o, target); err != nil {
		restored := d.restore(o, prev)
		d.onFailure(ctx, o, target, prev, err.Error())
		ev.Result, ev.Error = "failed", err.Error()
		d.record(o, ev)
		return Message{Code: codeFailed, ID: target, From: prev, Error: "workers of " + target + " did not take over: " + err.Error(), Restored: restored, Failures: failuresOf(err)}
	}
	if err := d.runHooks(ctx, o, "post-rollback", d.cfg.Hooks.PostRollback, target, prev, ""); err != nil {
		d.emit(o, "post-rollback", "warn", "%v", err)
	}
	ev.Result = "ok"
	d.record(o, ev)
	return Message{Code: codeOK, ID: target, From: prev}
}

func (d *daemon) reload(ctx context.Context, o *op) Message {
	cur, err := d.store.Current()
	if err != nil {
		code := codeInternal
		if errors.Is(err, release.ErrNoCurrent) {
			code = codeNotFound
		}
		return Message{Code: code, Error: err.Error()}
	}
	o.req.ID = cur
	ev := release.Event{Op: opReload, ID: cur, From: cur}
	if _, err := d.reloadTo(ctx, o, cur); err != nil {
		ev.Result, ev.Error = "failed", err.Error()
		d.record(o, ev)
		// The previous generation (if any) keeps serving.
		return Message{Code: codeFailed, ID: cur, Error: "new workers did not take over: " + err.Error(), Failures: failuresOf(err)}
	}
	ev.Result = "ok"
	d.record(o, ev)
	return Message{Code: codeOK, ID: cur, From: cur}
}

func historyEntries(h []release.Event) []HistoryEntry {
	out := make([]HistoryEntry, 0, len(h))
	for _, e := range h {
		out = append(out, HistoryEntry{Time: e.Time, Op: e.Op, ID: e.ID, From: e.From, URL: e.URL, Result: e.Result, Error: e.Error, DurationNS: int64(e.Duration)})
	}
	return out
}

const lastDeploys = 10

func (d *daemon) status() *StatusDoc {
	st := &StatusDoc{Root: d.store.Root(), Socket: d.cfg.Control.Socket, PID: os.Getpid(), Version: agentVersion(),
		Uptime: time.Since(d.start).Seconds(), Listen: d.socks.Addrs(), Generations: []GenerationDoc{}, LastDeploys: []HistoryEntry{}}
	cur, err := d.store.Current()
	if err == nil {
		st.Current = cur
	} else if !errors.Is(err, release.ErrNoCurrent) {
		st.CurrentError = err.Error()
	}
	d.mu.Lock()
	st.Running = d.running.running()
	st.Waiting = d.waiting.running()
	d.mu.Unlock()
	for _, g := range d.master.Status().Generations {
		gd := GenerationDoc{ID: g.ID, ReleaseID: g.ReleaseID, Dir: g.Dir, State: g.State, Workers: []WorkerDoc{}}
		for _, w := range g.Workers {
			gd.Workers = append(gd.Workers, WorkerDoc{ID: w.ID, PID: w.PID, State: w.State, Restarts: w.Restarts, Uptime: w.Uptime.Seconds(), LastExit: w.LastExit})
		}
		st.Generations = append(st.Generations, gd)
	}
	if h, err := d.store.History(); err == nil {
		if len(h) > lastDeploys {
			h = h[len(h)-lastDeploys:]
		}
		st.LastDeploys = historyEntries(h)
	} else {
		st.CurrentError = strings.TrimSpace(st.CurrentError + " history: " + err.Error())
	}
	return st
}
