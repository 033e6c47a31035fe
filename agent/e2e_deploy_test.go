package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/loadgen"

	"github.com/handoff/handoff/internal/proctest"
)

// notifyListener is a real sd_notify socket, as systemd gives a Type=notify
// service.
type notifyListener struct {
	path string
	msgs chan string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{path: path, msgs: make(chan string, 256)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			select {
			case n.msgs <- string(buf[:k]):
			default:
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return n
}

// expect waits for a datagram containing want, returning it.
func (n *notifyListener) expect(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			if strings.Contains(m, want) {
				return m
			}
		case <-timeout:
			t.Fatalf("no sd_notify %q within 30s", want)
		}
	}
}

func startLoad(t *testing.T, addr string) *loadgen.Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	run, err := loadgen.Start(ctx, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Stop() })
	return run
}

// checkLoad fails the test when any request failed since the previous
// snapshot, and returns the new snapshot.
func checkLoad(t *testing.T, phase string, run *loadgen.Run, prev *loadgen.Result) *loadgen.Result {
	t.Helper()
	cur := run.Snapshot()
	var before, ok int64
	if prev != nil {
		before, ok = prev.FailedTotal, prev.OK
	}
	if cur.FailedTotal != before {
		t.Errorf("%s: %d failed requests under load: %s", phase, cur.FailedTotal-before, cur)
	}
	if cur.OK <= ok {
		t.Errorf("%s: no request served under load: %s", phase, cur)
	}
	t.Logf("%s: %s", phase, cur)
	return cur
}

