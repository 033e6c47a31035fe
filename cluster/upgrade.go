//go:build linux

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// upgradeEnv names the inherited memfd that holds the handover document; it
// is set only for the execve of an upgrade and unset at once by the new
// program (package init).
const upgradeEnv = "HANDOFF_UPGRADE"

// handoverVersion is the version of the handover document and of the
// watchdog protocol. A binary that answers another version to the probe is
// refused.
const handoverVersion = 1

var probeAnswer = "handoff-cluster handover " + strconv.Itoa(handoverVersion)

var (
	// ErrUpgradeUnsupported: this Master cannot hand its workers over (see
	// Upgrade).
	ErrUpgradeUnsupported = errors.New("upgrade not possible")
	// ErrIncompatible: the new binary did not answer the handover probe as a
	// program of this package speaking the same handover version does.
	ErrIncompatible = errors.New("new binary cannot take over")
	// ErrNotUpgraded: Resume in a process that was not started by Upgrade,
	// or a second Resume.
	ErrNotUpgraded = errors.New("not started by an upgrade")
)

// The handover document, JSON in a memfd the new program inherits. File
// descriptor numbers are the same in both programs: execve keeps them.
type handover struct {
	Version     int               `json:"version"`
	Sockets     []handoverSocket  `json:"sockets"`
	Unlinks     []string          `json:"unlinks,omitempty"`
	WatchdogPID int               `json:"watchdog_pid"`
	WatchdogFD  int               `json:"watchdog_fd"`
	NotifyDir   string            `json:"notify_dir"`
	NextGen     int               `json:"next_gen"`
	SpawnSeq    int64             `json:"spawn_seq"`
	Generations []handoverGen     `json:"generations"`
	Files       map[string]int    `json:"files,omitempty"`
	State       []byte            `json:"state,omitempty"`
	Extra       map[string]string `json:"extra,omitempty"` // room for later versions
}

type handoverSocket struct {
	FD        int    `json:"fd"`
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	NoRescue  bool   `json:"no_rescue,omitempty"`
	KeepNagle bool   `json:"keep_nagle,omitempty"`
}

type handoverGen struct {
	ID      int            `json:"id"`
	Spec    GenerationSpec `json:"spec"`
	Dir     string         `json:"dir"` // resolved
	Created time.Time      `json:"created"`
	Slots   []handoverSlot `json:"slots"`
}

type handoverSlot struct {
	ID          int           `json:"id"`
	State       string        `json:"state"`
	Restarts    int           `json:"restarts"`
	LastExit    string        `json:"last_exit,omitempty"`
	Consecutive int           `json:"consecutive"`
	Backoff     time.Duration `json:"backoff,omitempty"`
	Proc        *handoverProc `json:"proc,omitempty"` // nil: no process running
}

type handoverProc struct {
	PID        int       `json:"pid"`
	Started    time.Time `json:"started"`
	ReadyAt    time.Time `json:"ready_at"` // zero: not ready
	ReadyHow   string    `json:"ready_how,omitempty"`
	Status     string    `json:"status,omitempty"`
	Lines      []string  `json:"lines,omitempty"`
	NotifyFD   int       `json:"notify_fd"`
	NotifyPath string    `json:"notify_path"`
	StdoutFD   int       `json:"stdout_fd"`
	StderrFD   int       `json:"stderr_fd"`
}

// inherited is what package init found in an upgraded process.
var inherited struct {
	mu       sync.Mutex
	upgraded bool
	taken    map[string]bool // parts handed out: "sockets", "master", "files"
	doc      *handover
	err      error
}

func init() {
	v, ok := os.LookupEnv(upgradeEnv)
	if !ok {
		return
	}
	os.Unsetenv(upgradeEnv)
	// Everything this program inherited from the one it replaced (sockets,
	// pipes, the watchdog's pipe) was opened without close-on-exec for the
	// execve; give it back before anything can start a child that would
	// hold it open.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	inherited.upgraded = true
	inherited.doc, inherited.err = readHandover(v)
}

