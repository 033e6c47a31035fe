package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// procInfo is what the bench reads from /proc/<pid>/stat.
type procInfo struct {
	PID, PPID int
	State     byte
	Ticks     uint64 // utime + stime
	Start     uint64 // starttime, to tell a reused pid from the process we knew
}

// readProc parses /proc/<pid>/stat. The command name may hold spaces and
// parentheses, so fields are counted from the last ')'.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(n int) uint64 { v, _ := strconv.ParseUint(f[n-3], 10, 64); return v }
	return procInfo{
		PID:   pid,
		PPID:  int(num(4)),
		State: f[0][0],
		Ticks: num(14) + num(15),
		Start: num(22),
	}, nil
}

// alive reports whether p still runs: same pid, same start time, not a zombie.
func alive(p procInfo) bool {
	q, err := readProc(p.PID)
	return err == nil && q.Start == p.Start && q.State != 'Z' && q.State != 'X'
}

// descendants lists every live descendant of pid (not pid itself).
func descendants(pid int) []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]procInfo{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(n)
		if err != nil || p.State == 'Z' {
			continue
		}
		children[p.PPID] = append(children[p.PPID], p)
	}
	var out []procInfo
	queue := []int{pid}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for _, c := range children[cur] {
			out = append(out, c)
			queue = append(queue, c.PID)
		}
	}
	return out
}

// rssKiB reads VmRSS of pid.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("read /proc/%d/status: no VmRSS", pid)
}

// pssKiB reads the proportional set size of pid from smaps_rollup.
func pssKiB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("read /proc/%d/smaps_rollup: no Pss", pid)
}

// child is a process the bench started, leader of its own process group.
// Exactly one goroutine calls Wait; done closes when it returns.
type child struct {
	name string
	cmd  *exec.Cmd
	info procInfo
	done chan struct{}
	err  error // valid once done is closed
	log  *os.File
}

// procs owns every child the bench starts. StopAll is safe to call many
// times and from a deferred cleanup after an error or a signal.
type procs struct {
	logDir string
	logger *slog.Logger
	mu     sync.Mutex
	all    []*child
	names  map[string]int
}

type spawn struct {
	name   string
	argv   []string
	env    []string // appended to os.Environ()
	dir    string
	files  []*os.File // ExtraFiles: fd 3, 4, …
	stdout io.Writer  // nil: the log file
}

func (ps *procs) start(s spawn) (*child, error) {
	ps.mu.Lock()
	if ps.names == nil {
		ps.names = map[string]int{}
	}
	ps.names[s.name]++
	if n := ps.names[s.name]; n > 1 {
		s.name = fmt.Sprintf("%s.%d", s.name, n) // one log per process
	}
	ps.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(ps.logDir, s.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", s.name, err)
	}
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if s.stdout != nil {
		cmd.Stdout = s.stdout
	}
	cmd.ExtraFiles = s.files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s %q: %w", s.name, s.argv, err)
	}
	c := &child{name: s.name, cmd: cmd, done: make(chan struct{}), log: logf}
	c.info, _ = readProc(cmd.Process.Pid)
	ps.record(c.info)
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	ps.mu.Lock()
	ps.all = append(ps.all, c)
	ps.mu.Unlock()
	ps.logger.Debug("Started", "name", s.name, "pid", cmd.Process.Pid)
	return c, nil
}

// run starts s and waits for it, up to timeout or the end of ctx (then it
// is stopped); the error carries the tail of its output.
func (ps *procs) run(ctx context.Context, s spawn, timeout time.Duration) error {
	c, err := ps.start(s)
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		ps.stop(c, time.Second)
		return fmt.Errorf("%s: %w after %v: %s", s.name, errTimeout, timeout, tail(c.logPath(ps), 5))
	case <-ctx.Done():
		ps.stop(c, time.Second)
		return fmt.Errorf("%s: %w", s.name, ctx.Err())
	}
	if c.err != nil {
		return fmt.Errorf("%s: %w: %s", s.name, c.err, tail(c.logPath(ps), 5))
	}
	return nil
}

// output runs s and returns its standard output.
func (ps *procs) output(ctx context.Context, s spawn, timeout time.Duration) ([]byte, error) {
	var buf bytes.Buffer
	s.stdout = &buf
	err := ps.run(ctx, s, timeout)
	return buf.Bytes(), err
}

var errTimeout = errors.New("timed out")

// record appends "pid starttime" to logDir/children.pids, so that a wrapper
// (scripts/bench.sh) can end the process groups even if the bench itself is
// killed before its own cleanup runs.
func (ps *procs) record(p procInfo) {
	f, err := os.OpenFile(filepath.Join(ps.logDir, "children.pids"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%d %d\n", p.PID, p.Start)
	f.Close()
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) logPath(ps *procs) string { return filepath.Join(ps.logDir, c.name+".log") }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop ends c and everything it started: SIGTERM to its process group, then
// after grace SIGKILL to the group and to every descendant seen before (by
// pid and start time, so a reused pid is never hit), and waits for the reap.
func (ps *procs) stop(c *child, grace time.Duration) {
	if c.exited() {
		ps.killLeftovers(descendantsOf(c))
		return
	}
	desc := descendantsOf(c)
	syscall.Kill(-c.pid(), syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		desc = append(desc, descendantsOf(c)...)
		syscall.Kill(-c.pid(), syscall.SIGKILL)
		<-c.done
	}
	ps.killLeftovers(desc)
}

func descendantsOf(c *child) []procInfo {
	if c.exited() {
		return nil
	}
	return descendants(c.pid())
}

// killLeftovers SIGKILLs the processes of list that still run, after a short
// wait for them to exit on their own (workers leave when their parent does).
func (ps *procs) killLeftovers(list []procInfo) {
	deadline := time.Now().Add(2 * time.Second)
	for _, p := range list {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			ps.logger.Warn("Killing leftover process", "pid", p.PID)
			syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
}

// stopAll stops every child still running, newest first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	all := append([]*child(nil), ps.all...)
	ps.mu.Unlock()
	for i := len(all) - 1; i >= 0; i-- {
		ps.stop(all[i], 5*time.Second)
	}
}

// tail returns the last n lines of a file, joined with " | ".
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, _ := f.Stat()
	if st != nil && st.Size() > 8192 {
		f.Seek(-8192, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
