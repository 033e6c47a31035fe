package main

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/handoff/handoff/config"
	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/release"
)

// deployment is what the steps of one deploy share.
type deployment struct {
	id      string        // the release; the id fetched once fetched
	prev    string        // what current named at the start; "" for a first deploy
	existed bool          // the release was on disk and prepared: fetch only compares, no link or pre-activate
	ev      release.Event // its history entry
}

// deploy is prepare → switch → finish: the release comes onto disk, linked
// and through its pre-activate hooks; current and the workers switch to it;
// its post-deploy hooks run (rolling back on failure), the deploy is
// recorded and old releases pruned.
func (d *daemon) deploy(ctx context.Context, o *op) control.Message {
	prev := currentOrEmpty(d.store)
	dp := &deployment{id: o.req.ID, prev: prev,
		ev: release.Event{Op: control.OpDeploy, ID: o.req.ID, From: prev, URL: release.RedactURL(o.req.URL)}}
	if res, done := d.prepareDeploy(ctx, o, dp); done {
		return res
	}
	if res, done := d.switchDeploy(ctx, o, dp); done {
		return res
	}
	return d.finishDeploy(ctx, o, dp)
}

// failDeploy records the deploy as result and returns its failed result.
func (d *daemon) failDeploy(o *op, dp *deployment, code string, result release.Result, err error, restored string, failures []control.WorkerVerdict) control.Message {
	dp.ev.Result, dp.ev.Error = result, err.Error()
	d.record(o, dp.ev)
	return control.Message{Code: code, ID: dp.id, From: dp.prev, Error: err.Error(), Restored: restored, Failures: failures}
}

// prepareDeploy brings the release onto disk, linked and through its
// pre-activate hooks. A failure removes it: nothing changed. done is true
// when the deploy ends here (failed, or nothing to do), with its result.
func (d *daemon) prepareDeploy(ctx context.Context, o *op, dp *deployment) (res control.Message, done bool) {
	if err := d.checkExisting(o, dp); err != nil {
		return d.failDeploy(o, dp, control.CodeInternal, release.ResultFailed, err, "", nil), true
	}
	if res, done := d.fetchRelease(ctx, o, dp); done {
		return res, true
	}
	if dp.existed {
		return control.Message{}, false
	}
	if len(d.cfg.Linked) > 0 {
		if err := d.store.Link(dp.id, d.cfg.Linked); err != nil {
			d.removeRelease(o, dp.id)
			return d.failDeploy(o, dp, control.CodeFailed, release.ResultRefused, err, "", nil), true
		}
		d.emit(o, control.StageLink, control.KindDone, "linked %s from shared/", strings.Join(d.cfg.Linked, ", "))
	}
	if err := d.runHooks(ctx, o, control.StagePreActivate, d.cfg.Hooks.PreActivate, dp.id, dp.prev, ""); err != nil {
		d.onFailure(ctx, o, dp.id, dp.prev, err.Error()) // in the release dir, before it goes
		d.removeRelease(o, dp.id)
		return d.failDeploy(o, dp, control.CodeFailed, release.ResultRefused, err, "", nil), true
	}
	return control.Message{}, false
}

// checkExisting looks at a release already on disk under the id: one that
// went through its preparation is fetched again only to compare (and skips
// link and pre-activate); one left by a deploy that never reached the swap
// (the agent was killed: its link step or pre-activate hooks may not have
// finished) is removed to start over from a fresh fetch.
func (d *daemon) checkExisting(o *op, dp *deployment) error {
	existing, err := d.store.Releases()
	if err != nil {
		return err
	}
	dp.existed = contains(existing, dp.id)
	if !dp.existed || dp.id == dp.prev {
		return nil
	}
	prepared, err := d.prepared(dp.id)
	if err != nil || prepared {
		return err
	}
	if err := d.store.Remove(dp.id); err != nil {
		return err
	}
	d.emit(o, control.StageCleanup, control.KindDone, "removed releases/%s, left by an interrupted deploy", dp.id)
	dp.existed = false
	return nil
}