func readHandover(v string) (*handover, error) {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a file descriptor", upgradeEnv, v)
	}
	f := os.NewFile(uintptr(fd), "handover")
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("read handover: %w", err)
	}
	var h handover
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("read handover: %w", err)
	}
	if h.Version != handoverVersion {
		return nil, fmt.Errorf("read handover: version %d, want %d", h.Version, handoverVersion)
	}
	return &h, nil
}

// Upgraded reports whether this process was started by Master.Upgrade; if
// so, call Resume instead of OpenSockets and NewMaster.
func Upgraded() bool { return inherited.upgraded }

// Handover is what Resume gives the upgraded program.
type Handover struct {
	Master  *Master
	Sockets *Sockets
	Files   map[string]*os.File // the extraFiles given to Upgrade, by name
	State   []byte              // the extraState given to Upgrade
}

// Upgrade replaces the running program with binary, in place: execve(2)
// from the spawner thread, so the pid stays (a supervisor such as systemd
// keeps tracking it) and every worker keeps its parent thread, process and
// pid. The listening sockets, the watchdog's pipe, each running worker's
// output pipes and notify socket, and extraFiles stay open across the
// execve; their numbers, the serving generation (id, release, directories,
// workers with pid, start time, readiness, restarts, backoff, last output
// lines) and extraState go to the new program in a handover document. The
// new program must call RunShimIfRequested and RunMain in main, and, when
// Upgraded reports true, ResumeSockets and ResumeMaster instead of
// OpenSockets and NewMaster (or Resume for both) and InheritedFiles.
//
// args is the new program's argv, args[0] included, as syscall.Exec takes
// it; the environment is this program's. binary is looked up in PATH when
// it has no slash.
//
// Before anything is touched, binary is run once as a probe (the shim
// answers with the handover version it speaks): a binary that is missing,
// not executable, crashes, is not built with this package or speaks another
// version is refused with ErrIncompatible. Then spawning and reaping are
// held, the output and notify readers paused, and execve called. Upgrade
// returns only on failure, and then everything resumes as it was: the
// workers were never signalled and the master keeps running unchanged.
//
// It returns ErrBusy while a Reload runs (and a Reload during an Upgrade
// gets ErrBusy), ErrClosed after Shutdown, and ErrUpgradeUnsupported when
// this Master was itself resumed without RunMain (its adopted workers are
// children of the main thread, its later ones of another: one execve cannot
// keep both). Only this Master's workers are handed over: use one Master per
// process. ctx bounds the probe.
//
// Once execve succeeded, the new program owns everything: output a worker
// wrote in the last instant before it (a line not yet ended) may be logged
// in two pieces. If the new program dies before Resume, or Resume fails and
// it exits, the watchdog (end of its pipe) and Pdeathsig kill every worker:
// no orphan ever holds the port; a supervisor restarts the agent, which
// starts a generation afresh.
func (m *Master) Upgrade(ctx context.Context, binary string, args []string, extraFiles map[string]*os.File, extraState []byte) error {
	if !m.busy.CompareAndSwap(false, true) {
		return fmt.Errorf("upgrade: %w", ErrBusy)
	}
	defer m.busy.Store(false)
	m.upMu.Lock()
	defer m.upMu.Unlock()
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return fmt.Errorf("upgrade: %w", ErrClosed)
	}
	if m.resumed && !m.spawner.main {
		return fmt.Errorf("upgrade: %w: this program was resumed without cluster.RunMain", ErrUpgradeUnsupported)
	}
	path := binary
	if !strings.Contains(binary, "/") {
		p, err := exec.LookPath(binary)
		if err != nil {
			return fmt.Errorf("upgrade to %s: %w: %v", binary, ErrIncompatible, err)
		}
		path = p
	}
	if err := probe(ctx, path); err != nil {
		return fmt.Errorf("upgrade to %s: %w", binary, err)
	}

	m.spawnMu.Lock()
	defer m.spawnMu.Unlock()
	m.reapMu.Lock()
	defer m.reapMu.Unlock()
	m.pausing.Store(true)
	m.mu.Lock()
	var live []*proc
	for _, g := range m.gens {
		for _, s := range g.slots {
			if s.proc != nil && !chanClosed(s.proc.done) {
				live = append(live, s.proc)
			}
		}
	}
	m.mu.Unlock()
	for _, p := range live {
		p.pauseIO()
	}
	defer func() { // reached only when the execve failed
		for _, p := range live {
			p.startIO()
		}
		m.pausing.Store(false)
	}()

	doc, fds, err := m.handover(extraFiles, extraState)
	if err != nil {
		return fmt.Errorf("upgrade to %s: %w", binary, err)
	}
	m.log.Info("Upgrading", "binary", path, "workers", len(live))
	err = m.spawner.do(func() error { return execHandover(path, args, doc, fds) })
	return fmt.Errorf("upgrade to %s: %w", binary, err)
}

