package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kill -9 of a master process: every worker (and a worker's grandchild) is
// gone within a second and the port can be bound again.
func TestMaster_KillMinus9(t *testing.T) {
	for _, mode := range []string{modeServe, modeGrandchild} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(selfPath(t))
			cmd.Env = append(os.Environ(), "CLUSTER_TEST_ROLE=master", "HELPER_MASTER_MODE="+mode)
			cmd.Dir = t.TempDir()
			cmd.Stderr = tWriter{t}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			lines := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(out)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "{") {
						lines <- sc.Text()
					}
				}
				close(lines)
			}()
			var info masterInfo
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("master exited before serving")
				}
				json.Unmarshal([]byte(l), &info)
			case <-time.After(20 * time.Second):
				t.Fatal("master never served")
			}
			tree := processTree(cmd.Process.Pid, false)[1:] // workers, grandchildren, watchdog
			want := 3
			if mode == modeGrandchild {
				want = 5
			}
			if len(tree) < want {
				t.Fatalf("process tree %v, want at least %d processes", tree, want)
			}
			c, err := net.Dial("tcp", info.Addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()

			killed := time.Now()
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			gone := expectGoneAndPortFree(t, tree, info.Addr, "the master died").Sub(killed)
			t.Logf("%d processes gone %s after kill -9 of the master", len(tree), gone.Round(time.Millisecond))
		})
	}
}

// A worker of the serving generation that dies is restarted in its
// generation's own directory, not where `current` points now.
func TestMaster_RestartPinned(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, BackoffMin: 20 * time.Millisecond})
	a := h.release("a")
	b := h.release("b")
	current := filepath.Join(h.root, "current")
	if err := os.Symlink(a.Dir, current); err != nil {
		t.Fatal(err)
	}
	h.mustReload(GenerationSpec{Dir: current, ReleaseID: "a", Root: h.root})
	// Deploy tooling moves `current` on; this generation must not follow.
	os.Remove(current)
	os.Symlink(b.Dir, current)

	victim := h.pids()[0]
	syscall.Kill(victim, syscall.SIGKILL)
	var w WorkerStatus
	if !waitFor(5*time.Second, func() bool {
		w = h.m.Status().Generations[0].Workers[0]
		return w.PID != victim && w.State == WorkerReady
	}) {
		t.Fatalf("worker not restarted: %+v", w)
	}
	if w.Restarts != 1 || w.LastExit != "signal: killed" {
		t.Errorf("status %+v", w)
	}
	// The totals: a kill the master did not send, one restart.
	if st := h.m.Status(); st.Restarts != 1 || st.Exits != (ExitStats{Killed: 1}) {
		t.Errorf("totals: restarts %d, exits %+v", st.Restarts, st.Exits)
	}
	cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", w.PID))
	if cwd != a.Dir {
		t.Errorf("restarted in %q, want %q", cwd, a.Dir)
	}
	if d := h.m.Status().Generations[0].Dir; d != a.Dir {
		t.Errorf("generation dir %q", d)
	}
}

// A crash loop is restarted with exponential backoff, never in a busy loop,
// and shows in Status.
func TestMaster_CrashLoopBackoff(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, BackoffMin: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond})
	h.mustReload(h.release("loop", "HELPER_MODE="+modeListenCrash, "HELPER_CRASH_AFTER=100ms"))
	// One entry per backoff period (each has its own Restarts count), until
	// the cap was seen twice.
	var backoffs []time.Duration
	recorded, capped := -1, 0
	deadline := time.Now().Add(15 * time.Second)
	for capped < 2 && time.Now().Before(deadline) {
		w := h.m.Status().Generations[0].Workers[0]
		if w.State == WorkerBackoff && w.Restarts != recorded {
			recorded = w.Restarts
			backoffs = append(backoffs, w.Backoff)
			if w.Backoff == 400*time.Millisecond {
				capped++
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	w := h.m.Status().Generations[0].Workers[0]
	t.Logf("restarts=%d last_exit=%q backoffs seen=%v", w.Restarts, w.LastExit, backoffs)
	if !strings.Contains(w.LastExit, "exit status 4") {
		t.Errorf("status %+v", w)
	}
	// Each delay doubles the one before, up to the cap; a worker that stayed
	// up past the reset threshold (a slow start on a loaded box) starts over.
	for i, d := range backoffs {
		prev := time.Duration(0)
		if i > 0 {
			prev = backoffs[i-1]
		}
		ok := d == 50*time.Millisecond || d == min(2*prev, 400*time.Millisecond)
		if !ok {
			t.Errorf("backoff %d = %s after %s (all: %v)", i, d, prev, backoffs)
		}
	}
	if capped < 2 {
		t.Errorf("backoff did not stay at the 400ms cap: %v", backoffs)
	}
}

// Shutdown drains, then kills what does not exit by the deadline, and reaps
// everything.
func TestMaster_ShutdownDeadline(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, DrainTimeout: time.Minute})
	h.mustReload(h.release("stubborn", "HELPER_MODE="+modeIgnoreTerm))
	pids := h.pids()
	h.shutdownTested = true
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := h.m.Shutdown(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want DeadlineExceeded", err)
	}
	if took < 450*time.Millisecond || took > 3*time.Second {
		t.Errorf("Shutdown took %s", took)
	}
	for _, pid := range pids {
		if pidAlive(pid) {
			t.Errorf("worker %d alive after Shutdown", pid)
		}
	}
	if _, err := os.Stat(h.m.notifyDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("notify dir left: %v", err)
	}
}

// expectGoneAndPortFree waits up to a second for every pid of tree to be gone
// (killing and reporting any left) and for addr to be bindable again; it
// returns when the tree was seen gone.
func expectGoneAndPortFree(t *testing.T, tree []int, addr, after string) time.Time {
	t.Helper()
	if !waitFor(time.Second, func() bool {
		for _, pid := range tree {
			if pidAlive(pid) {
				return false
			}
		}
		return true
	}) {
		for _, pid := range tree {
			if pidAlive(pid) {
				t.Errorf("pid %d alive 1s after %s", pid, after)
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	gone := time.Now()
	var l net.Listener
	var err error
	if !waitFor(time.Second, func() bool {
		l, err = net.Listen("tcp", addr)
		return err == nil
	}) {
		t.Fatalf("port %s not free: %v", addr, err)
	}
	l.Close()
	return gone
}
