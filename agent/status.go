package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/release"
)

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
				if w.State == cluster.WorkerReady {
					n++
				}
			}
		}
	}
	return fmt.Sprintf("serving %s with %d/%d workers ready", cur, n, d.cfg.App.Workers)
}

func historyEntries(h []release.Event) []control.HistoryEntry {
	out := make([]control.HistoryEntry, 0, len(h))
	for _, e := range h {
		out = append(out, control.HistoryEntry{Time: e.Time, Op: e.Op, ID: e.ID, From: e.From, URL: e.URL, Result: string(e.Result), Error: e.Error, DurationNS: int64(e.Duration)})
	}
	return out
}

const lastDeploys = 10

func (d *daemon) status() *control.StatusDoc {
	d.mu.Lock()
	sock := d.cfg.Control.Socket
	d.mu.Unlock()
	st := &control.StatusDoc{Root: d.store.Root(), Socket: sock, PID: os.Getpid(), Version: agentVersion(),
		Uptime: time.Since(d.start).Seconds(), Listen: d.socks.Addrs(), Metrics: d.metrics.addr(), Generations: []control.GenerationDoc{}, LastDeploys: []control.HistoryEntry{}}
	cur, err := d.store.Current()
	if err == nil {
		st.Current = cur
	} else if !errors.Is(err, release.ErrNoCurrent) {
		st.CurrentError = err.Error()
	}
	d.mu.Lock()
	st.Running = d.running.running()
	st.Waiting = d.waiting.running()
	d.lostStatusLocked(st)
	st.Config = d.configDocLocked()
	d.mu.Unlock()
	ms := d.master.Status()
	st.Rescued = control.RescueDoc(ms.Rescued)
	for _, g := range ms.Generations {
		gd := control.GenerationDoc{ID: g.ID, ReleaseID: g.ReleaseID, Dir: g.Dir, State: g.State, Workers: []control.WorkerDoc{}}
		for _, w := range g.Workers {
			gd.Workers = append(gd.Workers, control.WorkerDoc{ID: w.ID, PID: w.PID, State: w.State, Restarts: w.Restarts, Uptime: w.Uptime.Seconds(), LastExit: w.LastExit, Backoff: w.Backoff.Seconds()})
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
