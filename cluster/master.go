//go:build linux

package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// GenerationSpec says where a generation runs. Dir is resolved with
// filepath.EvalSymlinks once, when the generation starts: every worker of
// the generation, restarts included, runs in that directory, never in
// whatever a symlink such as `current` names later.
type GenerationSpec struct {
	Dir       string // release directory
	ReleaseID string // DEPLOY_RELEASE_ID
	Root      string // DEPLOY_ROOT
	// Env holds KEY=VALUE pairs for this generation's workers only, after
	// Config.Env (a key in both takes this value): what the caller read
	// when the generation started (secrets from files). Every worker of the
	// generation, restarts included, gets it; Upgrade hands it over with
	// the generation. It never appears in Status or in the master's log.
	Env []string
}

// ReloadEventKind says what a ReloadEvent reports.
type ReloadEventKind string

// Reload event kinds. Worker events set Worker and PID.
const (
	EventWorkerStarted ReloadEventKind = "worker-started" // Message "restart" when a crashed worker was replaced
	EventWorkerReady   ReloadEventKind = "worker-ready"   // Message: how readiness was seen
	EventWorkerExited  ReloadEventKind = "worker-exited"  // Message: the exit status
	EventQuorum        ReloadEventKind = "quorum"         // enough new workers are ready
	EventProbation     ReloadEventKind = "probation"      // the probation window starts; Message: its length
	EventRetiring      ReloadEventKind = "retiring"       // the old generation is told to stop
	EventDraining      ReloadEventKind = "draining"       // the old generation drains in the background
	EventRescue        ReloadEventKind = "rescue"         // what connection rescue did while a generation stopped
	EventRetired       ReloadEventKind = "retired"        // the old generation is gone
	EventFailed        ReloadEventKind = "failed"         // the new generation failed; Message: why
)

// ReloadEvent reports progress of a Reload.
type ReloadEvent struct {
	Time       time.Time
	Kind       ReloadEventKind
	Generation int
	Worker     int
	PID        int
	Message    string
}

// ReloadResult describes a successful Reload.
type ReloadResult struct {
	Generation   int
	ReadyAfter   time.Duration // start of the reload to quorum ready
	RetiredAfter time.Duration // start of the reload to old generation gone
	Rescued      RescueStats   // what connection rescue did while the old generation stopped
	// Draining: a listening socket was replaced while the old generation
	// retired (its workers took it down). Reload returned without waiting
	// for the rest of that drain, which goes on under the master (Shutdown
	// waits for it), so that the caller can start a generation on the new
	// socket at once; RetiredAfter is then when Reload returned.
	Draining bool
}

// Master owns the workers of one application: at most one serving
// generation, plus the one a Reload is starting and the one it is retiring.
//
// Locks, in the order they are taken (a goroutine holding one may take only
// those after it): upMu → spawnMu → reapMu → mu → socks.mu (Sockets, which
// takes no other). emitMu is taken alone, around the caller's event
// callback, never with another held. The atomics need no lock.
type Master struct {
	// Set by NewMaster or ResumeMaster, read-only after.
	cfg       Config
	socks     *Sockets
	log       *slog.Logger
	spawner   *spawner
	watchdog  *watchdog
	notifyDir string
	resumed   bool // made by ResumeMaster: its adopted workers are children of the old program's main thread

	spawnSeq atomic.Int64 // numbers the workers' notify sockets
	// busy is true while a Reload or an Upgrade runs: a second one of
	// either gets ErrBusy at once, so an Upgrade never hands over a
	// generation a Reload is starting or retiring.
	busy atomic.Bool

	// upMu makes Upgrade and Shutdown exclude each other: a Shutdown waits
	// for an Upgrade in progress to fail (or to replace the program).
	upMu sync.Mutex
	// spawnMu is held for reading from a spawn to the registration of the
	// process in its slot (and by the listen watch while it replaces a
	// socket), reapMu from a worker's exit to its done; Upgrade holds both
	// for writing, so it sees every worker registered, and either alive and
	// not reaped or done, and the set of sockets as it stays.
	spawnMu sync.RWMutex
	reapMu  sync.RWMutex
	pausing atomic.Bool // set by Upgrade: readers stopped by pauseIO return quietly

	closing  chan struct{}  // closed by Shutdown: every goroutine of the master stops
	reloadWG sync.WaitGroup // a retirement Reload left draining (ReloadResult.Draining); Shutdown waits
	shutOnce sync.Once      // Shutdown's work runs once; later calls wait on shutDone
	shutDone chan struct{}
	shutErr  error // set before shutDone closes

	// emitMu serializes the event callback of the Reload in progress, which
	// it guards: events come from worker goroutines.
	emitMu  sync.Mutex
	emitter func(ReloadEvent)

	// Connection rescue (rescue.go).
	rescueOff atomic.Bool // pidfd_getfd was refused once: no more rescue for the master's life
	forwards  sync.Map    // netip.AddrPort -> *forwardState: local ends of the rescue's own forward connections

	// The listen watch (listenwatch.go): its goroutine, its check-now
	// requests, and the generation being stopped (0: none) it blames a
	// loss on.
	watchWG     sync.WaitGroup
	watchNow    chan chan struct{}
	stoppingGen atomic.Int64

	// mu guards the generations and what is counted across them; held
	// briefly, never across a spawn, a signal or a wait.
	mu       sync.Mutex
	next     *Config       // per-generation settings for the next Reload (SetConfig); nil: cfg's
	closed   bool          // Shutdown started: Reload and Upgrade return ErrClosed
	gens     []*generation // live, oldest first
	serving  *generation
	nextGen  int
	rescued  RescueStats // totals since start
	restarts int64       // worker restarts since start
	exits    ExitStats   // worker processes ended since start
}

