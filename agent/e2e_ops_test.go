package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
)

// bgCLI is a client command running in the background.
type bgCLI struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	errb *bytes.Buffer
	done chan struct{}
}

func (s *setup) background(args ...string) *bgCLI {
	s.t.Helper()
	b := &bgCLI{out: &bytes.Buffer{}, errb: &bytes.Buffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(agentBin, args...)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.errb
	if err := b.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	s.t.Cleanup(func() { b.cmd.Process.Kill(); <-b.done })
	return b
}

func (b *bgCLI) wait(t *testing.T) cliResult {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("%v did not finish", b.cmd.Args)
	}
	return cliResult{stdout: b.out.String(), stderr: b.errb.String(), code: b.cmd.ProcessState.ExitCode()}
}

func TestE2E_busyWaitSupersedeAndHooks(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	marker := filepath.Join(s.dir, "go-on")
	envFile := filepath.Join(s.dir, "pre-activate.env")
	onFail := filepath.Join(s.dir, "on-failure.log")
	s.writeConfig(strings.Replace(strings.Replace(mustRead(t, s.cfg), "keep_releases = 3\n", "keep_releases = 3\nlinked = [\"storage\"]\n", 1), "[readiness]", `[hooks]
timeout = "30s"
pre-activate = [["sh", "-c", "test -L storage && env | grep ^DEPLOY_ | sort > `+envFile+`"]]
on-failure = [["sh", "-c", "echo \"$DEPLOY_OP $DEPLOY_RELEASE_ID $DEPLOY_PREVIOUS_ID\" >> `+onFail+`"]]

[readiness]`, 1))

	v1 := s.art.app(t, "v1", nil)
	slow := s.art.app(t, "slow", map[string]file{".deploy/hooks/pre-activate": {mode: 0o755,
		body: "#!/bin/sh\necho waiting for the marker\nwhile [ ! -e " + marker + " ]; do sleep 0.05; done\necho released\n"}})
	a := s.art.app(t, "a", nil)
	b := s.art.app(t, "b", nil)
	badHook := s.art.app(t, "bad-hook", map[string]file{".deploy/hooks/pre-activate": {mode: 0o755, body: "#!/bin/sh\necho migration failed >&2\nexit 3\n"}})
	pdFail := s.art.app(t, "pd-fail", map[string]file{".deploy/hooks/post-deploy/10-smoke": {mode: 0o755, body: "#!/bin/sh\necho smoke test failed\nexit 1\n"}})

	s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	addr := s.appAddr()
	// linked: shared/storage, linked into the release before pre-activate.
	if target, err := os.Readlink(filepath.Join(s.root, "releases", "v1", "storage")); err != nil || !strings.HasSuffix(target, "shared/storage") {
		t.Errorf("releases/v1/storage -> %q, %v; want a link to shared/storage", target, err)
	}
	if fi, err := os.Stat(filepath.Join(s.root, "shared", "storage")); err != nil || !fi.IsDir() {
		t.Errorf("shared/storage: %v", err)
	}
	env := mustRead(t, envFile)
	for _, w := range []string{"DEPLOY_OP=deploy", "DEPLOY_RELEASE_ID=v1", "DEPLOY_RELEASE_DIR=" + filepath.Join(s.root, "releases", "v1"), "DEPLOY_ROOT=" + s.root, "DEPLOY_STAGE=pre-activate", "DEPLOY_URL=http://127.0.0.1"} {
		if !strings.Contains(env, w) {
			t.Errorf("pre-activate env lacks %q:\n%s", w, env)
		}
	}

	// A deploy held in its pre-activate hook; its client goes away.
	held := s.background("deploy", "-c", s.cfg, "--id", "slow", slow)
	proctest.WaitFor(t, 30*time.Second, "deploy slow to run", func() bool {
		st := s.status()
		return st.Running != nil && st.Running.ID == "slow"
	})
	held.cmd.Process.Kill()
	<-held.done

	r := s.do("deploy", "--id", "x", a)
	if r.code != 4 || !strings.Contains(r.stderr, "busy: deploy slow (http://127.0.0.1") || !strings.Contains(r.stderr, "--wait") {
		t.Errorf("second deploy: want exit 4 naming deploy slow, got %v", r)
	}
	if r := s.do("rollback"); r.code != 4 {
		t.Errorf("rollback during a deploy: want exit 4, got %v", r)
	}
	if r := s.do("reload"); r.code != 4 {
		t.Errorf("reload during a deploy: want exit 4, got %v", r)
	}
	waitA := s.background("deploy", "-c", s.cfg, "--wait", "--id", "a", a)
	proctest.WaitFor(t, 30*time.Second, "deploy a to queue", func() bool {
		st := s.status()
		return st.Waiting != nil && st.Waiting.ID == "a"
	})
	waitB := s.background("deploy", "-c", s.cfg, "--wait", "--id", "b", b)
	ra := waitA.wait(t)
	if ra.code != 4 || !strings.Contains(ra.stderr, "superseded by deploy b") {
		t.Errorf("older waiter: want exit 4 superseded by deploy b, got %v", ra)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rb := waitB.wait(t)
	if rb.code != 0 || !strings.Contains(rb.stdout, "waiting for deploy slow") || !strings.Contains(rb.stdout, "deployed b") {
		t.Errorf("newest waiter: %v", rb)
	}
	if got := proctest.Get(t, addr); got != "hello from b" {
		t.Errorf("after the queued deploy: %q", got)
	}
	var ops []string
	for _, e := range s.status().LastDeploys {
		ops = append(ops, e.ID+":"+e.Result)
	}
	if got := strings.Join(ops, " "); got != "v1:ok slow:ok b:ok" {
		t.Errorf("history %q: the deploy whose client left must complete, the superseded one never runs", got)
	}

	// pre-activate failure: nothing changes, the release is removed.
	r = s.do("deploy", "--id", "bad-hook", badHook)
	if r.code != 1 || !strings.Contains(r.stderr, "hook pre-activate [./.deploy/hooks/pre-activate]: exit status 3") ||
		!strings.Contains(r.stdout, "| migration failed") || !strings.Contains(r.stderr, "nothing changed") {
		t.Errorf("pre-activate failure: %v", r)
	}
	if _, err := os.Stat(filepath.Join(s.root, "releases", "bad-hook")); !os.IsNotExist(err) {
		t.Errorf("releases/bad-hook left behind: %v", err)
	}
	if link, _ := os.Readlink(filepath.Join(s.root, "current")); link != "releases/b" {
		t.Errorf("current after a pre-activate failure: %q", link)
	}

	// post-deploy failure: rolled back through a reload.
	r = s.do("deploy", "--id", "pd-fail", pdFail)
	if r.code != 1 || !strings.Contains(r.stderr, "hook post-deploy [./.deploy/hooks/post-deploy/10-smoke]: exit status 1") ||
		!strings.Contains(r.stderr, "restored: current is b again") {
		t.Errorf("post-deploy failure: %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from b" {
		t.Errorf("after the post-deploy rollback: %q", got)
	}
	if link, _ := os.Readlink(filepath.Join(s.root, "current")); link != "releases/b" {
		t.Errorf("current after the post-deploy rollback: %q", link)
	}
	if got := mustRead(t, onFail); got != "deploy bad-hook b\ndeploy pd-fail b\n" {
		t.Errorf("on-failure hooks ran as %q", got)
	}
	h := s.status().LastDeploys
	if last := h[len(h)-1]; last.ID != "pd-fail" || last.Result != "rolled-back" {
		t.Errorf("last history entry: %+v", last)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestE2E_restartAndStaleSocket: a second agent on the same socket is
// refused; a killed agent's socket is replaced by the next one, which starts
// the first generation from current.
func TestE2E_restartAndStaleSocket(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	v1 := s.art.app(t, "v1", nil)
	other := s.art.app(t, "other", map[string]file{"extra.txt": {body: "different content"}})
	p := s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)

	// Idempotent retry of the same id and content; the same id with other
	// content is the caller's mistake; a bad checksum or a 404 refuses the
	// deploy and leaves nothing behind.
	if r := s.mustDo("deploy", "--id", "v1", v1); !strings.Contains(r.stdout, "already current with identical content") {
		t.Errorf("redeploy of the current release: %v", r)
	}
	if r := s.do("deploy", "--id", "v1", other); r.code != 2 || !strings.Contains(r.stderr, "release already exists") {
		t.Errorf("same id, other content: want exit 2, got %v", r)
	}
	bad := strings.Replace(v1, "checksum=sha256:", "checksum=sha256:00", 1)
	bad = bad[:len(bad)-2]
	if r := s.do("deploy", "--id", "v9", bad); r.code != 1 || !strings.Contains(r.stderr, "checksum mismatch") || !strings.Contains(r.stderr, "nothing changed") {
		t.Errorf("checksum mismatch: want exit 1, got %v", r)
	}
	if r := s.do("deploy", s.art.srv.URL+"/missing.tar.gz"); r.code != 1 || !strings.Contains(r.stderr, "deploy failed") {
		t.Errorf("404: want exit 1, got %v", r)
	}
	if rels, _ := os.ReadDir(filepath.Join(s.root, "releases")); len(rels) != 2 { // v1 and .incoming
		t.Errorf("refused deploys left releases behind: %v", rels)
	}
	if inc, _ := os.ReadDir(filepath.Join(s.root, "releases", ".incoming")); len(inc) != 0 {
		t.Errorf("releases/.incoming not empty: %v", inc)
	}

	second := s.spawn(nil)
	if code := second.wait(30 * time.Second); code != 1 || !strings.Contains(second.log(), "another agent is serving this control socket") {
		t.Errorf("second agent: exit %d\n%s", code, second.log())
	}
	st := s.status()
	var pids []int
	for _, w := range st.Generations[0].Workers {
		pids = append(pids, w.PID)
	}
	// A deploy held in its pre-activate hook when the agent dies: the
	// client cannot know the outcome, exit 3.
	held := s.background("deploy", "-c", s.cfg, "--id", "held", s.art.app(t, "held", map[string]file{
		".deploy/hooks/pre-activate": {mode: 0o755, body: "#!/bin/sh\necho holding\nexec sleep 60\n"}}))
	proctest.WaitFor(t, 30*time.Second, "deploy held to run its hook", func() bool {
		return strings.Contains(p.log(), `msg="Hook output" stage=pre-activate command=./.deploy/hooks/pre-activate line=holding`)
	})
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
	if r := held.wait(t); r.code != 3 || !strings.Contains(r.stderr, "agent not reachable") || !strings.Contains(r.stderr, "agent status") {
		t.Errorf("client of a deploy whose agent died: want exit 3, got %v", r)
	}
	for _, pid := range pids {
		proctest.WaitFor(t, 10*time.Second, "workers to die with the agent", func() bool { return !alive(pid) })
	}
	if _, err := os.Stat(s.sock); err != nil {
		t.Fatalf("a killed agent leaves its socket file: %v", err)
	}
	p2 := s.start(nil)
	proctest.WaitFor(t, 30*time.Second, "the first generation from current", func() bool {
		st := s.status()
		return len(st.Generations) == 1 && st.Generations[0].State == "serving" && st.Current == "v1"
	})
	if got := proctest.Get(t, s.appAddr()); got != "hello from v1" {
		t.Errorf("restarted agent serves %q", got)
	}
	if !strings.Contains(p2.log(), "Replacing stale control socket") {
		t.Errorf("no stale socket message in the log:\n%s", p2.log())
	}

	// A local directory, named relative to the client's directory.
	local := filepath.Join(s.dir, "build", "app")
	if err := os.MkdirAll(local, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(local, "server.js"), []byte(nodeServer(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := cliIn(t, s.dir, nil, "deploy", "-c", s.cfg, "--id", "local", "build/app"); r.code != 0 {
		t.Fatalf("deploy of a relative local directory: %v", r)
	}
	if got := proctest.Get(t, s.appAddr()); got != "hello from local" {
		t.Errorf("local release serves %q", got)
	}
}
