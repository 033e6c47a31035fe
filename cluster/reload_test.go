package cluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Twenty reloads in a row under keep-alive load: not one request fails.
func TestMaster_Reload20UnderLoad(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, DrainTimeout: 5 * time.Second})
	h.mustReload(h.release("v0"))
	run := h.load(4)
	waitOK(t, run, 20)
	var retired []time.Duration
	for i := 1; i <= 20; i++ {
		id := "v" + itoa(i)
		res := h.mustReload(h.release(id))
		retired = append(retired, res.RetiredAfter)
		// Once Reload returned, every new connection is the new release's.
		for range 3 {
			if body, err := getOnce("tcp", h.addr); err != nil || body != id {
				t.Fatalf("after reload to %s: %q, %v", id, body, err)
			}
		}
		waitOK(t, run, 10)
	}
	r := assertClean(t, run, false)
	if r.Bodies["v20"] == 0 {
		t.Errorf("v20 never served: %v", r.Bodies)
	}
	served := 0
	for k := range r.Bodies {
		if strings.HasPrefix(k, "v") {
			served++
		}
	}
	if served < 15 {
		t.Errorf("only %d releases served: %v", served, r.Bodies)
	}
	t.Logf("reload durations: %v", retired)
}

// failCase is a reload to a broken release under load: the reload fails, the
// old generation keeps serving, no request fails.
func TestMaster_ReloadFailsOldServes(t *testing.T) {
	cases := []struct {
		name      string
		env       []string
		readiness Readiness
		cause     error
		verdict   string
		alt       string // also right: a verdict that depends on how long the worker took on a loaded box
		lines     string // expected in some worker's last lines
		maxAfter  time.Duration
	}{
		{
			name: "never-listens", env: []string{"HELPER_MODE=" + modeNever},
			readiness: Readiness{Timeout: 3 * time.Second},
			cause:     ErrReadinessTimeout, verdict: VerdictNeverTouched, lines: "not listening, on purpose",
			maxAfter: 5 * time.Second,
		},
		{
			name: "crash-at-start", env: []string{"HELPER_MODE=" + modeCrash},
			cause: ErrQuorumLost, verdict: VerdictExitedAtOnce, alt: VerdictExitedEarly, lines: "boom: config missing",
			maxAfter: 5 * time.Second,
		},
		{
			name: "listen-then-crash", env: []string{"HELPER_MODE=" + modeListenCrash, "HELPER_CRASH_AFTER=300ms"},
			readiness: Readiness{Probation: time.Second},
			cause:     ErrProbationFailed, verdict: VerdictExitedReady, lines: "panic: listen-crash",
			maxAfter: 5 * time.Second,
		},
		{
			name: "own-port-eaddrinuse", env: []string{"HELPER_MODE=" + modeOwnPort},
			cause: ErrQuorumLost, verdict: VerdictOwnPort + ": EADDRINUSE in its output", lines: "address already in use",
			maxAfter: 5 * time.Second,
		},
		{
			name: "own-port-listening", env: []string{"HELPER_MODE=" + modeOwnPortHang},
			readiness: Readiness{Timeout: 3 * time.Second},
			cause:     ErrReadinessTimeout, verdict: VerdictOwnPort + ": listening on 127.0.0.1:", lines: "listening on",
			maxAfter: 6 * time.Second,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{Workers: 2, Readiness: tc.readiness})
			h.mustReload(h.release("good"))
			old := h.pids()
			run := h.load(2)
			waitOK(t, run, 20)
			start := time.Now()
			_, err := h.reload(h.release("bad", tc.env...))
			took := time.Since(start)
			waitOK(t, run, 20)
			// A crashing worker resets what it had accepted: stale keep-alive
			// errors are its own doing and are counted apart.
			allowStale := tc.name == "listen-then-crash"
			r := assertClean(t, run, allowStale)
			if r.Bodies["good"] == 0 {
				t.Errorf("old generation did not serve: %v", r.Bodies)
			}
			re := reloadErr(t, err)
			t.Logf("error: %v (after %s)", err, took)
			if !errors.Is(err, tc.cause) {
				t.Errorf("cause %v, want %v", re.Cause, tc.cause)
			}
			if took > tc.maxAfter {
				t.Errorf("failing took %s", took)
			}
			if len(re.Workers) == 0 {
				t.Fatalf("no failed workers named")
			}
			sawLines, sawVerdict := false, false
			for _, w := range re.Workers {
				switch {
				case strings.HasPrefix(w.Verdict, tc.verdict):
					sawVerdict = true
				case tc.alt != "" && strings.HasPrefix(w.Verdict, tc.alt):
					// A crash that took over exitedAtOnce to happen (the
					// helper's start alone did on a saturated box).
				default:
					t.Errorf("worker %d verdict %q, want prefix %q", w.Worker, w.Verdict, tc.verdict)
				}
				if w.PID == 0 || w.ExitStatus == "" {
					t.Errorf("worker %+v", w)
				}
				if strings.Contains(strings.Join(w.LastLines, "\n"), tc.lines) {
					sawLines = true
				}
				if pidAlive(w.PID) {
					t.Errorf("failed worker %d still alive", w.PID)
				}
			}
			if !sawVerdict {
				t.Errorf("no worker has verdict %q", tc.verdict)
			}
			if !sawLines {
				t.Errorf("no worker's last lines contain %q: %+v", tc.lines, re.Workers)
			}
			// Old generation untouched, sole generation, still serving.
			st := h.m.Status()
			if len(st.Generations) != 1 || st.Generations[0].ReleaseID != "good" || st.Generations[0].State != GenServing {
				t.Fatalf("status after failure: %+v", st)
			}
			for i, pid := range h.pids() {
				if pid != old[i] {
					t.Errorf("old worker %d replaced: %d -> %d", i, old[i], pid)
				}
			}
			// And the master still reloads.
			h.mustReload(h.release("good2"))
		})
	}
}