// NewMaster validates cfg and prepares a master for socks; no worker runs
// until the first Reload. It starts the spawner thread and the watchdog
// process; Shutdown stops them.
func NewMaster(cfg Config, socks *Sockets) (*Master, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if socks == nil || len(socks.files) == 0 {
		return nil, fmt.Errorf("%w: no sockets", ErrInvalidConfig)
	}
	if _, err := os.Stat(cfg.ShimPath); err != nil {
		return nil, fmt.Errorf("%w: shim: %v", ErrInvalidConfig, err)
	}
	dir, err := os.MkdirTemp("", "handoff-notify-")
	if err != nil {
		return nil, fmt.Errorf("new master: %w", err)
	}
	sp := newSpawner()
	wd, err := startWatchdog(sp, cfg.ShimPath)
	if err != nil {
		sp.stop()
		os.RemoveAll(dir)
		return nil, err
	}
	m := &Master{
		cfg: cfg, socks: socks, log: cfg.Logger,
		spawner: sp, watchdog: wd, notifyDir: dir,
		closing: make(chan struct{}), shutDone: make(chan struct{}),
	}
	m.startListenWatch()
	return m, nil
}

// SetConfig validates cfg and makes its per-generation settings (Command,
// Workers, Env, StopSignal, DrainTimeout, RescueLinger, Readiness,
// BackoffMin, BackoffMax) the ones of the next Reload. A generation keeps
// the settings it started with for its whole life: its restarts, its
// retirement and its drain never take a later SetConfig, so a reload that
// fails leaves the serving generation exactly as it was. The settings of
// the master itself (ShimPath, Logger, ListenCheck, OnSocketLost) are fixed
// by NewMaster or ResumeMaster: those of cfg are ignored. An invalid cfg
// returns an error wrapping ErrInvalidConfig and changes nothing.
func (m *Master) SetConfig(cfg Config) error {
	cfg.ShimPath, cfg.Logger, cfg.ListenCheck, cfg.OnSocketLost = m.cfg.ShimPath, m.cfg.Logger, m.cfg.ListenCheck, m.cfg.OnSocketLost
	cfg, err := cfg.withDefaults()
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	m.mu.Lock()
	m.next = &cfg
	m.mu.Unlock()
	return nil
}

// nextConfig is the config the next Reload takes.
func (m *Master) nextConfig() Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.next != nil {
		return *m.next
	}
	return m.cfg
}

func (m *Master) emit(ev ReloadEvent) {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	m.emitMu.Lock()
	defer m.emitMu.Unlock()
	if m.emitter != nil {
		m.emitter(ev)
	}
}

