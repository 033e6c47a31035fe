package cluster

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// environOf reads a live process's environment.
func environOf(t *testing.T, pid int) map[string]string {
	t.Helper()
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
	return env
}

// servingWorkers returns the serving generation's workers by WORKER_ID.
func (h *harness) servingWorkers() (gen int, pids map[int]int) {
	pids = map[int]int{}
	for _, g := range h.m.Status().Generations {
		if g.State != GenServing {
			continue
		}
		gen = g.ID
		for _, w := range g.Workers {
			pids[w.ID] = w.PID
		}
	}
	return gen, pids
}

// TestMaster_SetConfig: a new config applies to the next Reload (its worker
// count, its env), GenerationSpec.Env wins over Config.Env, and the running
// generation keeps the config it started with, restarts included.
func TestMaster_SetConfig(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, Env: []string{"GREETING=one", "SHARED=config"}, BackoffMin: 10 * time.Millisecond})
	h.mustReload(h.release("r1"))
	_, first := h.servingWorkers()
	if len(first) != 2 {
		t.Fatalf("workers %v, want 2", first)
	}
	if env := environOf(t, first[0]); env["GREETING"] != "one" {
		t.Errorf("GREETING=%q, want one", env["GREETING"])
	}

	if err := h.m.SetConfig(Config{Command: []string{selfPath(t)}, Workers: 3, Env: []string{"CLUSTER_TEST_ROLE=worker", "GREETING=two", "SHARED=config"},
		Readiness: Readiness{Timeout: 10 * time.Second}, DrainTimeout: 5 * time.Second, BackoffMin: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// Not applied before the next Reload: a crashed worker of generation 1
	// comes back with the config it started with.
	syscall.Kill(first[1], syscall.SIGKILL)
	var again int
	if !waitFor(10*time.Second, func() bool {
		_, ws := h.servingWorkers()
		again = ws[1]
		return again != 0 && again != first[1] && h.m.Status().Generations[0].Workers[1].State == WorkerReady
	}) {
		t.Fatalf("worker 1 not restarted: %+v", h.m.Status())
	}
	if env := environOf(t, again); env["GREETING"] != "one" {
		t.Errorf("restarted worker of generation 1: GREETING=%q, want one (the config it started with)", env["GREETING"])
	}

	spec := h.release("r2")
	spec.Env = []string{"SHARED=spec", "SECRET=s3"}
	h.mustReload(spec)
	gen, ws := h.servingWorkers()
	if len(ws) != 3 {
		t.Fatalf("generation %d workers %v, want 3", gen, ws)
	}
	var ids []string
	for id, pid := range ws {
		env := environOf(t, pid)
		ids = append(ids, env["WORKER_ID"])
		if env["GREETING"] != "two" || env["SHARED"] != "spec" || env["SECRET"] != "s3" || env["WORKER_ID"] != fmt.Sprint(id) {
			t.Errorf("worker %d: GREETING=%q SHARED=%q SECRET=%q WORKER_ID=%q", id, env["GREETING"], env["SHARED"], env["SECRET"], env["WORKER_ID"])
		}
	}
	sort.Strings(ids)
	if strings.Join(ids, ",") != "0,1,2" {
		t.Errorf("WORKER_IDs %v, want 0,1,2", ids)
	}

	// The next config does not reach generation 2's restarts either; its
	// spec Env stays with it.
	if err := h.m.SetConfig(Config{Command: []string{selfPath(t)}, Workers: 1, Env: []string{"CLUSTER_TEST_ROLE=worker", "GREETING=three"}}); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(ws[2], syscall.SIGKILL)
	if !waitFor(10*time.Second, func() bool {
		_, now := h.servingWorkers()
		again = now[2]
		return again != 0 && again != ws[2] && pidAlive(again)
	}) {
		t.Fatalf("worker 2 not restarted: %+v", h.m.Status())
	}
	if env := environOf(t, again); env["GREETING"] != "two" || env["SECRET"] != "s3" {
		t.Errorf("restarted worker of generation 2: GREETING=%q SECRET=%q, want two and s3", env["GREETING"], env["SECRET"])
	}
}

func TestMaster_SetConfigInvalid(t *testing.T) {
	h := newHarness(t, Config{Workers: 1})
	err := h.m.SetConfig(Config{Command: []string{selfPath(t)}, Workers: 1, Readiness: Readiness{Quorum: 2}})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("SetConfig with quorum 2 of 1: %v, want ErrInvalidConfig", err)
	}
	h.mustReload(h.release("r1"))
	if _, ws := h.servingWorkers(); len(ws) != 1 {
		t.Errorf("workers %v: the refused config applied", ws)
	}
}
