package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/hooks"
	"github.com/handoff/handoff/release"
)

// The operations: deploy, rollback and reload, each run by execute with the
// root locked, streaming events into the op's log and returning its result.

// emit adds a human event to o's stream.
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

// reloadOnce runs Master.Reload on release id, streaming worker events.
func (d *daemon) reloadOnce(ctx context.Context, o *op, id string) (*cluster.ReloadResult, error) {
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
			if ev.Message != "" && ev.Kind != "failed" { // a failure's details come with the result
				m.Message += ": " + ev.Message
			}
		}
		o.log.emit(m)
	})
	if err == nil {
		d.metrics.ready(res.ReadyAfter)
		d.emit(o, "reload", "done", "generation %d serving releases/%s: ready after %s, old generation retired after %s",
			res.Generation, id, fmtDur(res.ReadyAfter), fmtDur(res.RetiredAfter))
	}
	return res, err
}

// reloadErr describes a failed reload in one line; the per-worker details
// travel separately (failuresOf).
func reloadErr(err error) error {
	var re *cluster.ReloadError
	if !errors.As(err, &re) {
		return fmt.Errorf("new workers did not take over: %w", err)
	}
	return fmt.Errorf("new workers did not take over: generation %d (release %s): %w after %s", re.Generation, re.ReleaseID, re.Cause, fmtDur(re.After))
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
	ev.Time = o.started
	ev.Duration = time.Since(o.started)
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
	if ctx.Err() != nil {
		// The agent is stopping: do not hold the shutdown for up to
		// hooks.timeout.
		d.emit(o, "on-failure", "warn", "skipped: the agent is shutting down")
		return
	}
	if err := d.runHooks(ctx, o, "on-failure", d.cfg.Hooks.OnFailure, id, prev, errText); err != nil {
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
	if existed && id != prev {
		prepared, err := d.prepared(id)
		if err != nil {
			return fail(codeInternal, "failed", err, "", nil)
		}
		if !prepared {
			// Left by a deploy that never reached the swap (the agent was
			// killed): its link step or pre-activate hooks may not have
			// finished. Start over from a fresh fetch.
			if err := d.store.Remove(id); err != nil {
				return fail(codeInternal, "failed", err, "", nil)
			}
			d.emit(o, "cleanup", "done", "removed releases/%s, left by an interrupted deploy", id)
			existed = false
		}
	}

	d.emit(o, "fetch", "start", "%s -> releases/%s", url, id)
	var last time.Time
	var bytes int64
	fetched, err := d.store.Fetch(ctx, release.FetchRequest{URL: o.req.URL, ID: id, Force: existed, Progress: func(done, total int64) {
		bytes = max(bytes, done)
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || (total > 0 && done == total) {
			last = now
			o.log.emit(Message{Stage: "fetch", Kind: "progress", Done: done, Total: total})
		}
	}})
	d.metrics.fetched(bytes)
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

	// With a previous release, current switches before the reload and
	// points back if it fails. The first deploy has nothing to point back
	// to: current is created only once its workers serve, so a failed first
	// deploy leaves no current at all.
	first := prev == ""
	activate := func() error {
		if err := d.store.Activate(id); err != nil {
			return err
		}
		d.emit(o, "activate", "done", "current -> releases/%s", id)
		return nil
	}
	if !first {
		if err := activate(); err != nil {
			return fail(codeFailed, "failed", err, "", nil)
		}
	}
	if _, err := d.reloadTo(ctx, o, id); err != nil {
		restored := ""
		if !first {
			restored = d.restore(o, prev)
		}
		d.onFailure(ctx, o, id, prev, err.Error())
		return fail(codeFailed, "failed", reloadErr(err), restored, failuresOf(err))
	}
	if first {
		if err := activate(); err != nil {
			// The workers serve, but a restarted agent would not know
			// which release: report it, the operator redeploys.
			return fail(codeFailed, "failed", err, "", nil)
		}
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

// prepared reports whether release id went through its link step and
// pre-activate hooks: it was activated at least once (any history entry
// past the fetch), or current names it.
func (d *daemon) prepared(id string) (bool, error) {
	if currentOrEmpty(d.store) == id {
		return true, nil
	}
	h, err := d.store.History()
	if err != nil {
		return false, err
	}
	for _, ev := range h {
		if ev.ID == id && ev.Result != "refused" {
			return true, nil
		}
	}
	return false, nil
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
		return Message{Code: codeFailed, ID: target, From: prev, Error: reloadErr(err).Error(), Restored: restored, Failures: failuresOf(err)}
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
		if o.first && ctx.Err() == nil {
			if res, ok := d.recoverInterrupted(ctx, o, cur, err); ok {
				return res
			}
		}
		ev.Result, ev.Error = "failed", err.Error()
		d.record(o, ev)
		// The previous generation (if any) keeps serving.
		return Message{Code: codeFailed, ID: cur, Error: reloadErr(err).Error(), Failures: failuresOf(err)}
	}
	if o.first {
		d.recordRecovered(cur)
	}
	ev.Result = "ok"
	d.record(o, ev)
	return Message{Code: codeOK, ID: cur, From: cur}
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
		if ev.ID == cur && ev.Result == "ok" {
			return
		}
	}
	d.log.Warn("Completed a deploy the agent's death interrupted after the swap; its post-deploy hooks did not run", "release", cur)
	ev := release.Event{Time: time.Now(), Op: opDeploy, ID: cur, Result: "ok",
		Error: "completed at the agent's restart after an interruption; post-deploy hooks did not run"}
	if err := d.store.Record(ev); err != nil {
		d.log.Error("Cannot record history", "err", err)
	}
}

// recoverInterrupted handles a first generation that failed on a release
// that never served: the agent died during its deploy, after the swap and
// before the workers were ready. It records that deploy as failed and goes
// back to the rollback target, as the deploy would have; ok is false (and
// current unchanged) when there is no proven release to go back to, or it
// does not come up either.
func (d *daemon) recoverInterrupted(ctx context.Context, o *op, cur string, cause error) (Message, bool) {
	h, err := d.store.History()
	if err != nil {
		return Message{}, false
	}
	for _, ev := range h {
		if ev.ID == cur && ev.Result == "ok" {
			return Message{}, false // it served before: a plain failed reload
		}
	}
	target, err := d.store.RollbackTarget()
	if err != nil || target == cur {
		return Message{}, false
	}
	d.log.Warn("Current release never served and does not come up: its deploy was interrupted; going back", "current", cur, "to", target, "err", cause)
	now := time.Now()
	d.store.Record(release.Event{Time: now, Op: opDeploy, ID: cur, Result: "failed",
		Error: "interrupted: the agent stopped before its workers were ready, and they did not get ready after the restart: " + cause.Error()})
	if err := d.store.Activate(target); err != nil {
		d.log.Error("Cannot point current back", "release", target, "err", err)
		return Message{}, false
	}
	if _, err := d.reloadTo(ctx, o, target); err != nil {
		d.log.Error("The rollback target does not come up either", "release", target, "err", err)
		if err := d.store.Activate(cur); err != nil {
			d.log.Error("Cannot point current back", "release", cur, "err", err)
		}
		return Message{}, false
	}
	d.store.Record(release.Event{Time: now, Op: opRollback, ID: target, From: cur, Result: "ok", Duration: time.Since(now)})
	return Message{Code: codeOK, ID: target, From: cur}, true
}
