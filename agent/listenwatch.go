package main

import (
	"context"
	"fmt"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/control"
)

// What the agent does when the cluster's listen watch reports a lost
// listening socket (a worker shut it down, or removed its unix path): the
// cluster restored it; when it had to bind a new one, the workers serving
// hold the dead one, and a reload from current moves the service onto the
// new one. That reload is an operation like any other: it runs at once when
// the agent is idle, after the operation in progress otherwise (ahead of a
// queued one), or is not needed when that operation starts a generation on
// the new socket anyway.

// listenLost is the agent's record of lost sockets; guarded by daemon.mu.
type listenLost struct {
	count int
	last  *control.ListenLostDoc
	open  []*lostOpen // rebound, no generation on the new socket yet
}

type lostOpen struct {
	doc      *control.ListenLostDoc
	lastSeen time.Time
	op       *op // the operation it happened during, if any
}

func lostDoc(l cluster.SocketLost) *control.ListenLostDoc {
	d := &control.ListenLostDoc{Time: l.Detected, Socket: l.Name, Address: l.Address, Reason: l.Reason, Restored: l.How,
		Adopted: l.Adopted, Stopping: l.Stopping, RefusedS: l.Restored.Sub(l.LastSeen).Seconds()}
	if !l.NeedsReload() {
		d.DownS = d.RefusedS
	}
	return d
}

// describeLost is the human line of a loss.
func describeLost(l *control.ListenLostDoc) string {
	s := fmt.Sprintf("listening socket %s (%s) %s", l.Socket, l.Address, l.Reason)
	if l.Stopping != 0 {
		s += fmt.Sprintf(" while generation %d stopped", l.Stopping)
	}
	s += fmt.Sprintf("; refused connections for at most %s", fmtDur(time.Duration(l.RefusedS*float64(time.Second))))
	switch {
	case l.Restored == cluster.RestoredRelinked:
		s += "; path put back on the same socket"
	case l.Adopted:
		s += "; the socket unit's socket is dead: bound the address again (restart the .socket unit to hand it back to systemd)"
	default:
		s += "; bound again"
	}
	if l.Restored == cluster.RestoredRebound && l.DownS == 0 {
		s += ", a new generation takes it over"
	}
	return s
}

// summarizeLost is the one line of `agent status` and of a result.
func summarizeLost(l *control.ListenLostDoc) string {
	s := fmt.Sprintf("listening socket %s (%s) %s", l.Socket, l.Address, l.Reason)
	if l.Stopping != 0 {
		s += fmt.Sprintf(" while generation %d stopped", l.Stopping)
	}
	s += fmt.Sprintf(", %s: refused for at most %s", l.Restored, fmtDur(time.Duration(l.RefusedS*float64(time.Second))))
	switch {
	case l.ServedBy != 0:
		s += fmt.Sprintf(", served again by generation %d after at most %s", l.ServedBy, fmtDur(time.Duration(l.DownS*float64(time.Second))))
	case l.DownS == 0:
		s += ", not served again yet"
	}
	if l.Adopted {
		s += " (was the socket unit's: restart the unit to hand the address back to systemd)"
	}
	return s
}

// listenCheck maps the config's period (0: off) to cluster.Config's.
func listenCheck(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// socketLost is cluster.Config.OnSocketLost: called from the watch, it
// counts the loss, tells the operation in progress, and starts the reload
// the new socket needs when nothing runs. The cluster logged it.
func (d *daemon) socketLost(l cluster.SocketLost) {
	doc := lostDoc(l)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lost.count++
	d.lost.last = doc
	if o := d.running; o != nil {
		o.lost = append(o.lost, doc)
		d.emit(o, control.StageListen, control.KindWarn, "%s", describeLost(doc))
	}
	if !l.NeedsReload() {
		return
	}
	d.lost.open = append(d.lost.open, &lostOpen{doc: doc, lastSeen: l.LastSeen, op: d.running})
	if d.running == nil && !d.stopping && d.ctx != nil {
		d.startRecoveryLocked(d.ctx)
	}
}

// startRecoveryLocked starts a reload from current onto the replaced
// sockets.
func (d *daemon) startRecoveryLocked(ctx context.Context) {
	d.log.Info("Reloading onto the replaced listening socket")
	d.startLocked(ctx, &op{req: control.Request{Op: control.OpReload}, since: time.Now(), log: control.NewLog(), recover: true})
}

// recoverAfterLocked runs when operation done ends: a loss still open (the
// operation failed before starting a generation, or the old generation
// kept serving) gets its reload now, ahead of a queued operation. A
// recovery that failed is not repeated: the loss stays open for the next
// operation. It reports whether it started one.
func (d *daemon) recoverAfterLocked(ctx context.Context, done *op) bool {
	if len(d.lost.open) == 0 || d.stopping || ctx.Err() != nil || (done != nil && done.recover) {
		return false
	}
	if !d.master.Stale() {
		return false
	}
	d.startRecoveryLocked(ctx)
	return true
}

// afterReload is called once a reload succeeded: while the new generation
// holds a socket replaced during the reload (a retiring worker shut it
// down), it reloads again; then every open loss is closed with how long
// its socket served nothing.
func (d *daemon) afterReload(ctx context.Context, o *op, id string, res *cluster.ReloadResult, start time.Time) error {
	for range 3 {
		if !d.master.Stale() {
			break
		}
		d.emit(o, control.StageListen, control.KindStart, "generation %d holds a listening socket that was replaced: starting a generation on the new one", res.Generation)
		var err error
		start = time.Now()
		if res, err = d.reloadOnce(ctx, o, id); err != nil {
			return err
		}
	}
	if d.master.Stale() {
		return nil // left open: the next operation, or recoverAfterLocked
	}
	servedAt := start.Add(res.ReadyAfter)
	d.mu.Lock()
	open := d.lost.open
	d.lost.open = nil
	d.mu.Unlock()
	for _, lo := range open {
		d.mu.Lock()
		lo.doc.DownS, lo.doc.ServedBy = servedAt.Sub(lo.lastSeen).Seconds(), res.Generation
		d.mu.Unlock()
		d.emit(o, control.StageListen, control.KindDone, "listening socket %s (%s) served again by generation %d: down for at most %s (refused for at most %s)",
			lo.doc.Socket, lo.doc.Address, res.Generation, fmtDur(servedAt.Sub(lo.lastSeen)), fmtDur(time.Duration(lo.doc.RefusedS*float64(time.Second))))
		if lo.op != nil && lo.op != o {
			continue
		}
		d.mu.Lock()
		if !containsDoc(o.lost, lo.doc) {
			o.lost = append(o.lost, lo.doc)
		}
		d.mu.Unlock()
	}
	return nil
}

func containsDoc(l []*control.ListenLostDoc, d *control.ListenLostDoc) bool {
	for _, x := range l {
		if x == d {
			return true
		}
	}
	return false
}

// lostResult is what an operation's result says of the losses during it.
func (d *daemon) lostResult(o *op) []control.ListenLostDoc {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []control.ListenLostDoc
	for _, l := range o.lost {
		out = append(out, *l)
	}
	return out
}

// lostStatus fills the status fields; d.mu is held.
func (d *daemon) lostStatusLocked(st *control.StatusDoc) {
	st.ListenersLost = d.lost.count
	if d.lost.last != nil {
		l := *d.lost.last
		st.LastListenerLost = &l
	}
}