func (m *Master) setEmitter(f func(ReloadEvent)) {
	m.emitMu.Lock()
	m.emitter = f
	m.emitMu.Unlock()
}

// Reload starts a complete new generation in spec.Dir beside the serving one
// (the first call starts the first generation) and waits until
// Readiness.Quorum of its workers are ready, then for Readiness.Probation;
// then the new generation serves and the old one is retired: StopSignal to
// each worker's process group, up to DrainTimeout, then SIGKILL to the group.
// Reload returns once the old generation is gone, or, when the listen watch
// replaced a socket during the retirement, at once with the rest of the
// drain going on under the master (ReloadResult.Draining).
//
// It fails with a *ReloadError (errors.Is(err, ErrReloadFailed)) when the
// timeout passes, so many new workers exit that the quorum cannot be met, a
// new worker exits during probation, ctx ends before the new generation
// serves, or the master is shut down. Then the new generation is stopped
// before Reload returns: ready workers are drained like a retiring
// generation (up to DrainTimeout), workers that never got ready get
// StopSignal and, in mode listen, 1s before SIGKILL. The old generation,
// never signalled, keeps serving. A ctx that ends after cutover does not cut
// the drain of the old generation.
//
// Reload while another Reload runs returns ErrBusy at once: refused, not
// queued. After Shutdown it returns ErrClosed. With ctx already done it
// returns ctx's error and starts nothing. An unusable spec.Dir returns
// an error wrapping ErrInvalidSpec and starts nothing. events, if not nil, is
// called for each ReloadEvent, one call at a time, never after Reload
// returned; it must not block for long.
func (m *Master) Reload(ctx context.Context, spec GenerationSpec, events func(ReloadEvent)) (*ReloadResult, error) {
	if !m.busy.CompareAndSwap(false, true) {
		return nil, ErrBusy
	}
	defer m.busy.Store(false)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("reload %s: %w", spec.Dir, err)
	}
	start := time.Now()
	dir, err := releaseDir(spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("reload %s: %w: %v", spec.Dir, ErrInvalidSpec, err)
	}
	g, old, err := m.newGeneration(spec, dir, start)
	if err != nil {
		return nil, err
	}
	defer m.reloadWG.Done()
	if events != nil {
		m.setEmitter(events)
		defer m.setEmitter(nil)
	}
	m.log.Info("Reloading", "gen", g.id, "release", spec.ReleaseID, "dir", dir, "workers", g.cfg.Workers)

	m.startWorkers(g)
	cause := m.awaitQuorum(ctx, g)
	readyAfter := time.Since(start)
	if cause == nil {
		m.emit(ReloadEvent{Kind: EventQuorum, Generation: g.id, Message: fmt.Sprintf("%d of %d ready after %s", g.cfg.Readiness.Quorum, g.cfg.Workers, readyAfter.Round(time.Millisecond))})
		cause = m.probation(ctx, g)
	}
	if cause == nil {
		cause = m.promote(g, old)
	}
	if cause != nil {
		return nil, m.fail(g, cause, start)
	}
	m.log.Info("Generation serving", "gen", g.id, "release", spec.ReleaseID, "ready_after", readyAfter)

	res := &ReloadResult{Generation: g.id, ReadyAfter: readyAfter}
	if old != nil {
		res.Rescued, res.Draining = m.retireOld(old)
	}
	res.RetiredAfter = time.Since(start)
	return res, nil
}

// releaseDir resolves a generation's directory to an absolute path with no
// symlinks (the `current` link is read once, here) and checks it is one.
func releaseDir(d string) (string, error) {
	dir, err := filepath.EvalSymlinks(d)
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(dir); err != nil {
		return "", err
	} else if !fi.IsDir() {
		return "", errors.New("not a directory")
	}
	return dir, nil
}

