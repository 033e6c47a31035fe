//go:build linux

package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const lastLinesKept = 20

// proc is one started worker process: the shim exec'ed into the command, in
// its own process group (pgid == pid), with Pdeathsig SIGKILL. Exactly one
// goroutine (waiter) waits for it; done closes once it is reaped, its group
// is gone and its output is drained.
type proc struct {
	m            *Master
	cfg          *Config // its generation's; read only
	gen          int
	worker       int
	pid          int
	cmd          *exec.Cmd   // nil for a worker adopted after an upgrade
	process      *os.Process // the one waited for
	started      time.Time
	log          *slog.Logger
	adopted      bool // handed over by an upgrade
	adoptedReady bool // and ready before it

	ready     chan struct{} // closed when ready
	readyOnce sync.Once
	httpOnce  sync.Once     // starts the HTTP check (httpcheck.go)
	exited    chan struct{} // closed when the leader exited (not yet reaped)
	hurry     chan struct{} // closed to cut a drain short
	hurryOnce sync.Once
	done      chan struct{} // closed after reap, group kill and output drain

	notify     *net.UnixConn
	notifyPath string
	rOut       *os.File
	rErr       *os.File
	bg         sync.WaitGroup // output and notify readers, readiness watcher
	io         sync.WaitGroup // output and notify readers only: an upgrade pauses them

	mu       sync.Mutex
	readyAt  time.Time
	readyHow string
	stopping bool
	deadline time.Time
	status   string // last STATUS= from sd_notify
	// The HTTP check (httpcheck.go): how the worker got ready by its mode,
	// probes (its own and those a sibling's checker credited it with), its
	// own probes another worker accepted, the credited ones, the last
	// failure.
	modeHow             string
	probes, probesOther int
	probesCredited      int
	httpVerdict         string
	lines               []string
	state               *os.ProcessState
	exitedAt            time.Time
}

// startProc starts worker `worker` of generation g.
func (m *Master) startProc(g *generation, worker int) (*proc, error) {
	p := &proc{
		m: m, cfg: &g.cfg, gen: g.id, worker: worker,
		ready: make(chan struct{}), exited: make(chan struct{}),
		hurry: make(chan struct{}), done: make(chan struct{}),
	}
	notifyPath := filepath.Join(m.notifyDir, fmt.Sprintf("g%d-w%d-%d.sock", g.id, worker, m.spawnSeq.Add(1)))
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("start worker %d: notify socket: %w", worker, err)
	}
	p.notify, p.notifyPath = nc, notifyPath
	rOut, wOut, err := os.Pipe()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("start worker %d: %w", worker, err)
	}
	rErr, wErr, err := os.Pipe()
	if err != nil {
		nc.Close()
		rOut.Close()
		wOut.Close()
		return nil, fmt.Errorf("start worker %d: %w", worker, err)
	}
	p.rOut, p.rErr = rOut, rErr
	p.cmd = &exec.Cmd{
		Path:   m.cfg.ShimPath,
		Args:   append([]string{m.cfg.ShimPath}, g.cfg.Command...),
		Dir:    g.dir,
		Env:    m.workerEnv(g, worker, notifyPath),
		Stdout: wOut,
		Stderr: wErr,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	m.socks.mu.RLock() // the fds in ExtraFiles stay open through the fork
	p.cmd.ExtraFiles = m.socks.files
	err = m.spawner.start(p.cmd)
	m.socks.mu.RUnlock()
	wOut.Close()
	wErr.Close()
	if err != nil {
		nc.Close()
		os.Remove(notifyPath)
		rOut.Close()
		rErr.Close()
		return nil, fmt.Errorf("start worker %d: %w", worker, err)
	}
	p.process = p.cmd.Process
	p.pid = p.process.Pid
	p.started = time.Now()
	p.log = m.log.With("gen", g.id, "worker", worker, "pid", p.pid)
	m.watchdog.add(p.pid)
	p.run()
	return p, nil
}