// probe runs binary as the shim's probe.
func probe(ctx context.Context, binary string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary)
	cmd.Env = append(os.Environ(), shimEnv+"="+shimProbe)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%w: probe: %v", ErrIncompatible, err)
	}
	if got := strings.TrimSpace(string(out)); got != probeAnswer {
		if len(got) > 80 {
			got = got[:80] + "…"
		}
		return fmt.Errorf("%w: probe answered %q, want %q", ErrIncompatible, got, probeAnswer)
	}
	return nil
}

// handover builds the handover document and lists the descriptors that must
// survive the execve. Call it with spawning and reaping held and the readers
// paused.
func (m *Master) handover(extraFiles map[string]*os.File, extraState []byte) ([]byte, []int, error) {
	var k fdKeeper
	h := handover{
		Version: handoverVersion, NotifyDir: m.notifyDir,
		WatchdogPID: m.watchdog.process.Pid, SpawnSeq: m.spawnSeq.Load(), State: extraState,
		Files: map[string]int{},
	}
	if err := m.handoverSockets(&h, &k); err != nil {
		return nil, nil, err
	}
	if err := m.handoverFiles(&h, &k, extraFiles); err != nil {
		return nil, nil, err
	}
	if err := m.handoverGenerations(&h, &k); err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, nil, err
	}
	return b, k.fds, nil
}

// fdKeeper collects the descriptors a handover passes on.
type fdKeeper struct{ fds []int }

func (k *fdKeeper) keep(c syscall.Conn) (int, error) {
	fd, err := rawFD(c)
	if err == nil {
		k.fds = append(k.fds, fd)
	}
	return fd, err
}

// handoverSockets adds the listening sockets as they are now: the listen
// watch replaces sockets only with spawning held, which the caller holds
// for writing.
func (m *Master) handoverSockets(h *handover, k *fdKeeper) error {
	m.socks.mu.RLock()
	defer m.socks.mu.RUnlock()
	h.Unlinks = append([]string(nil), m.socks.unlinks...)
	for i, f := range m.socks.files {
		fd, err := k.keep(f)
		if err != nil {
			return fmt.Errorf("socket %s: %w", m.socks.names[i], err)
		}
		h.Sockets = append(h.Sockets, handoverSocket{FD: fd, Name: m.socks.names[i], Addr: m.socks.addrs[i],
			NoRescue: !m.socks.rescue[i], KeepNagle: m.socks.specs[m.socks.names[i]].KeepNagle})
	}
	return nil
}

// handoverFiles adds the watchdog's pipe and the caller's files.
func (m *Master) handoverFiles(h *handover, k *fdKeeper, extraFiles map[string]*os.File) error {
	m.watchdog.mu.Lock()
	w := m.watchdog.w
	m.watchdog.mu.Unlock()
	if w == nil {
		return fmt.Errorf("watchdog: %w", ErrClosed)
	}
	var err error
	if h.WatchdogFD, err = k.keep(w); err != nil {
		return fmt.Errorf("watchdog pipe: %w", err)
	}
	for name, f := range extraFiles {
		if f == nil {
			continue
		}
		fd, err := k.keep(f)
		if err != nil {
			return fmt.Errorf("file %s: %w", name, err)
		}
		h.Files[name] = fd
	}
	return nil
}

