package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/loadgen"
)

// harness is one Master on one TCP socket of 127.0.0.1, with release
// directories made on demand.
type harness struct {
	t     *testing.T
	socks *Sockets
	m     *Master
	addr  string
	root  string

	mu     sync.Mutex
	events []ReloadEvent

	shutdownTested bool // the test checks Shutdown's result itself
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	return newHarnessOn(t, cfg, []ListenSpec{{Name: "http", Address: "127.0.0.1:0"}})
}

// newHarnessOn is newHarness on the given sockets; addr is the first one's.
func newHarnessOn(t *testing.T, cfg Config, specs []ListenSpec) *harness {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	socks, err := OpenSockets(specs, logger)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Command == nil {
		cfg.Command = []string{selfPath(t)}
	}
	cfg.Env = append(cfg.Env, "CLUSTER_TEST_ROLE=worker")
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Readiness.Timeout == 0 {
		cfg.Readiness.Timeout = 10 * time.Second
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	cfg.Logger = logger
	m, err := NewMaster(cfg, socks)
	if err != nil {
		socks.Close()
		t.Fatal(err)
	}
	h := &harness{t: t, socks: socks, m: m, addr: socks.Addrs()[0], root: t.TempDir()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Shutdown(ctx); err != nil && !h.shutdownTested {
			t.Errorf("Shutdown: %v", err)
		}
		if err := socks.Close(); err != nil {
			t.Errorf("Sockets.Close: %v", err)
		}
	})
	return h
}

// release makes releases/<id> with a helper.env of the given lines.
func (h *harness) release(id string, env ...string) GenerationSpec {
	h.t.Helper()
	dir := filepath.Join(h.root, "releases", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	env = append(env, "HELPER_ADDR="+h.addr)
	if err := os.WriteFile(filepath.Join(dir, "helper.env"), []byte(strings.Join(env, "\n")), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return GenerationSpec{Dir: dir, ReleaseID: id, Root: h.root}
}

func (h *harness) reload(spec GenerationSpec) (*ReloadResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return h.m.Reload(ctx, spec, func(ev ReloadEvent) {
		h.mu.Lock()
		h.events = append(h.events, ev)
		h.mu.Unlock()
	})
}

func (h *harness) mustReload(spec GenerationSpec) *ReloadResult {
	h.t.Helper()
	res, err := h.reload(spec)
	if err != nil {
		h.t.Fatalf("Reload %s: %v", spec.ReleaseID, err)
	}
	return res
}

// pids returns the pids of the serving generation's workers.
func (h *harness) pids() []int {
	var out []int
	for _, g := range h.m.Status().Generations {
		for _, w := range g.Workers {
			out = append(out, w.PID)
		}
	}
	return out
}

// load starts a keep-alive load on the harness socket.
func (h *harness) load(conns int) *loadgen.Run {
	return startLoad(h.t, h.addr, conns)
}

// assertClean stops the load and requires zero failures and zero stale
// keep-alive errors (the helper workers drain gracefully).
func assertClean(t *testing.T, run *loadgen.Run, allowStale bool) *loadgen.Result {
	t.Helper()
	res := run.Stop()
	t.Logf("load: %s bodies=%v", res, res.Bodies)
	if res.OK == 0 {
		t.Errorf("no request succeeded")
	}
	if res.FailedTotal != 0 {
		t.Errorf("%d failed requests: %v %q", res.FailedTotal, res.Failed, res.Errors)
	}
	if res.StaleKeepAlive != 0 && !allowStale {
		t.Errorf("%d stale keep-alive errors", res.StaleKeepAlive)
	}
	return res
}

// waitOK waits until the load saw n more OK responses than now.
func waitOK(t *testing.T, run *loadgen.Run, n int64) {
	t.Helper()
	base := run.Snapshot().OK
	if !waitFor(10*time.Second, func() bool { return run.Snapshot().OK >= base+n }) {
		t.Fatalf("load made no progress: %s", run.Snapshot())
	}
}

func reloadErr(t *testing.T, err error) *ReloadError {
	t.Helper()
	var re *ReloadError
	if !errors.As(err, &re) || !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("want *ReloadError, got %v", err)
	}
	return re
}

func TestMaster_ReloadServesAndRetires(t *testing.T) {
	h := newHarness(t, Config{})
	res := h.mustReload(h.release("r1"))
	if res.Generation != 1 {
		t.Errorf("generation %d", res.Generation)
	}
	old := h.pids()
	run := h.load(4)
	waitOK(t, run, 50)
	h.mustReload(h.release("r2"))
	waitOK(t, run, 50)
	r := assertClean(t, run, false)
	if r.Bodies["r2"] == 0 {
		t.Errorf("r2 never served: %v", r.Bodies)
	}
	for _, pid := range old {
		if pidAlive(pid) {
			t.Errorf("old worker %d still alive", pid)
		}
	}
	st := h.m.Status()
	if len(st.Generations) != 1 || st.Generations[0].ReleaseID != "r2" || st.Generations[0].State != GenServing {
		t.Fatalf("status: %+v", st)
	}
	for _, w := range st.Generations[0].Workers {
		if w.State != WorkerReady || w.PID == 0 {
			t.Errorf("worker: %+v", w)
		}
	}
}

func TestMaster_WorkerEnv(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, Env: []string{"FOO=bar", "NOTIFY_SOCKET=/nope"}})
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify-of-the-agent")
	spec := h.release("env1")
	h.mustReload(spec)
	pid := h.pids()[0]
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	want := map[string]string{
		"LISTEN_FDS": "1", "LISTEN_FDNAMES": "http", "LISTEN_PID": fmt.Sprint(pid),
		"DEPLOY_RELEASE_ID": "env1", "DEPLOY_RELEASE_DIR": spec.Dir, "DEPLOY_ROOT": h.root,
		"WORKER_ID": "0", "FOO": "bar",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	if ns := env["NOTIFY_SOCKET"]; !strings.HasPrefix(ns, h.m.notifyDir+"/") {
		t.Errorf("NOTIFY_SOCKET=%q, want one in %s", ns, h.m.notifyDir)
	}
	if _, ok := env[shimEnv]; ok {
		t.Errorf("%s leaked into the worker", shimEnv)
	}
	cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if cwd != spec.Dir {
		t.Errorf("cwd %q, want %q", cwd, spec.Dir)
	}
	pgid, _ := syscall.Getpgid(pid)
	if pgid != pid {
		t.Errorf("pgid %d, want own group %d", pgid, pid)
	}
}
