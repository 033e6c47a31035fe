//go:build linux

package cluster

import "time"

// Status is a snapshot of a Master, ready for encoding/json.
type Status struct {
	Generations []GenerationStatus `json:"generations"` // oldest first
	Sockets     []string           `json:"sockets"`
	Rescued     RescueStats        `json:"rescued"` // connection rescue, totals since the master started
	// Worker processes restarted and ended, totals since this program's
	// master started (an upgrade starts them again from 0).
	Restarts int64     `json:"restarts"`
	Exits    ExitStats `json:"exits"`
}

// ExitStats counts worker processes that ended, by why. Each ended process
// (or failed start) is in exactly one counter.
type ExitStats struct {
	Stopped     int64 `json:"stopped"`      // the master stopped it: retired, failed generation, shutdown
	Exited      int64 `json:"exited"`       // it exited on its own, with any exit code
	Killed      int64 `json:"killed"`       // a signal the master did not send ended it (a crash, the OOM killer)
	StartFailed int64 `json:"start_failed"` // it could not be started
}

// GenerationStatus describes one live generation.
type GenerationStatus struct {
	ID        int            `json:"id"`
	ReleaseID string         `json:"release_id"`
	Dir       string         `json:"dir"`
	State     string         `json:"state"` // GenStarting, GenProbation, GenServing, GenRetiring, GenFailed
	Started   time.Time      `json:"started"`
	Workers   []WorkerStatus `json:"workers"`
	// Stale: its workers hold a listening socket the listen watch replaced;
	// a Reload moves the service onto the new one.
	Stale bool `json:"stale,omitempty"`
}

// WorkerStatus describes one worker slot (WORKER_ID) of a generation.
type WorkerStatus struct {
	ID       int           `json:"id"`
	PID      int           `json:"pid"`   // current or last process
	State    string        `json:"state"` // WorkerStarting, WorkerReady, WorkerExited, WorkerBackoff, WorkerStopping
	Restarts int           `json:"restarts"`
	Uptime   time.Duration `json:"uptime_ns"`            // of the running process, 0 when none runs
	LastExit string        `json:"last_exit,omitempty"`  // how the previous process ended
	Status   string        `json:"status,omitempty"`     // last sd_notify STATUS=
	Backoff  time.Duration `json:"backoff_ns,omitempty"` // while crash-looping (not ready since a restart): the delay before the last or next restart
}

// Status returns a snapshot of the generations and their workers.
func (m *Master) Status() Status {
	epoch := m.socks.Epoch()
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{Sockets: m.socks.Addrs(), Generations: []GenerationStatus{}, Rescued: m.rescued,
		Restarts: m.restarts, Exits: m.exits}
	now := time.Now()
	for _, g := range m.gens {
		gs := GenerationStatus{ID: g.id, ReleaseID: g.spec.ReleaseID, Dir: g.dir, State: g.state, Started: g.created, Stale: g.epoch < epoch}
		for _, s := range g.slots {
			ws := WorkerStatus{ID: s.id, State: s.state, Restarts: s.restarts, LastExit: s.lastExit}
			// A crash loop stays visible between restarts too, not only
			// while the worker waits out its delay.
			if s.state == WorkerBackoff || (s.consecutive > 0 && s.state != WorkerReady) {
				ws.Backoff = s.backoff
			}
			if p := s.proc; p != nil {
				ws.PID = p.pid
				p.mu.Lock()
				if p.state == nil {
					ws.Uptime = now.Sub(p.started)
				}
				ws.Status = p.status
				p.mu.Unlock()
			}
			gs.Workers = append(gs.Workers, ws)
		}
		st.Generations = append(st.Generations, gs)
	}
	return st
}
