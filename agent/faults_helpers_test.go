package main

// Helpers for the fault, hostile-input and soak tests. They build on
// e2e_helpers_test.go (agentBin, setup, artifacts, cli, waitFor).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/loadgen"

	"github.com/handoff/handoff/internal/proctest"
)

// gatedApp is the example Node server behind a preamble: it listens only
// once listenGate exists, and exits (on its stop signal or otherwise) only
// once exitGate exists. An empty gate does not wait. extra is JS run first.
func gatedApp(t *testing.T, listenGate, exitGate, extra string) string {
	t.Helper()
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	pre := `'use strict';
const __fs = require('node:fs');
const __net = require('node:net');
function __gate(p, fn) { if (!p || __fs.existsSync(p)) return fn(); setTimeout(() => __gate(p, fn), 20); }
const __listen = __net.Server.prototype.listen;
__net.Server.prototype.listen = function (...a) { __gate(` + q(listenGate) + `, () => __listen.apply(this, a)); return this; };
const __exit = process.exit;
process.exit = (c) => __gate(` + q(exitGate) + `, () => __exit(c));
` + extra + "\n"
	return pre + strings.Replace(nodeServer(t), "'use strict';", "", 1)
}

// appFiles is a release of the example app with server.js replaced.
func appFiles(t *testing.T, server string, extra map[string]file) map[string]file {
	files := map[string]file{"server.js": {body: server}, "package.json": {body: `{"name":"e2e"}`}}
	for k, v := range extra {
		files[k] = v
	}
	return files
}

// deployRun is an `agent deploy --json` in the background whose events can
// be waited for.
type deployRun struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	msgs  []control.Message
	wake  chan struct{}
	errMu sync.Mutex
	errb  bytes.Buffer
	done  chan struct{}
}

// startCLI runs `agent CMD -c cfg --json ARGS…` and collects its JSON lines.
func (s *setup) startCLI(cmd string, args ...string) *deployRun {
	s.t.Helper()
	d := &deployRun{t: s.t, wake: make(chan struct{}, 1), done: make(chan struct{})}
	d.cmd = exec.Command(agentBin, append([]string{cmd, "-c", s.cfg, "--json"}, args...)...)
	out, err := d.cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	d.cmd.Stderr = lockedBuf{&d.errMu, &d.errb}
	if err := d.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var m control.Message
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = control.Message{Type: "garbage", Message: sc.Text()}
			}
			d.mu.Lock()
			d.msgs = append(d.msgs, m)
			d.mu.Unlock()
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
		d.cmd.Wait()
	}()
	s.t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
	})
	return d
}

// waitEvent waits for a message matching pred and returns it.
func (d *deployRun) waitEvent(what string, timeout time.Duration, pred func(control.Message) bool) control.Message {
	d.t.Helper()
	deadline := time.After(timeout)
	seen := 0
	for {
		d.mu.Lock()
		msgs := d.msgs[seen:]
		seen = len(d.msgs)
		d.mu.Unlock()
		for _, m := range msgs {
			if pred(m) {
				return m
			}
		}
		select {
		case <-d.wake:
		case <-d.done:
			d.mu.Lock()
			n := len(d.msgs)
			d.mu.Unlock()
			if n == seen {
				d.t.Fatalf("deploy ended before %s: %s", what, d.transcript())
			}
		case <-deadline:
			d.t.Fatalf("no %s within %s: %s", what, timeout, d.transcript())
		}
	}
}

// result waits for the command to end and returns its last message and
// exit code.
func (d *deployRun) result(timeout time.Duration) (control.Message, int) {
	d.t.Helper()
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("%v did not end within %s: %s", d.cmd.Args, timeout, d.transcript())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var last control.Message
	if len(d.msgs) > 0 {
		last = d.msgs[len(d.msgs)-1]
	}
	return last, d.cmd.ProcessState.ExitCode()
}