// newGeneration adds a starting generation for spec with the config the
// next reload takes, and returns it with the generation serving now (nil
// if none). It counts the reload in reloadWG, which the caller ends; after
// Shutdown began it returns ErrClosed.
func (m *Master) newGeneration(spec GenerationSpec, dir string, start time.Time) (g, old *generation, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, ErrClosed
	}
	m.reloadWG.Add(1)
	m.nextGen++
	gcfg := m.cfg
	if m.next != nil {
		gcfg = *m.next
	}
	g = &generation{
		m: m, id: m.nextGen, cfg: gcfg, spec: spec, dir: dir, created: start,
		promoted: make(chan struct{}), stopCh: make(chan struct{}), changed: make(chan struct{}, 1),
		state: GenStarting, epoch: m.socks.Epoch(),
	}
	for i := range gcfg.Workers {
		g.slots = append(g.slots, &slot{g: g, id: i, state: WorkerStarting})
	}
	m.gens = append(m.gens, g)
	return g, m.serving, nil
}

// startWorkers spawns one worker per slot of g, each supervised by its
// slot's goroutine; none once Shutdown began.
func (m *Master) startWorkers(g *generation) {
	for _, s := range g.slots {
		if chanClosed(m.closing) {
			return
		}
		p, err := m.spawn(s, func(p *proc, err error) { s.proc, s.startErr = p, err })
		if err == nil {
			m.emit(ReloadEvent{Kind: EventWorkerStarted, Generation: g.id, Worker: s.id, PID: p.pid})
		}
		g.wg.Add(1)
		go s.run(p, err)
	}
}

// promote makes g the serving generation and old, if any, a retiring one;
// ErrClosed once Shutdown began.
func (m *Master) promote(g, old *generation) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	g.state = GenServing
	m.serving = g
	close(g.promoted)
	if old != nil {
		old.state = GenRetiring
	}
	return nil
}

// retireOld retires old with its events: retired, or draining on in the
// background when a listening socket was replaced meanwhile.
func (m *Master) retireOld(old *generation) (rescued RescueStats, draining bool) {
	m.emit(ReloadEvent{Kind: EventRetiring, Generation: old.id})
	rescued, retired := m.retire(old)
	if !retired {
		m.emit(ReloadEvent{Kind: EventDraining, Generation: old.id, Message: "a listening socket was replaced: the rest of the drain goes on in the background"})
	} else {
		m.emit(ReloadEvent{Kind: EventRetired, Generation: old.id})
	}
	return rescued, !retired
}

// retire stops the old generation, with connection rescue, and reports
// true once it is gone, with what rescue did; or false as soon as the
// listen watch replaced a socket meanwhile: the rest of the drain then goes
// on in a goroutine of the master's (reloadWG).
func (m *Master) retire(old *generation) (RescueStats, bool) {
	replaced := m.socks.replacedCh()
	retired := make(chan RescueStats, 1)
	m.reloadWG.Add(1)
	go func() {
		defer m.reloadWG.Done()
		deadline := time.Now().Add(old.cfg.DrainTimeout)
		var st RescueStats
		m.stopWatched(old, func() {
			st = m.stopRescuing(old, deadline, func(send stopSignaller) {
				old.stop(old.cfg.StopSignal, deadline, time.Time{}, send)
			})
		})
		m.removeGen(old)
		m.log.Info("Generation retired", "gen", old.id)
		retired <- st
	}()
	select {
	case st := <-retired:
		return st, true
	case <-replaced:
		m.log.Warn("Listening socket replaced while a generation retired: not waiting for the rest of its drain", "gen", old.id)
		return RescueStats{}, false
	}
}

// stopRescuing runs stop, which stops generation g and returns once its
// processes are reaped, with connection rescue around it when another
// generation serves: the connections g's workers let go of are taken over
// (see rescue.go). stop must send the stop signal through send when it is
// not nil. It returns what rescue did,
// also logged, emitted as a "rescue" event and added to the master's totals.
func (m *Master) stopRescuing(g *generation, deadline time.Time, stop func(send stopSignaller)) RescueStats {
	m.mu.Lock()
	serving := m.serving != nil && m.serving != g
	m.mu.Unlock()
	var r *rescuer
	if serving {
		r = m.startRescue(g, deadline)
	}
	if r == nil {
		stop(nil)
		return RescueStats{}
	}
	stop(r)
	st := r.finish()
	m.mu.Lock()
	m.rescued.add(st)
	m.mu.Unlock()
	if st.Held > 0 || st.Error != "" {
		m.log.Info("Connections rescued", "gen", g.id, "held", st.Held, "forwarded", st.Forwarded, "requests", st.Requests,
			"replayed", st.Replayed, "idle", st.Idle, "gone", st.Gone, "abandoned", st.Abandoned, "refused", st.Refused, "failed", st.Failed)
		m.emit(ReloadEvent{Kind: EventRescue, Generation: g.id, Message: st.String()})
	}
	return st
}