// A worker that stops accepting on SIGTERM but never exits is killed after
// the drain timeout; its requests finished.
func TestMaster_RetireIgnoresSIGTERM(t *testing.T) {
	drain := 800 * time.Millisecond
	h := newHarness(t, Config{Workers: 2, DrainTimeout: drain})
	h.mustReload(h.release("stubborn", "HELPER_MODE="+modeIgnoreTerm))
	old := h.pids()
	run := h.load(2)
	waitOK(t, run, 20)
	res := h.mustReload(h.release("next"))
	waitOK(t, run, 20)
	assertClean(t, run, false)
	if d := res.RetiredAfter - res.ReadyAfter; d < drain {
		t.Errorf("retired %s after ready, before the drain timeout %s", d, drain)
	}
	if res.RetiredAfter > res.ReadyAfter+drain+2*time.Second {
		t.Errorf("retiring took %s", res.RetiredAfter-res.ReadyAfter)
	}
	for _, pid := range old {
		if pidAlive(pid) {
			t.Errorf("stubborn worker %d alive", pid)
		}
	}
}

// A worker whose grandchild holds the socket: retiring it ends the whole
// process group.
func TestMaster_RetireKillsGrandchild(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, DrainTimeout: 800 * time.Millisecond})
	h.mustReload(h.release("gc", "HELPER_MODE="+modeGrandchild))
	leader := h.pids()[0]
	tree := processTree(leader, false)
	if len(tree) < 2 {
		t.Fatalf("no grandchild under %d: %v", leader, tree)
	}
	grandchild := tree[1]
	run := h.load(2)
	waitOK(t, run, 20)
	h.mustReload(h.release("plain"))
	waitOK(t, run, 20)
	assertClean(t, run, false)
	if pidAlive(leader) || pidAlive(grandchild) {
		t.Errorf("leader %d alive=%v, grandchild %d alive=%v", leader, pidAlive(leader), grandchild, pidAlive(grandchild))
	}
}