// run starts the goroutines of a started or adopted process: its readers,
// its readiness watcher while it is not ready, and the one that waits for it.
func (p *proc) run() {
	p.startIO()
	if p.cfg.Readiness.Mode != ModeNotify && !p.isReady() {
		p.bg.Add(1)
		go p.watchReadiness()
	}
	go p.wait()
}

// startIO starts the output and notify readers.
func (p *proc) startIO() {
	p.bg.Add(3)
	p.io.Add(3)
	go func() { defer p.io.Done(); p.readOutput(p.rOut, "stdout") }()
	go func() { defer p.io.Done(); p.readOutput(p.rErr, "stderr") }()
	go func() { defer p.io.Done(); p.readNotify() }()
}

// pauseIO makes the readers return at once, their files left open, and
// waits for them. Call it with Master.pausing set; startIO resumes them.
func (p *proc) pauseIO() {
	now := time.Now()
	p.rOut.SetReadDeadline(now)
	p.rErr.SetReadDeadline(now)
	p.notify.SetReadDeadline(now)
	p.io.Wait()
	p.rOut.SetReadDeadline(time.Time{})
	p.rErr.SetReadDeadline(time.Time{})
	p.notify.SetReadDeadline(time.Time{})
}

// paused reports whether a reader's error is the deadline of pauseIO.
func (p *proc) paused(err error) bool {
	return p.m.pausing.Load() && errors.Is(err, os.ErrDeadlineExceeded)
}

// workerEnv is the master's environment without the variables the master
// owns, then the generation's Config.Env, then its GenerationSpec.Env, then
// the worker protocol variables.
func (m *Master) workerEnv(g *generation, worker int, notifyPath string) []string {
	owned := map[string]bool{
		"LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true, "NOTIFY_SOCKET": true,
		"DEPLOY_RELEASE_ID": true, "DEPLOY_RELEASE_DIR": true, "DEPLOY_ROOT": true,
		"WORKER_ID": true, shimEnv: true, upgradeEnv: true,
	}
	var env []string
	idx := map[string]int{}
	add := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if owned[k] {
			return
		}
		if i, ok := idx[k]; ok {
			env[i] = kv
			return
		}
		idx[k] = len(env)
		env = append(env, kv)
	}
	for _, kv := range os.Environ() {
		add(kv)
	}
	for _, kv := range g.cfg.Env {
		add(kv)
	}
	for _, kv := range g.spec.Env {
		add(kv)
	}
	return append(env,
		"LISTEN_FDS="+strconv.Itoa(len(m.socks.files)),
		"LISTEN_FDNAMES="+strings.Join(m.socks.names, ":"),
		"NOTIFY_SOCKET="+notifyPath,
		"DEPLOY_RELEASE_ID="+g.spec.ReleaseID,
		"DEPLOY_RELEASE_DIR="+g.dir,
		"DEPLOY_ROOT="+g.spec.Root,
		"WORKER_ID="+strconv.Itoa(worker),
		shimEnv+"="+shimExec,
	)
}

func (p *proc) readOutput(r *os.File, stream string) {
	defer p.bg.Done()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			for err == bufio.ErrBufferFull { // overlong line: keep its start
				_, err = br.ReadSlice('\n')
			}
			s := strings.TrimRight(string(line), "\r\n")
			p.log.Info("Worker output", "stream", stream, "line", s)
			p.mu.Lock()
			p.lines = append(p.lines, s)
			if len(p.lines) > lastLinesKept {
				p.lines = p.lines[len(p.lines)-lastLinesKept:]
			}
			p.mu.Unlock()
		}
		if err != nil {
			return // end of file, or paused by an upgrade (pauseIO)
		}
	}
}

