package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
)

// TestE2E_permissionRefusal runs clients as other uids (setpriv): the
// filesystem refuses a user outside the socket's group (exit 3), SO_PEERCRED
// refuses a user who can reach the socket but is not allowed (exit 3, one
// line, logged), and allow_uids lets one in.
func TestE2E_permissionRefusal(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root to run clients as other uids")
	}
	setpriv := proctest.LookPath(t, "setpriv")
	s := newSetup(t, "\n[control]\nallow_uids = [65533]\n")
	v1 := s.art.app(t, "v1", nil)
	p := s.start(nil)
	// Make the socket's directory reachable for other users; the socket
	// itself stays 0660 root:root.
	for _, d := range []string{filepath.Dir(s.dir), s.dir, s.root, filepath.Dir(s.sock)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	as := func(uid, gid int, args ...string) cliResult {
		prefix := []string{setpriv, "--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups"}
		return cliAs(t, nil, prefix, append([]string{args[0], "--socket", s.sock}, args[1:]...)...)
	}

	if r := as(65534, 65534, "status"); r.code != 3 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("outside the socket's group: want exit 3 permission denied, got %v", r)
	}
	r := as(65534, 0, "deploy", "--id", "v1", v1)
	if r.code != 3 || !strings.Contains(r.stderr, "refused: uid 65534 (gid 0) may not use "+s.sock) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("not allowed: want exit 3 and one refusal line, got %v", r)
	}
	if !strings.Contains(p.log(), `msg="Refused control connection" uid=65534 gid=0`) {
		t.Errorf("refusal not logged:\n%s", p.log())
	}
	if st := s.status(); st.Current != "" {
		t.Errorf("a refused deploy changed current to %q", st.Current)
	}
	if r := as(65533, 0, "status"); r.code != 0 || !strings.Contains(r.stdout, "current") {
		t.Errorf("allow_uids member: want exit 0, got %v", r)
	}
}

// TestE2E_socketActivation: systemd-socket-activate binds the port, starts
// the agent on the first connection and hands it the socket by name; that
// first connection waits in the queue until the first deploy serves it.
func TestE2E_socketActivation(t *testing.T) {
	t.Parallel()
	ssa := proctest.LookPath(t, "systemd-socket-activate")
	s := newSetup(t, "")
	s.writeConfig(strings.Replace(mustRead(t, s.cfg), "address = \"127.0.0.1:0\"\n", "", 1))
	v1 := s.art.app(t, "v1", nil)
	port := proctest.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p := s.spawn(nil, ssa, "-l", addr, "--fdname=http")

	type answer struct {
		body string
		err  error
	}
	first := make(chan answer, 1)
	// systemd-socket-activate binds before it execs; retry until it listens.
	go func() {
		c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := c.Get("http://" + addr + "/")
			if err != nil && time.Now().Before(deadline) && strings.Contains(err.Error(), "connection refused") {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			if err != nil {
				first <- answer{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			first <- answer{body: strings.TrimSpace(string(b)), err: err}
			return
		}
	}()
	s.waitUp(p)
	st := s.status()
	if len(st.Listen) != 1 || !strings.Contains(st.Listen[0], strconv.Itoa(port)) {
		t.Errorf("the agent did not adopt the activated socket: listen %v", st.Listen)
	}
	select {
	case a := <-first:
		t.Fatalf("the first request was answered before any deploy: %+v", a)
	default:
	}
	s.mustDo("deploy", "--id", "v1", v1)
	select {
	case a := <-first:
		if a.err != nil || a.body != "hello from v1" {
			t.Errorf("the queued first request got %q, %v", a.body, a.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the queued first request was never answered")
	}
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Errorf("GET: %q", got)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM\n%s", code, p.log())
	}
}

// TestE2E_goWorkerNotify deploys the Go example (examples/go) with
// readiness mode "notify": ready means READY=1 on the worker's
// NOTIFY_SOCKET. A deploy and a rollback under load lose no request.
func TestE2E_goWorkerNotify(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "server")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "../examples/go")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/go: %v\n%s", err, out)
	}
	s := newSetup(t, "")
	cfg := mustRead(t, s.cfg)
	cfg = strings.Replace(cfg, `command = ["node", "server.js"]`, `command = ["./server"]`, 1)
	cfg = strings.Replace(cfg, "[readiness]\n", "[readiness]\nmode = \"notify\"\n", 1)
	s.writeConfig(cfg)
	// Local directories this time (compressing a Go binary under the race
	// detector takes seconds).
	release := func(name string) string {
		dir := filepath.Join(s.dir, "build-"+name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(bin, filepath.Join(dir, "server")); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "VERSION"), []byte(name), 0o644)
		return dir
	}
	g1, g2 := release("g1"), release("g2")

	s.start(nil)
	s.mustDo("deploy", "--id", "g1", g1)
	addr := s.appAddr()
	if got := proctest.Get(t, addr); got != "hello from g1" {
		t.Fatalf("g1 serves %q", got)
	}
	load := startLoad(t, addr)
	proctest.WaitFor(t, 10*time.Second, "load to get answers", func() bool { return load.Snapshot().OK > 20 })
	snap := checkLoad(t, "before deploy", load, nil)
	if r := s.mustDo("deploy", "--id", "g2", g2); !strings.Contains(r.stdout, "readiness notify") {
		t.Errorf("deploy output: %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from g2" {
		t.Errorf("after deploy g2: %q", got)
	}
	snap = checkLoad(t, "deploy g2", load, snap)
	s.mustDo("rollback")
	if got := proctest.Get(t, addr); got != "hello from g1" {
		t.Errorf("after rollback: %q", got)
	}
	checkLoad(t, "rollback to g1", load, snap)
	if final := load.Stop(); final.FailedTotal != 0 {
		t.Errorf("failed requests: %s", final)
	}
}