// counts returns how many of g's workers are ready and alive, and how many
// exited (or could not start).
func (m *Master) counts(g *generation) (ready, exited int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range g.slots {
		switch {
		case s.proc == nil:
			if s.startErr != nil {
				exited++
			}
		case chanClosed(s.proc.done):
			exited++
		case s.proc.isReady():
			ready++
		}
	}
	return ready, exited
}

func chanClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (m *Master) awaitQuorum(ctx context.Context, g *generation) error {
	r := g.cfg.Readiness
	timer := time.NewTimer(r.Timeout)
	defer timer.Stop()
	for {
		ready, exited := m.counts(g)
		if ready >= r.Quorum {
			return nil
		}
		if exited > g.cfg.Workers-r.Quorum {
			m.settle(ctx, g)
			_, exited = m.counts(g)
			return fmt.Errorf("%w (%d of %d exited, quorum %d)", ErrQuorumLost, exited, g.cfg.Workers, r.Quorum)
		}
		select {
		case <-g.changed:
		case <-timer.C:
			return fmt.Errorf("%w: %d of %d workers ready within %s, quorum %d", ErrReadinessTimeout, ready, g.cfg.Workers, r.Timeout, r.Quorum)
		case <-ctx.Done():
			return ctx.Err()
		case <-m.closing:
			return ErrClosed
		}
	}
}

// settle gives the workers of a lost generation that are neither ready nor
// exited up to quorumLostGrace to reach either, so that the error tells what
// each of them did rather than "not ready" for those that were about to fail
// the same way.
func (m *Master) settle(ctx context.Context, g *generation) {
	t := time.NewTimer(quorumLostGrace)
	defer t.Stop()
	for {
		ready, exited := m.counts(g)
		if ready+exited >= len(g.slots) {
			return
		}
		select {
		case <-g.changed:
		case <-t.C:
			return
		case <-ctx.Done():
			return
		case <-m.closing:
			return
		}
	}
}

const (
	// quorumLostGrace bounds settle.
	quorumLostGrace = time.Second
	// unreadyGrace is how long a worker of a failed generation that never
	// got ready (mode listen) may take to exit on StopSignal.
	unreadyGrace = time.Second
)

func (m *Master) probation(ctx context.Context, g *generation) error {
	d := g.cfg.Readiness.Probation
	if d <= 0 {
		return nil
	}
	m.mu.Lock()
	g.state = GenProbation
	m.mu.Unlock()
	m.emit(ReloadEvent{Kind: EventProbation, Generation: g.id, Message: d.String()})
	_, exited0 := m.counts(g)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-g.changed:
			if _, exited := m.counts(g); exited > exited0 {
				return fmt.Errorf("%w (%s)", ErrProbationFailed, d)
			}
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-m.closing:
			return ErrClosed
		}
	}
}