func TestMaster_ReloadBusyAndClosed(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, Readiness: Readiness{Timeout: 3 * time.Second}})
	h.mustReload(h.release("a"))
	slow := h.release("slow", "HELPER_MODE="+modeNever)
	var wg sync.WaitGroup
	wg.Add(1)
	var slowErr error
	go func() {
		defer wg.Done()
		_, slowErr = h.reload(slow)
	}()
	if !waitFor(5*time.Second, func() bool { return len(h.m.Status().Generations) == 2 }) {
		t.Fatal("second generation never started")
	}
	if _, err := h.m.Reload(context.Background(), h.release("b"), nil); !errors.Is(err, ErrBusy) {
		t.Errorf("concurrent Reload: %v, want ErrBusy", err)
	}
	// Shutdown during a reload fails it with ErrClosed.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.m.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	wg.Wait()
	if !errors.Is(slowErr, ErrClosed) || !errors.Is(slowErr, ErrReloadFailed) {
		t.Errorf("reload during shutdown: %v", slowErr)
	}
	if _, err := h.m.Reload(context.Background(), h.release("c"), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Reload after Shutdown: %v, want ErrClosed", err)
	}
	if st := h.m.Status(); len(st.Generations) != 0 {
		t.Errorf("generations after shutdown: %+v", st.Generations)
	}
}

func TestMaster_ReloadBadDir(t *testing.T) {
	h := newHarness(t, Config{Workers: 1})
	_, err := h.m.Reload(context.Background(), GenerationSpec{Dir: h.root + "/missing"}, nil)
	if !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("got %v", err)
	}
}

func TestMaster_CommandNotFound(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, Command: []string{"no-such-binary-handoff"}})
	_, err := h.reload(h.release("x"))
	re := reloadErr(t, err)
	if len(re.Workers) != 1 || !strings.HasPrefix(re.Workers[0].Verdict, VerdictNotFound) ||
		re.Workers[0].ExitStatus != "exit status 127" {
		t.Fatalf("got %+v", re.Workers)
	}
	t.Log(err)
}

func itoa(i int) string { return strconvItoa(i) }

// Quorum 1 of 2: one crashing worker does not fail the reload; once the
// generation serves, the crashed one is restarted.
func TestMaster_QuorumPartial(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, Readiness: Readiness{Quorum: 1}, BackoffMin: 20 * time.Millisecond})
	// Worker 1 crashes at start; worker 0 serves.
	spec := h.release("half", "HELPER_MODE="+modeServe)
	os.WriteFile(filepath.Join(spec.Dir, "helper.env"), []byte("HELPER_MODE=serve\nHELPER_CRASH_WORKER=1\n"), 0o644)
	res, err := h.reload(spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Generation != 1 {
		t.Errorf("generation %d", res.Generation)
	}
	w := h.m.Status().Generations[0].Workers
	if w[0].State != WorkerReady {
		t.Errorf("worker 0: %+v", w[0])
	}
	if !waitFor(5*time.Second, func() bool { return h.m.Status().Generations[0].Workers[1].Restarts >= 1 }) {
		t.Errorf("worker 1 never restarted: %+v", h.m.Status())
	}
}

// Probation: the old generation keeps serving beside the new one for the
// window, then is retired; events tell each step.
func TestMaster_ProbationAndEvents(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, Readiness: Readiness{Probation: 500 * time.Millisecond}})
	h.mustReload(h.release("p1"))
	old := h.pids()[0]
	h.mu.Lock()
	h.events = nil
	h.mu.Unlock()
	done := make(chan *ReloadResult, 1)
	go func() { done <- h.mustReload(h.release("p2")) }()
	if !waitFor(5*time.Second, func() bool {
		st := h.m.Status()
		return len(st.Generations) == 2 && st.Generations[1].State == GenProbation
	}) {
		t.Fatalf("no probation: %+v", h.m.Status())
	}
	if !pidAlive(old) {
		t.Errorf("old worker stopped during probation")
	}
	res := <-done
	if res.RetiredAfter-res.ReadyAfter < 500*time.Millisecond {
		t.Errorf("retired %s after ready, within probation", res.RetiredAfter-res.ReadyAfter)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var kinds []string
	for _, ev := range h.events {
		if ev.Generation == 2 || ev.Kind == "retiring" || ev.Kind == "retired" {
			kinds = append(kinds, string(ev.Kind))
		}
	}
	want := "worker-started worker-ready quorum probation retiring retired"
	if got := strings.Join(kinds, " "); !strings.Contains(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}