// TestE2E_deployRollbackFailUnderLoad drives the whole life of an app: the
// agent waits for its first deploy, then a deploy, a failed deploy, a
// rollback, a reload and SIGHUP happen under continuous keep-alive load
// with no failed request; sd_notify, status, history and SIGTERM are
// checked along the way.
func TestE2E_deployRollbackFailUnderLoad(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	n := listenNotify(t)
	v0 := s.art.add(t, "v0", map[string]file{"server.js": {body: "console.error('cannot start: missing DATABASE_URL');\nprocess.exit(3);\n"}})
	v1 := s.art.app(t, "v1", nil)
	v2 := s.art.app(t, "v2", nil)
	v3 := s.art.broken(t, "v3")

	p := s.start([]string{"NOTIFY_SOCKET=" + n.path})
	if m := n.expect(t, "READY=1"); !strings.Contains(m, "STATUS=waiting for the first deploy") {
		t.Errorf("first READY=1 without the waiting status: %q", m)
	}
	st := s.status()
	if st.Current != "" || len(st.Generations) != 0 {
		t.Fatalf("fresh agent status: %+v", st)
	}
	if r := s.do("rollback"); r.code != 1 || !strings.Contains(r.stderr, "no rollback target") {
		t.Errorf("rollback with nothing deployed: %v", r)
	}
	if r := s.do("reload"); r.code != 1 || !strings.Contains(r.stderr, "no current release") {
		t.Errorf("reload with nothing deployed: %v", r)
	}

	// A first deploy that fails (workers exit at once) leaves no current.
	r := s.do("deploy", "--id", "v0", v0)
	if r.code != 1 || !strings.Contains(r.stderr, "worker 0 (pid") || !strings.Contains(r.stderr, "nothing changed: current is (none)") {
		t.Errorf("failed first deploy: %v", r)
	}
	if _, err := os.Lstat(filepath.Join(s.root, "current")); !os.IsNotExist(err) {
		t.Errorf("a failed first deploy left current: %v", err)
	}

	r = s.mustDo("deploy", "--id", "v1", v1)
	if !strings.Contains(r.stdout, "deployed v1 in") || !strings.Contains(r.stdout, "fetch") || !strings.Contains(r.stdout, "reload") {
		t.Errorf("deploy output: %v", r)
	}
	n.expect(t, "RELOADING=1\nSTATUS=deploy v1")
	if m := n.expect(t, "STATUS=serving v1"); !strings.Contains(m, "READY=1\nSTATUS=serving v1 with 2/2 workers ready") {
		t.Errorf("READY=1 after deploy: %q", m)
	}
	if link, err := os.Readlink(filepath.Join(s.root, "current")); err != nil || link != "releases/v1" {
		t.Errorf("current -> %q, %v; want releases/v1", link, err)
	}
	addr := s.appAddr()
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Fatalf("v1 serves %q", got)
	}

	load := startLoad(t, addr)
	proctest.WaitFor(t, 10*time.Second, "load to get answers", func() bool { return load.Snapshot().OK > 20 })
	snap := checkLoad(t, "before deploy", load, nil)

	// Deploy v2 with the JSON event stream.
	r = s.mustDo("deploy", "--id", "v2", "--json", v2)
	var last control.Message
	stages := map[control.Stage]bool{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if err := json.Unmarshal([]byte(line), &last); err != nil {
			t.Fatalf("--json line %q: %v", line, err)
		}
		stages[last.Stage] = true
		if last.Type == control.TypeEvent && !control.Known(last.Stage, last.Kind) {
			t.Errorf("--json event outside control.Events: %s", line)
		}
	}
	if last.Type != "result" || last.Code != "ok" || last.ID != "v2" || last.From != "v1" {
		t.Errorf("last --json line: %+v", last)
	}
	for _, st := range []control.Stage{"fetch", "activate", "reload"} {
		if !stages[st] {
			t.Errorf("--json stream has no %q event: %s", st, r.stdout)
		}
	}
	for i := 0; i < 5; i++ { // once deploy exits 0, every new connection gets v2
		if got := proctest.Get(t, addr); got != "hello from v2" {
			t.Fatalf("after deploy v2, a new connection got %q", got)
		}
	}
	snap = checkLoad(t, "deploy v2", load, snap)

	// A release that never listens: exit 1 within timeout + a few seconds,
	// the old workers keep serving, current points back.
	start := time.Now()
	r = s.do("deploy", "--id", "v3", v3)
	if el := time.Since(start); el > 10*time.Second+10*time.Second {
		t.Errorf("failed deploy took %s", el)
	}
	if r.code != 1 || !strings.Contains(r.stderr, "deploy failed") || !strings.Contains(r.stderr, "worker 0 (pid") ||
		!strings.Contains(r.stderr, "restored: current is v2 again") {
		t.Errorf("failed deploy: %v", r)
	}
	if link, _ := os.Readlink(filepath.Join(s.root, "current")); link != "releases/v2" {
		t.Errorf("after the failed deploy current -> %q", link)
	}
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after the failed deploy a new connection got %q", got)
	}
	snap = checkLoad(t, "failed deploy v3", load, snap)

	r = s.mustDo("rollback")
	if !strings.Contains(r.stdout, "rolled back to v1") {
		t.Errorf("rollback output: %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Errorf("after rollback a new connection got %q", got)
	}
	snap = checkLoad(t, "rollback to v1", load, snap)

	r = s.mustDo("rollback", "--to", "v2")
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after rollback --to v2 a new connection got %q", got)
	}
	if r := s.do("rollback", "--to", "nope"); r.code != 1 || !strings.Contains(r.stderr, "release nope is not on disk") {
		t.Errorf("rollback to a missing release: %v", r)
	}
	s.mustDo("reload")
	p.cmd.Process.Signal(syscall.SIGHUP)
	proctest.WaitFor(t, 30*time.Second, "the SIGHUP reload in history", func() bool {
		h := s.status().LastDeploys
		n := 0
		for _, e := range h {
			if e.Op == "reload" && e.Result == "ok" {
				n++
			}
		}
		return n == 2
	})
	snap = checkLoad(t, "rollback --to, reload, SIGHUP", load, snap)
	final := load.Stop()
	if final.FailedTotal != 0 {
		t.Errorf("failed requests over the whole run: %s", final)
	}
	if final.Bodies["hello from v1"] == 0 || final.Bodies["hello from v2"] == 0 {
		t.Errorf("load did not see both releases: %v", final.Bodies)
	}

	st = s.status()
	if st.Current != "v2" || len(st.Generations) != 1 || len(st.Generations[0].Workers) != 2 {
		t.Fatalf("status: %+v", st)
	}
	var pids []int
	for _, w := range st.Generations[0].Workers {
		if w.PID == 0 || w.State != "ready" {
			t.Errorf("worker: %+v", w)
		}
		pids = append(pids, w.PID)
	}
	var results []string
	for _, e := range st.LastDeploys {
		results = append(results, e.Op+":"+e.ID+":"+e.Result)
	}
	want := "deploy:v0:failed deploy:v1:ok deploy:v2:ok deploy:v3:failed rollback:v1:ok rollback:v2:ok reload:v2:ok reload:v2:ok"
	if got := strings.Join(results, " "); got != want {
		t.Errorf("last deploys:\n got %s\nwant %s", got, want)
	}
	human := s.mustDo("status")
	for _, w := range []string{"current  v2", "GEN", "serving", "rollback", "failed"} {
		if !strings.Contains(human.stdout, w) {
			t.Errorf("status table lacks %q:\n%s", w, human.stdout)
		}
	}
	hist := s.mustDo("history")
	if !strings.Contains(hist.stdout, "v3") || !strings.Contains(hist.stdout, "failed") {
		t.Errorf("history: %s", hist.stdout)
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	n.expect(t, "STOPPING=1")
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("agent exit code after SIGTERM: %d\n%s", code, p.log())
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("worker %d outlived the agent", pid)
		}
	}
	if _, err := os.Stat(s.sock); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
	if r := s.do("status"); r.code != 3 {
		t.Errorf("status after stop: want exit 3, got %v", r)
	}
}