// handoverGenerations adds every generation, each of which must be
// serving, with its slots and live workers.
func (m *Master) handoverGenerations(h *handover, k *fdKeeper) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	h.NextGen = m.nextGen
	for _, g := range m.gens {
		if g.state != GenServing {
			return fmt.Errorf("generation %d is %s: %w", g.id, g.state, ErrBusy)
		}
		hg := handoverGen{ID: g.id, Spec: g.spec, Dir: g.dir, Created: g.created}
		for _, s := range g.slots {
			hs, err := handoverSlotOf(s, k)
			if err != nil {
				return err
			}
			hg.Slots = append(hg.Slots, hs)
		}
		h.Generations = append(h.Generations, hg)
	}
	return nil
}

// handoverSlotOf describes slot s and its worker, if alive, with the
// worker's notify socket and output pipes; m.mu is held.
func handoverSlotOf(s *slot, k *fdKeeper) (handoverSlot, error) {
	hs := handoverSlot{ID: s.id, State: s.state, Restarts: s.restarts, LastExit: s.lastExit,
		Consecutive: s.consecutive, Backoff: s.backoff}
	p := s.proc
	if p == nil || chanClosed(p.done) {
		if hs.State != WorkerBackoff {
			hs.State = WorkerExited
		}
		return hs, nil
	}
	hp := &handoverProc{PID: p.pid, Started: p.started, NotifyPath: p.notifyPath}
	p.mu.Lock()
	hp.ReadyAt, hp.ReadyHow, hp.Status, hp.Lines = p.readyAt, p.readyHow, p.status, p.lines
	p.mu.Unlock()
	for _, x := range []struct {
		c  syscall.Conn
		to *int
	}{{p.notify, &hp.NotifyFD}, {p.rOut, &hp.StdoutFD}, {p.rErr, &hp.StderrFD}} {
		var err error
		if *x.to, err = k.keep(x.c); err != nil {
			return hs, fmt.Errorf("worker %d: %w", p.pid, err)
		}
	}
	hs.Proc = hp
	return hs, nil
}