func (d *deployRun) transcript() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for _, m := range d.msgs {
		fmt.Fprintf(&b, "\n  %s %s %s %s%s", m.Type, m.Stage, m.Kind, m.Message, m.Error)
	}
	d.errMu.Lock()
	b.WriteString("\n  stderr: " + d.errb.String())
	d.errMu.Unlock()
	return b.String()
}

// procStat is what the fault tests read of a process in /proc.
type procStat struct {
	utime, stime int64 // clock ticks
	threads      int
	rssKB        int64
	fds          int
}

func readProc(t *testing.T, pid int) procStat {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	f := strings.Fields(string(b)[bytes.LastIndexByte(b, ')')+2:])
	// f[0] is field 3 (state); utime is field 14, stime 15, threads 20.
	var ps procStat
	ps.utime, _ = strconv.ParseInt(f[11], 10, 64)
	ps.stime, _ = strconv.ParseInt(f[12], 10, 64)
	ps.threads, _ = strconv.Atoi(f[17])
	st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			ps.rssKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	fds, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	ps.fds = len(fds)
	return ps
}

// groupMembers lists the live processes in process group pgid.
func groupMembers(pgid int) []int {
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b)[bytes.LastIndexByte(b, ')')+2:])
		if len(f) > 2 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// workerPIDs lists the pids of every worker in status.
func workerPIDs(st *control.StatusDoc) []int {
	var out []int
	for _, g := range st.Generations {
		for _, w := range g.Workers {
			if w.PID != 0 {
				out = append(out, w.PID)
			}
		}
	}
	return out
}

// loadOpts starts keep-alive load on addr, stopped at cleanup.
func startLoadOpts(t *testing.T, o loadgen.Options) *loadgen.Run {
	t.Helper()
	run, err := loadgen.Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Stop() })
	return run
}

// waitServed waits until load has more OK answers than now.
// loadApp starts keep-alive load on the app's address, waits until it is
// answered, and returns the address, the load and the totals at that point.
func (s *setup) loadApp() (string, *loadgen.Run, *loadgen.Result) {
	s.t.Helper()
	addr := s.appAddr()
	load := startLoad(s.t, addr)
	waitServed(s.t, load, 20)
	return addr, load, load.Snapshot()
}

func waitServed(t *testing.T, run *loadgen.Run, more int64) {
	t.Helper()
	base := run.Snapshot().OK
	proctest.WaitFor(t, 30*time.Second, fmt.Sprintf("%d more answers under load", more), func() bool { return run.Snapshot().OK >= base+more })
}

// httpGetStatus does one GET on a fresh connection and returns the status
// code and body, or the error.
func httpGetStatus(addr string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(b.String()), nil
}

// killPID sends SIGKILL to a process this test started (directly or through
// the agent).
func killPID(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
}

// rootSnapshot lists every path under root (except .agent/state.json, whose
// history grows) with its size and, for symlinks, target: what "nothing
// else changed" compares.
func rootSnapshot(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if rel == ".agent/state.json" || rel == ".agent/agent.sock" || rel == ".agent/lock" {
			return nil
		}
		line := rel + " " + fi.Mode().String()
		if fi.Mode().IsRegular() {
			line += " " + strconv.FormatInt(fi.Size(), 10)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			line += " -> " + l
		}
		lines = append(lines, line)
		return nil
	})
	return strings.Join(lines, "\n")
}

// waitSocket waits until an agent answers on the control socket.
func (s *setup) waitSocket() {
	s.t.Helper()
	proctest.WaitFor(s.t, 30*time.Second, "the agent's control socket", func() bool {
		res, err := control.Call(s.sock, control.Request{Op: control.OpPing}, nil)
		return err == nil && res.Code == control.CodeOK
	})
}

// addFast publishes files as NAME.tar.gz and returns its URL with a
// checksum; add builds the archive the same way now (name order, the
// fastest gzip level).
func (a *artifacts) addFast(t *testing.T, name string, files map[string]file) string {
	t.Helper()
	return a.add(t, name, files)
}