// fetchRelease fetches the release into releases/<id>, streaming progress
// at most every 100ms. Redeploying current with identical content ends the
// deploy: nothing to do.
func (d *daemon) fetchRelease(ctx context.Context, o *op, dp *deployment) (res control.Message, done bool) {
	d.emit(o, control.StageFetch, control.KindStart, "%s -> releases/%s", dp.ev.URL, dp.id)
	var last time.Time
	var bytes int64 // the most Progress reported: what came in, also for a failed fetch
	fetched, err := d.store.Fetch(ctx, release.FetchRequest{URL: o.req.URL, ID: dp.id, Force: dp.existed, Progress: func(done, total int64) {
		bytes = max(bytes, done)
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || (total > 0 && done == total) {
			last = now
			o.log.Emit(control.Message{Stage: control.StageFetch, Kind: control.KindProgress, Done: done, Total: total})
		}
	}})
	d.metrics.fetched(bytes)
	if err != nil {
		code := control.CodeFailed
		if errors.Is(err, release.ErrInvalidID) || errors.Is(err, release.ErrExists) {
			code = control.CodeUsage
		}
		return d.failDeploy(o, dp, code, release.ResultRefused, err, "", nil), true
	}
	dp.id = fetched
	if dp.existed && dp.id == dp.prev {
		d.emit(o, control.StageFetch, control.KindDone, "releases/%s is already current with identical content: nothing to do", dp.id)
		return control.Message{Code: control.CodeOK, ID: dp.id, From: dp.prev}, true
	}
	d.emit(o, control.StageFetch, control.KindDone, "releases/%s ready (%s)", dp.id, time.Since(o.since).Round(time.Millisecond))
	return control.Message{}, false
}

// switchDeploy switches current and the workers to the release (switchTo).
// done is true when it failed, with the result.
func (d *daemon) switchDeploy(ctx context.Context, o *op, dp *deployment) (res control.Message, done bool) {
	restored, err := d.switchTo(ctx, o, dp.id, dp.prev)
	var rf *reloadFailed
	switch {
	case err == nil:
		return control.Message{}, false
	case errors.As(err, &rf):
		d.onFailure(ctx, o, dp.id, dp.prev, err.Error())
		return d.failDeploy(o, dp, control.CodeFailed, release.ResultFailed, reloadErr(err), restored, failuresOf(err)), true
	default:
		// current could not switch; or, on a first deploy, the workers
		// serve but current was not created, so a restarted agent would
		// not know which release: reported, the operator redeploys.
		return d.failDeploy(o, dp, control.CodeFailed, release.ResultFailed, err, "", nil), true
	}
}

// finishDeploy runs the post-deploy hooks, whose failure rolls back to the
// previous release (post_deploy_failure = "rollback") or only warns, then
// records the deploy and prunes old releases.
func (d *daemon) finishDeploy(ctx context.Context, o *op, dp *deployment) control.Message {
	if err := d.runHooks(ctx, o, control.StagePostDeploy, d.cfg.Hooks.PostDeploy, dp.id, dp.prev, ""); err != nil {
		if d.cfg.Hooks.PostDeployFailure != config.PostDeployRollback || dp.prev == "" {
			d.emit(o, control.StagePostDeploy, control.KindWarn, "%v (post_deploy_failure = %q: keeping %s)", err, d.cfg.Hooks.PostDeployFailure, dp.id)
		} else {
			return d.rollBackDeploy(ctx, o, dp, err)
		}
	}
	dp.ev.Result = release.ResultOK
	d.record(o, dp.ev)
	d.prune(o)
	return control.Message{Code: control.CodeOK, ID: dp.id, From: dp.prev}
}

// rollBackDeploy switches back to the previous release after a post-deploy
// hook failed. The switch outlives a stopping agent: cut short, it would
// leave current on the release the hook refused.
func (d *daemon) rollBackDeploy(ctx context.Context, o *op, dp *deployment, hookErr error) control.Message {
	d.emit(o, control.StageRollback, control.KindStart, "post-deploy failed: rolling back to %s", dp.prev)
	restored := dp.prev
	if _, err := d.switchTo(context.WithoutCancel(ctx), o, dp.prev, dp.id); err != nil {
		d.emit(o, control.StageRollback, control.KindWarn, "rolling back to %s failed: %v", dp.prev, err)
		restored = ""
	}
	d.onFailure(ctx, o, dp.id, dp.prev, hookErr.Error())
	return d.failDeploy(o, dp, control.CodeFailed, release.ResultRolledBack, hookErr, restored, nil)
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
		if ev.ID == id && ev.Result != release.ResultRefused {
			return true, nil
		}
	}
	return false, nil
}

func (d *daemon) removeRelease(o *op, id string) {
	if err := d.store.Remove(id); err != nil {
		d.emit(o, control.StageCleanup, control.KindWarn, "cannot remove releases/%s: %v", id, err)
		return
	}
	d.emit(o, control.StageCleanup, control.KindDone, "removed releases/%s; nothing changed", id)
}