// rawFD returns c's descriptor without changing its mode (os.File.Fd would
// make it blocking, and the new program's os.NewFile could then not poll it).
func rawFD(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// execHandover runs on the spawner thread: the handover document goes into
// a memfd, fds lose close-on-exec (under ForkLock, so that no child started
// meanwhile inherits them) and binary replaces the program. It returns only
// on failure, with every descriptor as it was.
func execHandover(binary string, args []string, doc []byte, fds []int) error {
	mfd, err := unix.MemfdCreate("handoff-handover", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	defer unix.Close(mfd)
	for b := doc; len(b) > 0; {
		n, err := unix.Write(mfd, b)
		if err != nil {
			return fmt.Errorf("memfd: %w", err)
		}
		b = b[n:]
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, upgradeEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, upgradeEnv+"="+strconv.Itoa(mfd))

	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	all := append([]int{mfd}, fds...)
	cleared := 0
	defer func() {
		for _, fd := range all[:cleared] {
			unix.CloseOnExec(fd)
		}
	}()
	for _, fd := range all {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("fd %d: %w", fd, err)
		}
		cleared++
	}
	return syscall.Exec(binary, args, env)
}

// Resume adopts everything a program started by Master.Upgrade was handed:
// ResumeSockets, ResumeMaster and InheritedFiles in one call.
func Resume(cfg Config) (*Handover, error) {
	socks, err := ResumeSockets(cfg.Logger)
	if err != nil {
		return nil, err
	}
	m, err := ResumeMaster(cfg, socks)
	if err != nil {
		socks.Close()
		return nil, err
	}
	files, state := InheritedFiles()
	return &Handover{Master: m, Sockets: socks, Files: files, State: state}, nil
}

// handed returns the handover document for one part of it (sockets, master
// or files), at most once per part.
func handed(part string) (*handover, error) {
	inherited.mu.Lock()
	defer inherited.mu.Unlock()
	if !inherited.upgraded || inherited.taken[part] {
		return nil, ErrNotUpgraded
	}
	if inherited.taken == nil {
		inherited.taken = map[string]bool{}
	}
	inherited.taken[part] = true
	return inherited.doc, inherited.err
}

// ResumeSockets is OpenSockets for a program started by Master.Upgrade: it
// adopts the listening sockets the old program held, in the same order,
// with the same names, whatever the new program's configuration says
// (changing them takes a real restart). Close removes the unix socket files
// the first program created. A spawn's Fd call leaves the sockets' flags
// alone here too: by now the workers made the shared descriptions
// non-blocking, and os.NewFile of a non-blocking descriptor returns it as it
// is (the File is then known to the runtime's poller, which the master
// never waits on). It works once per upgraded process; otherwise
// it returns ErrNotUpgraded.
func ResumeSockets(logger *slog.Logger) (*Sockets, error) {
	h, err := handed("sockets")
	if err != nil {
		return nil, fmt.Errorf("resume sockets: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	socks := &Sockets{log: logger, inodes: map[uint64]int{}, unlinks: h.Unlinks}
	socks.specs = map[string]ListenSpec{}
	for _, hs := range h.Sockets {
		// A socket the listen watch binds anew keeps the options.
		socks.specs[hs.Name] = ListenSpec{Name: hs.Name, Address: hs.Addr, NoRescue: hs.NoRescue, KeepNagle: hs.KeepNagle}
		if err := socks.add(hs.Name, hs.Addr, os.NewFile(uintptr(hs.FD), hs.Name), !hs.NoRescue); err != nil {
			socks.Close()
			return nil, fmt.Errorf("resume sockets: %w", err)
		}
	}
	if len(socks.files) == 0 {
		return nil, fmt.Errorf("resume sockets: %w", ErrNoSockets)
	}
	return socks, nil
}

// InheritedFiles returns the extraFiles and extraState given to
// Master.Upgrade in the program this one replaced; the caller owns the
// files. It returns nil, nil in a process not started by an upgrade and on
// later calls.
func InheritedFiles() (map[string]*os.File, []byte) {
	h, err := handed("files")
	if err != nil || h == nil {
		return nil, nil
	}
	files := map[string]*os.File{}
	for name, fd := range h.Files {
		files[name] = os.NewFile(uintptr(fd), name)
	}
	return files, h.State
}

// ResumeMaster is NewMaster for a program started by Master.Upgrade, with
// socks from ResumeSockets: it adopts the watchdog and the serving
// generation the old program handed over. The workers never stopped: they
// keep their pids, readiness, restart counts and backoff; output logging,
// notify reading, readiness watching (for a worker not yet ready), reaping
// and the restart policy resume here. A worker that exited while the
// handover ran is restarted like any crashed worker.
//
// cfg becomes the config of the adopted generation (its restarts, its
// retirement) and of the next Reload (a different Workers count takes
// effect with the next generation); each adopted generation keeps its own
// GenerationSpec.Env, handed over with it.
//
// It works once per upgraded process; otherwise it returns ErrNotUpgraded.
// On any other error nothing was adopted: the caller should exit, which
// ends every worker through the watchdog and Pdeathsig.
func ResumeMaster(cfg Config, socks *Sockets) (*Master, error) {
	h, err := handed("master")
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("resume: %w", err)
	}
	if socks == nil || len(socks.files) != len(h.Sockets) {
		return nil, fmt.Errorf("resume: %w: not the sockets handed over", ErrInvalidSpec)
	}
	wd, err := os.FindProcess(h.WatchdogPID)
	if err != nil {
		return nil, fmt.Errorf("resume: watchdog %d: %w", h.WatchdogPID, err)
	}
	m := &Master{
		cfg: cfg, socks: socks, log: cfg.Logger, spawner: newSpawner(),
		watchdog:  &watchdog{w: os.NewFile(uintptr(h.WatchdogFD), "watchdog"), process: wd},
		notifyDir: h.NotifyDir, resumed: true, nextGen: h.NextGen,
		closing: make(chan struct{}), shutDone: make(chan struct{}),
	}
	m.spawnSeq.Store(h.SpawnSeq)
	m.startListenWatch()

	type start struct {
		s *slot
		p *proc
	}
	var starts []start
	workers := 0
	for _, hg := range h.Generations {
		g := &generation{
			m: m, id: hg.ID, cfg: cfg, spec: hg.Spec, dir: hg.Dir, created: hg.Created,
			promoted: make(chan struct{}), stopCh: make(chan struct{}), changed: make(chan struct{}, 1),
			state: GenServing,
		}
		close(g.promoted)
		for _, hs := range hg.Slots {
			s := &slot{g: g, id: hs.ID, state: hs.State, restarts: hs.Restarts, lastExit: hs.LastExit,
				consecutive: hs.Consecutive, backoff: hs.Backoff}
			if hs.Proc == nil && hs.State == WorkerBackoff && s.consecutive > 0 {
				s.consecutive-- // the restart below counts this crash again
			}
			if hs.Proc != nil {
				p, err := m.adoptProc(g, hs.ID, hs.Proc)
				if err != nil {
					return nil, fmt.Errorf("resume: %w", err)
				}
				s.proc = p
				workers++
			}
			g.slots = append(g.slots, s)
			starts = append(starts, start{s, s.proc})
		}
		m.gens = append(m.gens, g)
		m.serving = g
	}
	for _, st := range starts {
		if st.p != nil {
			st.p.run()
		}
		st.s.g.wg.Add(1)
		go st.s.run(st.p, nil)
	}
	m.log.Info("Resumed after upgrade", "generations", len(m.gens), "workers", workers, "sockets", socks.Addrs())
	if g := m.serving; g != nil && len(g.slots) != cfg.Workers {
		m.log.Warn("Workers differ from the config until the next reload", "gen", g.id, "running", len(g.slots), "config", cfg.Workers)
	}
	return m, nil
}

// adoptProc rebuilds a worker handed over by an upgrade; run starts its
// goroutines.
func (m *Master) adoptProc(g *generation, worker int, hp *handoverProc) (*proc, error) {
	p := &proc{
		m: m, cfg: &g.cfg, gen: g.id, worker: worker, pid: hp.PID, started: hp.Started, adopted: true,
		ready: make(chan struct{}), exited: make(chan struct{}),
		hurry: make(chan struct{}), done: make(chan struct{}),
		notifyPath: hp.NotifyPath, lines: hp.Lines, status: hp.Status,
	}
	p.log = m.log.With("gen", g.id, "worker", worker, "pid", p.pid)
	var err error
	if p.process, err = os.FindProcess(hp.PID); err != nil {
		return nil, fmt.Errorf("worker %d: %w", hp.PID, err)
	}
	nf := os.NewFile(uintptr(hp.NotifyFD), hp.NotifyPath)
	c, err := net.FileConn(nf)
	nf.Close()
	if err != nil {
		return nil, fmt.Errorf("worker %d: notify socket: %w", hp.PID, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("worker %d: notify socket is a %T", hp.PID, c)
	}
	p.notify = uc
	p.rOut = os.NewFile(uintptr(hp.StdoutFD), "stdout")
	p.rErr = os.NewFile(uintptr(hp.StderrFD), "stderr")
	if !hp.ReadyAt.IsZero() {
		p.adoptedReady = true
		p.markReady(hp.ReadyHow)
		p.readyAt = hp.ReadyAt
	}
	return p, nil
}