// wait is the one goroutine that waits for the process. From the leader's
// exit to done it holds Master.reapMu for reading, so that an Upgrade sees
// every worker either alive and not reaped, or done.
func (p *proc) wait() {
	for {
		var si unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.pid, &si, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil || !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	p.m.reapMu.RLock()
	defer p.m.reapMu.RUnlock()
	close(p.exited)
	// The leader is a zombie now, so its pid (the group id) cannot be reused
	// until we reap it: settle the rest of its process group first.
	p.settleGroup()
	var st *os.ProcessState
	var err error
	if p.cmd != nil {
		err = p.cmd.Wait()
		st = p.cmd.ProcessState
	} else {
		st, err = p.process.Wait()
	}
	p.m.watchdog.remove(p.pid)
	p.mu.Lock()
	p.state = st
	p.exitedAt = time.Now()
	p.mu.Unlock()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		p.log.Warn("Wait failed", "err", err)
	}
	p.notify.Close()
	// Output readers end at EOF once the whole group is gone; a descendant
	// that left the group may hold the pipes, so bound the wait.
	drained := make(chan struct{})
	go func() { p.bg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Second):
		p.rOut.Close()
		p.rErr.Close()
		<-drained
	}
	p.rOut.Close()
	p.rErr.Close()
	close(p.done)
}

// settleGroup runs after the leader exited. A retiring worker's group may
// finish its drain until the deadline; otherwise what is left of the group
// is killed at once (a crashed worker leaves no process behind).
func (p *proc) settleGroup() {
	for {
		p.mu.Lock()
		stopping, deadline := p.stopping, p.deadline
		p.mu.Unlock()
		if !stopping || !time.Now().Before(deadline) {
			break
		}
		// A cheap scan of newer pids while members remain; a full one to
		// be sure the group is empty.
		if len(groupMembers(p.pid, true)) == 0 && len(groupMembers(p.pid, false)) == 0 {
			return
		}
		select {
		case <-time.After(min(50*time.Millisecond, time.Until(deadline))):
		case <-p.hurry:
		}
	}
	if len(groupMembers(p.pid, false)) > 0 {
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// stop sends sig to the process group and waits until the worker is reaped,
// sending SIGKILL to the group at deadline.
func (p *proc) stop(sig syscall.Signal, deadline time.Time) {
	p.signalStop(sig, deadline, nil)
	p.awaitStop()
}

// signalStop marks the worker stopping with deadline (the first deadline
// given stays) and sends sig to its process group unless it has exited.
func (p *proc) signalStop(sig syscall.Signal, deadline time.Time, send stopSignaller) {
	p.mu.Lock()
	if !p.stopping {
		p.stopping = true
		p.deadline = deadline
	}
	p.mu.Unlock()
	select {
	case <-p.exited:
	default:
		if send != nil {
			send.send(p.pid, sig)
		} else {
			syscall.Kill(-p.pid, sig)
		}
	}
}

// stopSignaller sends a generation's stop signal in place of a plain kill
// of each worker's process group (connection rescue, which has the groups
// frozen: rescue.go).
type stopSignaller interface {
	send(pgid int, sig syscall.Signal) // to the process group of one worker
	sent()                             // every worker was sent the signal
}

// awaitStop waits until the worker is reaped, sending SIGKILL to the group
// at its deadline.
func (p *proc) awaitStop() {
	p.mu.Lock()
	deadline := p.deadline
	p.mu.Unlock()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.kill()
	case <-p.hurry:
		p.kill()
	}
	<-p.done
}

// kill sends SIGKILL to the group now and cuts any drain short.
func (p *proc) kill() {
	p.mu.Lock()
	p.stopping = true
	p.deadline = time.Now()
	p.mu.Unlock()
	p.hurryOnce.Do(func() { close(p.hurry) })
	select {
	case <-p.exited:
	default:
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// exitStatus describes how the process ended, "running" if it has not.
func (p *proc) exitStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == nil {
		if !p.exitedAt.IsZero() {
			return "unknown (could not be waited for)"
		}
		return "running"
	}
	return p.state.String()
}

// countExit adds the ended process to the counter of e it belongs in.
func (p *proc) countExit(e *ExitStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopping:
		e.Stopped++
	case p.state != nil && p.state.Sys().(syscall.WaitStatus).Signaled():
		e.Killed++
	default:
		e.Exited++
	}
}

func (p *proc) lastLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}