// fail stops generation g and builds the ReloadError.
func (m *Master) fail(g *generation, cause error, start time.Time) error {
	m.mu.Lock()
	g.state = GenFailed
	type entry struct {
		s   *slot
		p   *proc
		err error
	}
	var es []entry
	for _, s := range g.slots {
		es = append(es, entry{s, s.proc, s.startErr})
	}
	m.mu.Unlock()
	// Verdicts are taken before the stop, which would blur them.
	var failures []WorkerFailure
	var procs []*proc
	lt := listenTable{}
	for _, e := range es {
		if e.p == nil {
			if e.err != nil {
				failures = append(failures, WorkerFailure{Worker: e.s.id, ExitStatus: "not started", Verdict: VerdictStartFailed + ": " + e.err.Error()})
				procs = append(procs, nil)
			}
			continue
		}
		if !chanClosed(e.p.done) && e.p.isReady() {
			continue // it did its part
		}
		verdict := "stopped by shutdown"
		if !errors.Is(cause, ErrClosed) {
			verdict = m.verdict(e.p, cause, lt)
		}
		failures = append(failures, WorkerFailure{
			Worker: e.s.id, PID: e.p.pid, ExitStatus: e.p.exitStatus(), Verdict: verdict,
		})
		procs = append(procs, e.p)
	}
	// Ready workers may hold accepted connections: they are drained like a
	// retiring generation. In mode listen a worker that is not ready never
	// registered the socket for accepting, so it gets a short grace only.
	now := time.Now()
	unready := now.Add(g.cfg.DrainTimeout)
	if g.cfg.Readiness.Mode == ModeListen {
		unready = now.Add(min(g.cfg.DrainTimeout, unreadyGrace))
	}
	m.stopWatched(g, func() {
		m.stopRescuing(g, now.Add(g.cfg.DrainTimeout), func(send stopSignaller) {
			g.stop(g.cfg.StopSignal, now.Add(g.cfg.DrainTimeout), unready, send)
		})
	})
	for i := range failures {
		if p := procs[i]; p != nil {
			failures[i].LastLines = p.lastLines()
		}
	}
	m.removeGen(g)
	err := &ReloadError{Generation: g.id, ReleaseID: g.spec.ReleaseID, Cause: cause, After: time.Since(start), Workers: failures}
	m.log.Warn("Reload failed", "gen", g.id, "err", err)
	m.emit(ReloadEvent{Kind: EventFailed, Generation: g.id, Message: err.Error()})
	return err
}

// spawn starts worker s.id of s's generation and calls register with the
// result under m.mu, all under spawnMu.
func (m *Master) spawn(s *slot, register func(*proc, error)) (*proc, error) {
	m.spawnMu.RLock()
	defer m.spawnMu.RUnlock()
	p, err := m.startProc(s.g, s.id)
	m.mu.Lock()
	register(p, err)
	m.mu.Unlock()
	return p, err
}

func (m *Master) removeGen(g *generation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.gens {
		if x == g {
			m.gens = append(m.gens[:i], m.gens[i+1:]...)
			break
		}
	}
	if m.serving == g {
		m.serving = nil
	}
}

// Shutdown stops every worker: StopSignal to each process group, a drain
// until ctx ends (or DrainTimeout when ctx has no deadline), then SIGKILL to
// what is left; it returns once every child is reaped, the spawner thread
// and the watchdog are gone. A Reload in progress fails with ErrClosed.
// It returns ctx.Err() when workers had to be killed at the deadline, nil
// otherwise. Later calls wait for the first and return its result. The
// sockets stay open: close them with Sockets.Close.
func (m *Master) Shutdown(ctx context.Context) error {
	m.shutOnce.Do(func() {
		defer close(m.shutDone)
		m.upMu.Lock() // an Upgrade in progress fails or replaces the program first
		defer m.upMu.Unlock()
		m.mu.Lock()
		m.closed = true
		close(m.closing)
		gens := append([]*generation(nil), m.gens...)
		m.mu.Unlock()
		m.watchWG.Wait() // no socket is restored while the workers stop
		m.log.Info("Shutting down", "generations", len(gens))

		deadline, ok := ctx.Deadline()
		if !ok {
			d := m.nextConfig().DrainTimeout
			for _, g := range gens {
				d = max(d, g.cfg.DrainTimeout)
			}
			deadline = time.Now().Add(d)
		}
		stopped := make(chan struct{})
		go func() {
			var wg sync.WaitGroup
			for _, g := range gens {
				wg.Add(1)
				go func() { defer wg.Done(); g.stop(g.cfg.StopSignal, deadline, time.Time{}, nil) }()
			}
			wg.Wait()
			m.reloadWG.Wait()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			m.shutErr = ctx.Err()
			for _, g := range gens {
				g.killAll()
			}
			<-stopped
		}
		m.mu.Lock()
		m.gens, m.serving = nil, nil
		m.mu.Unlock()
		m.log.Debug("Generations stopped")
		if err := m.watchdog.stop(); err != nil {
			m.log.Warn("Watchdog", "err", err)
		}
		m.log.Debug("Watchdog stopped")
		m.spawner.stop()
		os.RemoveAll(m.notifyDir)
		m.log.Info("Shut down")
	})
	<-m.shutDone
	return m.shutErr
}
