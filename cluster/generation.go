//go:build linux

package cluster

import (
	"sync"
	"syscall"
	"time"
)

// Generation states, as Status reports them.
const (
	GenStarting  = "starting"
	GenProbation = "probation"
	GenServing   = "serving"
	GenRetiring  = "retiring"
	GenFailed    = "failed"
)

// Worker states, as Status reports them.
const (
	WorkerStarting = "starting"
	WorkerReady    = "ready"
	WorkerExited   = "exited"
	WorkerBackoff  = "backoff"
	WorkerStopping = "stopping"
)

// generation is N workers of one command in one resolved directory. Each
// worker slot has one goroutine (run) that owns its processes one after the
// other; the generation's wg waits for them.
type generation struct {
	m       *Master
	id      int
	cfg     Config // what it started with, for its life: never changed
	spec    GenerationSpec
	dir     string
	created time.Time
	slots   []*slot

	promoted chan struct{} // closed when it becomes the serving generation
	stopCh   chan struct{} // closed when it is being stopped
	changed  chan struct{} // cap 1: some worker got ready or exited
	wg       sync.WaitGroup

	state string // guarded by m.mu
	epoch int    // Sockets.Epoch when its first workers started
}

type slot struct {
	g  *generation
	id int

	// guarded by m.mu
	proc        *proc
	startErr    error
	state       string
	restarts    int
	lastExit    string
	backoff     time.Duration
	consecutive int // crashes in a row, for the backoff
}

func (g *generation) signal() {
	select {
	case g.changed <- struct{}{}:
	default:
	}
}

func (g *generation) stopping() bool {
	select {
	case <-g.stopCh:
		return true
	default:
		return false
	}
}

// run supervises worker slot s, starting with p (or the error starting it;
// neither for a slot handed over by an upgrade with no process running,
// which is restarted). Before the generation is promoted an exited worker
// stays down (the reload decides); once it serves, a dead worker is
// restarted in the generation's own directory with exponential backoff.
func (s *slot) run(p *proc, err error) {
	defer s.g.wg.Done()
	m := s.g.m
	for {
		var up time.Duration
		switch {
		case p != nil:
			s.watch(p)
			up = p.exitedAt.Sub(p.started)
		case err != nil:
			m.log.Warn("Worker start failed", "gen", s.g.id, "worker", s.id, "err", err)
			m.mu.Lock()
			s.state, s.lastExit, s.startErr = WorkerExited, err.Error(), err
			m.exits.StartFailed++
			m.mu.Unlock()
			s.g.signal()
		}
		if s.g.stopping() {
			return
		}
		select {
		case <-s.g.promoted:
		case <-s.g.stopCh:
			return
		}
		if s.g.stopping() {
			return
		}
		m.mu.Lock()
		if up > max(s.g.cfg.BackoffMax, time.Second) {
			s.consecutive = 0
		}
		delay := s.g.cfg.BackoffMin << min(s.consecutive, 30)
		if delay > s.g.cfg.BackoffMax || delay <= 0 {
			delay = s.g.cfg.BackoffMax
		}
		s.consecutive++
		s.state, s.backoff = WorkerBackoff, delay
		m.mu.Unlock()
		m.log.Info("Restarting worker", "gen", s.g.id, "worker", s.id, "in", delay)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.g.stopCh:
			t.Stop()
			return
		}
		p, err = m.spawn(s, func(p *proc, err error) {
			s.restarts++
			m.restarts++
			if err == nil {
				s.proc, s.startErr, s.state = p, nil, WorkerStarting
			}
		})
		if err == nil {
			m.emit(ReloadEvent{Kind: EventWorkerStarted, Generation: s.g.id, Worker: s.id, PID: p.pid, Message: "restart"})
			if s.g.stopping() {
				// Stopped between the check above and the registration: the
				// stopper may not have seen this process.
				p.kill()
			}
		}
	}
}

// watch follows one process until it is reaped.
func (s *slot) watch(p *proc) {
	m := s.g.m
	select {
	case <-p.ready:
		m.mu.Lock()
		if s.state == WorkerStarting {
			s.state = WorkerReady
		}
		m.mu.Unlock()
		if !p.adoptedReady { // an adopted worker's readiness was told before
			p.mu.Lock()
			how, after := p.readyHow, p.readyAt.Sub(p.started)
			p.mu.Unlock()
			p.log.Info("Worker ready", "by", how, "after", after)
			m.emit(ReloadEvent{Kind: EventWorkerReady, Generation: s.g.id, Worker: s.id, PID: p.pid, Message: how})
			s.g.signal()
		}
		<-p.done
	case <-p.done:
	}
	status := p.exitStatus()
	m.mu.Lock()
	s.state, s.lastExit = WorkerExited, status
	p.countExit(&m.exits) // lock order: m.mu, then p.mu, as in Status
	m.mu.Unlock()
	p.log.Info("Worker exited", "status", status, "after", p.exitedAt.Sub(p.started).Round(time.Millisecond))
	m.emit(ReloadEvent{Kind: EventWorkerExited, Generation: s.g.id, Worker: s.id, PID: p.pid, Message: status})
	s.g.signal()
}

// stop stops every worker: sig to each process group, SIGKILL to the group
// at deadline. With unreadyDeadline set, workers that never got ready get
// SIGKILL at that (earlier) time instead. send, if not nil, sends sig in
// place of a kill of each process group, and is told once all were sent. It returns when every slot
// goroutine is done and every process reaped.
func (g *generation) stop(sig syscall.Signal, deadline, unreadyDeadline time.Time, send stopSignaller) {
	m := g.m
	m.mu.Lock()
	select {
	case <-g.stopCh:
	default:
		close(g.stopCh)
	}
	var procs []*proc
	for _, s := range g.slots {
		if s.proc != nil {
			procs = append(procs, s.proc)
			if s.state == WorkerStarting || s.state == WorkerReady {
				s.state = WorkerStopping
			}
		}
	}
	m.mu.Unlock()
	for _, p := range procs {
		if !unreadyDeadline.IsZero() && !p.isReady() {
			p.signalStop(sig, unreadyDeadline, send)
		} else {
			p.signalStop(sig, deadline, send)
		}
	}
	if send != nil {
		send.sent()
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.awaitStop()
		}()
	}
	wg.Wait()
	g.wg.Wait()
}

// killAll cuts every drain of the generation short with SIGKILL.
func (g *generation) killAll() {
	g.m.mu.Lock()
	var procs []*proc
	for _, s := range g.slots {
		if s.proc != nil {
			procs = append(procs, s.proc)
		}
	}
	g.m.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
}
