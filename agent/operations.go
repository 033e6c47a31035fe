package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/hooks"
	"github.com/handoff/handoff/release"
)

// The operations: deploy, rollback and reload, each run by execute with the
// root locked, streaming events into the op's log and returning its result.

// emit adds a human event to o's stream.
func (d *daemon) emit(o *op, stage control.Stage, kind control.Kind, format string, a ...any) {
	o.log.Emit(control.Message{Stage: stage, Kind: kind, Message: fmt.Sprintf(format, a...)})
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

func (d *daemon) runHooks(ctx context.Context, o *op, stage control.Stage, cmds [][]string, id, prev, errText string) error {
	if len(cmds) == 0 {
		if found, err := hooks.Find(d.store.Dir(id), string(stage)); err == nil && len(found) == 0 {
			return nil // nothing to run: say nothing
		}
	}
	d.emit(o, stage, control.KindStart, "running hooks in releases/%s", id)
	err := d.hooks.Run(ctx, hooks.Run{
		Stage: string(stage), Dir: d.store.Dir(id), Commands: cmds, Env: d.hookEnv(o, id, prev, errText),
		Output: func(line string) { o.log.Emit(control.Message{Stage: stage, Kind: control.KindOutput, Message: line}) },
	})
	if err == nil {
		d.emit(o, stage, control.KindDone, "hooks done")
	} else {
		d.metrics.hookFailed(stage)
	}
	return err
}

// reloadTo runs Master.Reload on release id, streaming worker events, and
// again while the new generation holds a listening socket the cluster
// replaced during the reload (afterReload).
func (d *daemon) reloadTo(ctx context.Context, o *op, id string) (*cluster.ReloadResult, error) {
	start := time.Now()
	res, err := d.reloadOnce(ctx, o, id)
	if err != nil {
		return nil, err
	}
	if err := d.afterReload(ctx, o, id, res, start); err != nil {
		return nil, err
	}
	return res, nil
}

// reloadOnce reads the env files and runs Master.Reload on release id,
// streaming worker events. A refused env file starts nothing.
func (d *daemon) reloadOnce(ctx context.Context, o *op, id string) (*cluster.ReloadResult, error) {
	env, envDocs, err := d.generationEnv(o, d.cfg)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	ready := map[int]int{} // generation -> workers ready
	d.emit(o, control.StageReload, control.KindStart, "starting %d workers in releases/%s (readiness %s, timeout %s)", d.cfg.App.Workers, id, d.cfg.Readiness.Mode, d.cfg.Readiness.Timeout)
	spec := cluster.GenerationSpec{Dir: d.store.Dir(id), ReleaseID: id, Root: d.store.Root(), Env: env}
	res, err := d.master.Reload(ctx, spec, func(ev cluster.ReloadEvent) {
		mu.Lock()
		defer mu.Unlock()
		o.log.Emit(d.reloadMessage(ev, ready))
	})
	if err == nil {
		d.metrics.ready(res.ReadyAfter)
		d.mu.Lock()
		d.envFiles = envDocs
		d.mu.Unlock()
		d.emit(o, control.StageReload, control.KindDone, "generation %d serving releases/%s: ready after %s, old generation retired after %s",
			res.Generation, id, fmtDur(res.ReadyAfter), fmtDur(res.RetiredAfter))
	}
	return res, err
}

// reloadMessage is the event of a cluster reload event; ready counts the
// ready workers per generation.
func (d *daemon) reloadMessage(ev cluster.ReloadEvent, ready map[int]int) control.Message {
	w := ev.Worker
	m := control.Message{Time: ev.Time, Stage: control.StageReload, Kind: control.KindWorker, Worker: &w, PID: ev.PID}
	switch ev.Kind {
	case cluster.EventWorkerStarted:
		m.Message = fmt.Sprintf("generation %d: worker %d started (pid %d)", ev.Generation, ev.Worker, ev.PID)
		return m
	case cluster.EventWorkerReady:
		ready[ev.Generation]++
		m.Message = fmt.Sprintf("generation %d: %d/%d workers ready", ev.Generation, ready[ev.Generation], d.cfg.App.Workers)
		return m
	case cluster.EventWorkerExited:
		m.Message = fmt.Sprintf("generation %d: worker %d (pid %d) exited: %s", ev.Generation, ev.Worker, ev.PID, ev.Message)
		return m
	case cluster.EventQuorum, cluster.EventProbation, cluster.EventRetiring, cluster.EventDraining,
		cluster.EventRescue, cluster.EventRetired, cluster.EventFailed:
	default:
		d.log.Warn("Unknown reload event kind: shown as a step", "kind", ev.Kind)
	}
	m.Kind, m.Worker = control.KindStep, nil
	m.Message = fmt.Sprintf("generation %d: %s", ev.Generation, ev.Kind)
	if ev.Message != "" && ev.Kind != cluster.EventFailed { // a failure's details come with the result
		m.Message += ": " + ev.Message
	}
	return m
}

// reloadErr describes a failed reload in one line; the per-worker details
// travel separately (failuresOf).
func reloadErr(err error) error {
	if envFileFailed(err) {
		return fmt.Errorf("no new generation started: env file %w", err)
	}
	var re *cluster.ReloadError
	if !errors.As(err, &re) {
		return fmt.Errorf("new workers did not take over: %w", err)
	}
	return fmt.Errorf("new workers did not take over: generation %d (release %s): %w after %s", re.Generation, re.ReleaseID, re.Cause, fmtDur(re.After))
}

func failuresOf(err error) []control.WorkerVerdict {
	var re *cluster.ReloadError
	if !errors.As(err, &re) {
		return nil
	}
	out := make([]control.WorkerVerdict, 0, len(re.Workers))
	for _, w := range re.Workers {
		out = append(out, control.WorkerVerdict{Worker: w.Worker, PID: w.PID, ExitStatus: w.ExitStatus, Verdict: w.Verdict, LastLines: w.LastLines})
	}
	return out
}

func (d *daemon) record(o *op, ev release.Event) {
	if o.first {
		return
	}
	ev.Time = o.started
	ev.Duration = time.Since(o.started)
	if err := d.store.Record(ev); err != nil {
		d.log.Error("Cannot record history", "err", err)
		d.emit(o, control.StageRecord, control.KindWarn, "history not recorded: %v", err)
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
		d.emit(o, control.StagePrune, control.KindWarn, "%v", err)
		return
	}
	if len(removed) > 0 {
		d.emit(o, control.StagePrune, control.KindDone, "removed %s (keeping %d)", strings.Join(removed, ", "), d.cfg.KeepReleases)
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

// switchTo makes release id serve in place of prev: current points at id
// and a generation starts on it. With a previous release, current switches
// first and, if the reload fails, points back at prev, whose workers never
// stopped (restored names it; "" when pointing back failed). With none,
// current is created only once id's workers serve, so a failed first
// deploy leaves no current at all. A failed reload is a *reloadFailed; any
// other error is current's.
func (d *daemon) switchTo(ctx context.Context, o *op, id, prev string) (restored string, err error) {
	if prev != "" {
		if err := d.activate(o, id, prev); err != nil {
			return "", err
		}
	}
	if _, err := d.reloadTo(ctx, o, id); err != nil {
		if prev != "" {
			restored = d.restore(o, prev)
		}
		return restored, &reloadFailed{err}
	}
	if prev == "" {
		return "", d.activate(o, id, prev)
	}
	return "", nil
}

// reloadFailed is a switch whose new workers did not take over: on-failure
// hooks are due, and the cause may carry each worker's verdict
// (failuresOf).
type reloadFailed struct{ err error }

func (e *reloadFailed) Error() string { return e.err.Error() }
func (e *reloadFailed) Unwrap() error { return e.err }

// activate points current at id.
func (d *daemon) activate(o *op, id, prev string) error {
	if err := d.store.Activate(id); err != nil {
		return err
	}
	if prev == "" {
		d.emit(o, control.StageActivate, control.KindDone, "current -> releases/%s", id)
	} else {
		d.emit(o, control.StageActivate, control.KindDone, "current -> releases/%s (was %s)", id, prev)
	}
	return nil
}

// restore points current back at prev after a failed switch. The old
// generation was never stopped, so no reload is needed.
func (d *daemon) restore(o *op, prev string) string {
	if err := d.store.Activate(prev); err != nil {
		d.emit(o, control.StageRestore, control.KindWarn, "cannot point current back at %s: %v", prev, err)
		d.log.Error("Cannot restore current", "release", prev, "err", err)
		return ""
	}
	d.emit(o, control.StageRestore, control.KindDone, "current -> releases/%s again; its workers kept serving", prev)
	return prev
}

func (d *daemon) onFailure(ctx context.Context, o *op, id, prev, errText string) {
	if ctx.Err() != nil {
		// The agent is stopping: do not hold the shutdown for up to
		// hooks.timeout.
		d.emit(o, control.StageOnFailure, control.KindWarn, "skipped: the agent is shutting down")
		return
	}
	if err := d.runHooks(ctx, o, control.StageOnFailure, d.cfg.Hooks.OnFailure, id, prev, errText); err != nil {
		d.emit(o, control.StageOnFailure, control.KindWarn, "%v", err)
	}
}

// rollback switches back to --to, or to the newest release that served
// before current, then runs the post-rollback hooks.
func (d *daemon) rollback(ctx context.Context, o *op) control.Message {
	prev := currentOrEmpty(d.store)
	target, res, ok := d.rollbackTarget(o, prev)
	if !ok {
		return res
	}
	o.req.ID = target
	ev := release.Event{Op: control.OpRollback, ID: target, From: prev}
	restored, err := d.switchTo(ctx, o, target, prev)
	if err != nil {
		ev.Result, ev.Error = release.ResultFailed, err.Error()
		res := control.Message{Code: control.CodeFailed, ID: target, From: prev, Error: err.Error()}
		if rf := (*reloadFailed)(nil); errors.As(err, &rf) {
			d.onFailure(ctx, o, target, prev, err.Error())
			res.Error, res.Restored, res.Failures = reloadErr(err).Error(), restored, failuresOf(err)
		}
		d.record(o, ev)
		return res
	}
	if err := d.runHooks(ctx, o, control.StagePostRollback, d.cfg.Hooks.PostRollback, target, prev, ""); err != nil {
		d.emit(o, control.StagePostRollback, control.KindWarn, "%v", err)
	}
	ev.Result = release.ResultOK
	d.record(o, ev)
	return control.Message{Code: control.CodeOK, ID: target, From: prev}
}

// rollbackTarget is --to, or the newest release that served before prev;
// it must be on disk. ok is false with the result when there is none.
func (d *daemon) rollbackTarget(o *op, prev string) (target string, res control.Message, ok bool) {
	target = o.req.To
	if target == "" {
		t, err := d.store.RollbackTarget()
		if err != nil {
			code := control.CodeInternal
			if errors.Is(err, release.ErrNoRollbackTarget) {
				code = control.CodeNotFound
			}
			return "", control.Message{Code: code, From: prev, Error: err.Error()}, false
		}
		target = t
	}
	rels, err := d.store.Releases()
	if err != nil {
		return "", control.Message{Code: control.CodeInternal, ID: target, From: prev, Error: err.Error()}, false
	}
	if !contains(rels, target) {
		return "", control.Message{Code: control.CodeNotFound, ID: target, From: prev, Error: fmt.Sprintf("release %s is not on disk (have: %s)", target, strings.Join(rels, ", "))}, false
	}
	return target, control.Message{}, true
}

// reload re-reads the config file (when asked by a client or SIGHUP:
// configlive.go), then starts a new generation from current; a failed one
// puts the previous config back.
func (d *daemon) reload(ctx context.Context, o *op) control.Message {
	if !o.reread {
		return d.reloadCurrent(ctx, o)
	}
	ch, restore, refused := d.rereadConfig(o)
	if refused != nil {
		return *refused
	}
	res := d.reloadCurrent(ctx, o)
	if res.Code == control.CodeNotFound && ch.Applied {
		// Nothing deployed yet: the new config is all there is to apply.
		res = control.Message{Code: control.CodeOK}
		d.emit(o, control.StageReload, control.KindDone, "no current release: no workers to start; the new config applies to the first deploy")
	} else if res.Code != control.CodeOK {
		restore()
	}
	res.Config = ch
	return res
}

// reloadCurrent starts a new generation from current.
func (d *daemon) reloadCurrent(ctx context.Context, o *op) control.Message {
	cur, err := d.store.Current()
	if err != nil {
		code := control.CodeInternal
		if errors.Is(err, release.ErrNoCurrent) {
			code = control.CodeNotFound
		}
		return control.Message{Code: code, Error: err.Error()}
	}
	o.req.ID = cur
	ev := release.Event{Op: control.OpReload, ID: cur, From: cur}
	if _, err := d.reloadTo(ctx, o, cur); err != nil {
		if o.first && ctx.Err() == nil {
			if res, ok := d.recoverInterrupted(ctx, o, cur, err); ok {
				return res
			}
		}
		ev.Result, ev.Error = release.ResultFailed, err.Error()
		d.record(o, ev)
		// The previous generation (if any) keeps serving.
		return control.Message{Code: control.CodeFailed, ID: cur, Error: reloadErr(err).Error(), Failures: failuresOf(err)}
	}
	if o.first {
		d.recordRecovered(cur)
	}
	ev.Result = release.ResultOK
	d.record(o, ev)
	return control.Message{Code: control.CodeOK, ID: cur, From: cur}
}

// recordRecovered records the deploy of cur as done when cur has never
// served before this start: the agent died after the swap, and cur's workers
// came up after the restart. Without it the history would not know that cur
// ever served, and would compute its rollback target and pruning as if it had
// not.
func (d *daemon) recordRecovered(cur string) {
	h, err := d.store.History()
	if err != nil {
		return // reported where the history is read for status
	}
	for _, ev := range h {
		if ev.ID == cur && ev.Result == release.ResultOK {
			return
		}
	}
	d.log.Warn("Completed a deploy the agent's death interrupted after the swap; its post-deploy hooks did not run", "release", cur)
	ev := release.Event{Time: time.Now(), Op: control.OpDeploy, ID: cur, Result: release.ResultOK,
		Error: "completed at the agent's restart after an interruption; post-deploy hooks did not run"}
	d.recordNow(ev)
}

// recoverInterrupted handles a first generation that failed on a release
// that never served: the agent died during its deploy, after the swap and
// before the workers were ready. It records that deploy as failed and goes
// back to the rollback target, as the deploy would have; ok is false (and
// current unchanged) when there is no proven release to go back to, or it
// does not come up either.
func (d *daemon) recoverInterrupted(ctx context.Context, o *op, cur string, cause error) (control.Message, bool) {
	h, err := d.store.History()
	if err != nil {
		return control.Message{}, false
	}
	for _, ev := range h {
		if ev.ID == cur && ev.Result == release.ResultOK {
			return control.Message{}, false // it served before: a plain failed reload
		}
	}
	target, err := d.store.RollbackTarget()
	if err != nil || target == cur {
		return control.Message{}, false
	}
	d.log.Warn("Current release never served and does not come up: its deploy was interrupted; going back", "current", cur, "to", target, "err", cause)
	now := time.Now()
	d.recordNow(release.Event{Time: now, Op: control.OpDeploy, ID: cur, Result: release.ResultFailed,
		Error: "interrupted: the agent stopped before its workers were ready, and they did not get ready after the restart: " + cause.Error()})
	if _, err := d.switchTo(ctx, o, target, cur); err != nil {
		d.log.Error("Cannot go back to the rollback target", "release", target, "err", err)
		return control.Message{}, false
	}
	d.recordNow(release.Event{Time: now, Op: control.OpRollback, ID: target, From: cur, Result: release.ResultOK, Duration: time.Since(now)})
	return control.Message{Code: control.CodeOK, ID: target, From: cur}, true
}

// recordNow records ev outside an operation's own entry (record); a
// failure is logged.
func (d *daemon) recordNow(ev release.Event) {
	if err := d.store.Record(ev); err != nil {
		d.log.Error("Cannot record history", "op", ev.Op, "release", ev.ID, "err", err)
	}
}
