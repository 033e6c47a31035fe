package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// upgraderInfo is what the upgrader role prints: once serving, after each
// signal, and once resumed after an upgrade.
type upgraderInfo struct {
	PID      int            `json:"pid"`
	Addr     string         `json:"addr"`
	Gen      int            `json:"gen"`
	Workers  []WorkerStatus `json:"workers"`
	Upgrades int            `json:"upgrades"` // extraState, counted across upgrades
	Note     string         `json:"note"`     // read from an extraFile handed over
	Errors   []string       `json:"errors,omitempty"`
	Event    string         `json:"event"`
	// Nonblock: O_NONBLOCK, as a worker sets it on the listening socket's
	// shared description, survives the Fd call that every spawn makes on
	// the master's File (sockets_flags_test.go, for resumed sockets too).
	Nonblock bool `json:"nonblock"`
}

// runUpgraderRole runs a Master of two serving workers in its working
// directory, or resumes the one its previous program handed over. Signals:
// SIGUSR2 upgrades to the test binary itself; SIGUSR1 tries three upgrades
// that must fail (a missing binary, one that is not ours, an execve that
// fails after the handover was prepared); SIGHUP reloads; SIGWINCH prints.
func runUpgraderRole() int {
	logger := testHelperLogger()
	cfg := Config{
		Workers: 2, Env: []string{"CLUSTER_TEST_ROLE=worker", "HELPER_MODE=" + modeServe},
		Readiness: Readiness{Timeout: 20 * time.Second}, DrainTimeout: 10 * time.Second,
		BackoffMin: 20 * time.Millisecond, Logger: logger,
	}
	if os.Getenv("UPGRADER_MODE") == "notify" {
		// Worker 0 ready at once, worker 1 only once the test creates a
		// file, worker 2 in a crash loop.
		cfg.Workers, cfg.BackoffMin, cfg.BackoffMax = 3, 50*time.Millisecond, 200*time.Millisecond
		cfg.Readiness = Readiness{Mode: ModeNotify, Quorum: 1, Timeout: 20 * time.Second}
		cfg.Env = []string{"CLUSTER_TEST_ROLE=worker", "HELPER_MODE=" + modeNotifyFile, "HELPER_WAIT_WORKER=1",
			"HELPER_NOTIFY_FILE=" + os.Getenv("UPGRADER_NOTIFY_FILE"), "HELPER_CRASH_WORKER=2"}
	}
	self, _ := os.Executable()
	cfg.Command = []string{self}
	dir, _ := os.Getwd()
	var (
		m        *Master
		socks    *Sockets
		note     *os.File
		upgrades int
		event    = "started"
	)
	if Upgraded() {
		h, err := Resume(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "resume:", err)
			return 1
		}
		m, socks, note = h.Master, h.Sockets, h.Files["note"]
		json.Unmarshal(h.State, &upgrades)
		event = "resumed"
	} else {
		var err error
		if socks, err = OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}}, logger); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if m, err = NewMaster(cfg, socks); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, err := m.Reload(context.Background(), GenerationSpec{Dir: dir, ReleaseID: "r1", Env: []string{"UPGRADER_SPEC_ENV=kept"}}, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if note, err = os.CreateTemp("", "upgrader-note-"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Remove(note.Name())
		fmt.Fprint(note, "handed over")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGHUP, syscall.SIGWINCH)
	enc := json.NewEncoder(os.Stdout)
	report := func(errs []string) {
		info := upgraderInfo{PID: os.Getpid(), Addr: socks.Addrs()[0], Upgrades: upgrades, Errors: errs, Event: event}
		for _, g := range m.Status().Generations {
			info.Gen, info.Workers = g.ID, g.Workers
		}
		b := make([]byte, 64)
		n, _ := note.ReadAt(b, 0)
		info.Note = string(b[:n])
		if fd, err := rawFD(socks.files[0]); err == nil {
			if dup, err := unix.Dup(fd); err == nil {
				unix.SetNonblock(dup, true)
				socks.files[0].Fd()
				fl, _ := unix.FcntlInt(uintptr(dup), unix.F_GETFL, 0)
				info.Nonblock = fl&unix.O_NONBLOCK != 0
				unix.Close(dup)
			}
		}
		enc.Encode(info)
	}
	report(nil)
	for sig := range sigs {
		var errs []string
		switch sig {
		case syscall.SIGUSR2:
			event = "upgrade"
			state, _ := json.Marshal(upgrades + 1)
			err := m.Upgrade(context.Background(), self, []string{self}, map[string]*os.File{"note": note}, state)
			errs = append(errs, err.Error())
		case syscall.SIGUSR1:
			event = "bad-upgrades"
			for _, try := range []struct {
				bin  string
				args []string
			}{
				{"/nonexistent/agent", nil},
				{"true", []string{"true"}},
				// The probe passes; execve fails (E2BIG: one argument longer
				// than MAX_ARG_STRLEN) after the handover was prepared.
				{self, []string{self, strings.Repeat("x", 200<<10)}},
			} {
				err := m.Upgrade(context.Background(), try.bin, try.args, map[string]*os.File{"note": note}, nil)
				errs = append(errs, fmt.Sprint(err))
			}
		case syscall.SIGHUP:
			event = "reload"
			if _, err := m.Reload(context.Background(), GenerationSpec{Dir: dir, ReleaseID: "r2"}, nil); err != nil {
				errs = append(errs, err.Error())
			}
		case syscall.SIGWINCH:
			event = "status"
		}
		report(errs)
	}
	return 0
}

// testHelperLogger logs to stderr, which the test sends to t.Log.
func testHelperLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// upgrader drives a process of the upgrader role.
type upgrader struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan upgraderInfo
}

func startUpgrader(t *testing.T, env ...string) (*upgrader, upgraderInfo) {
	cmd := exec.Command(selfPath(t))
	cmd.Env = append(append(os.Environ(), "CLUSTER_TEST_ROLE=upgrader"), env...)
	cmd.Dir = t.TempDir()
	cmd.Stderr = tWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	u := &upgrader{t: t, cmd: cmd, lines: make(chan upgraderInfo, 16)}
	t.Cleanup(func() {
		// Its workers die with it (the watchdog), as the test checks.
		cmd.Process.Kill()
		cmd.Wait()
	})
	go func() {
		defer close(u.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var info upgraderInfo
			if err := json.Unmarshal(sc.Bytes(), &info); err == nil {
				u.lines <- info
			}
		}
	}()
	return u, u.next("started")
}

// next waits for the next report, which must be of event.
func (u *upgrader) next(event string) upgraderInfo {
	u.t.Helper()
	select {
	case info, ok := <-u.lines:
		if !ok {
			u.t.Fatalf("upgrader exited waiting for %q", event)
		}
		if info.Event != event {
			u.t.Fatalf("report %+v, want event %q", info, event)
		}
		return info
	case <-time.After(30 * time.Second):
		u.t.Fatalf("no %q report within 30s", event)
	}
	panic("unreachable")
}

func (u *upgrader) signal(sig syscall.Signal, event string) upgraderInfo {
	u.t.Helper()
	if err := u.cmd.Process.Signal(sig); err != nil {
		u.t.Fatal(err)
	}
	return u.next(event)
}

func workerPids(info upgraderInfo) []int {
	var pids []int
	for _, w := range info.Workers {
		pids = append(pids, w.PID)
	}
	return pids
}

// The master upgrades itself in place under load: same pid, same worker
// pids, no failed request, no refused connection; failed upgrades change
// nothing; a worker restarted after an upgrade and one from before survive
// the next one; a reload after upgrades works; kill -9 of the upgraded
// master still takes every worker and the watchdog down. The first program
// starts its workers from the main thread (RunMain), or from a thread of its
// own; the upgraded ones always run under RunMain.
func TestMaster_Upgrade(t *testing.T) {
	t.Run("main-thread", func(t *testing.T) { testUpgrade(t) })
	t.Run("own-thread", func(t *testing.T) { testUpgrade(t, "UPGRADER_OWN_THREAD=1") })
}

func testUpgrade(t *testing.T, env ...string) {
	u, info := startUpgrader(t, env...)
	pids := workerPids(info)
	if len(pids) != 2 || info.Note != "handed over" {
		t.Fatalf("start: %+v", info)
	}
	// Keep-alive connections, and new connections for every request: any
	// moment the port refused would show.
	keep := startLoad(t, info.Addr, 3)
	fresh := startFreshLoad(t, info.Addr, 2)
	waitOK(t, keep, 20)
	waitOK(t, fresh, 20)

	bad := u.signal(syscall.SIGUSR1, "bad-upgrades")
	if len(bad.Errors) != 3 || !strings.Contains(bad.Errors[0], ErrIncompatible.Error()) ||
		!strings.Contains(bad.Errors[1], ErrIncompatible.Error()) || !strings.Contains(bad.Errors[2], syscall.E2BIG.Error()) {
		t.Errorf("failed upgrades: %q", bad.Errors)
	}
	if !slices.Equal(workerPids(bad), pids) || bad.PID != u.cmd.Process.Pid {
		t.Fatalf("after failed upgrades: %+v, want workers %v", bad, pids)
	}
	waitOK(t, keep, 20)

	start := time.Now()
	up := u.signal(syscall.SIGUSR2, "resumed")
	took := time.Since(start)
	if up.PID != u.cmd.Process.Pid || up.Upgrades != 1 || up.Note != "handed over" || up.Gen != info.Gen {
		t.Errorf("after upgrade: %+v", up)
	}
	if !slices.Equal(workerPids(up), pids) {
		t.Fatalf("worker pids %v after the upgrade, want %v", workerPids(up), pids)
	}
	if !info.Nonblock || !up.Nonblock {
		t.Errorf("a spawn's Fd call clears O_NONBLOCK under the workers (before the upgrade: %v, after: %v)", info.Nonblock, up.Nonblock)
	}
	for _, w := range up.Workers {
		if w.State != WorkerReady {
			t.Errorf("worker after upgrade: %+v", w)
		}
	}
	waitOK(t, keep, 20)
	waitOK(t, fresh, 20)
	r := assertClean(t, keep, false)
	rf := assertClean(t, fresh, false)
	t.Logf("upgrade took %s (signal to resumed report); keep-alive %d ok, fresh connections %d ok", took.Round(time.Millisecond), r.OK, rf.OK)

	// A worker that dies after the upgrade is restarted by the new program,
	// from its spawner; the next upgrade keeps it and the one from before.
	syscall.Kill(pids[0], syscall.SIGKILL)
	var st upgraderInfo
	if !waitFor(10*time.Second, func() bool {
		st = u.signal(syscall.SIGWINCH, "status")
		w := st.Workers[0]
		return w.PID != pids[0] && w.State == WorkerReady
	}) {
		t.Fatalf("worker 0 not restarted: %+v", st)
	}
	if st.Workers[0].Restarts != 1 || st.Workers[1].PID != pids[1] {
		t.Errorf("status %+v", st)
	}
	// It keeps its generation's GenerationSpec.Env, handed over.
	if env := environOf(t, st.Workers[0].PID); env["UPGRADER_SPEC_ENV"] != "kept" {
		t.Errorf("worker restarted after the upgrade: UPGRADER_SPEC_ENV=%q, want kept", env["UPGRADER_SPEC_ENV"])
	}
	mixed := workerPids(st)

	keep = startLoad(t, info.Addr, 3)
	fresh = startFreshLoad(t, info.Addr, 2)
	waitOK(t, keep, 20)
	up2 := u.signal(syscall.SIGUSR2, "resumed")
	if up2.PID != u.cmd.Process.Pid || up2.Upgrades != 2 || !slices.Equal(workerPids(up2), mixed) {
		t.Fatalf("after the second upgrade: %+v, want workers %v", up2, mixed)
	}
	waitOK(t, keep, 20)
	for _, pid := range mixed {
		if !pidAlive(pid) {
			t.Errorf("worker %d died in the second upgrade", pid)
		}
	}

	// The resumed master reloads as any master does.
	re := u.signal(syscall.SIGHUP, "reload")
	if len(re.Errors) != 0 || re.Gen != info.Gen+1 || len(re.Workers) != 2 {
		t.Fatalf("reload after upgrades: %+v", re)
	}

	waitOK(t, keep, 20)
	waitOK(t, fresh, 20)
	assertClean(t, keep, false)
	assertClean(t, fresh, false)
	for _, pid := range mixed {
		if pidAlive(pid) {
			t.Errorf("retired worker %d still alive", pid)
		}
	}

	// kill -9 of the upgraded master: every worker and the watchdog gone
	// within a second, the port free.
	tree := processTree(u.cmd.Process.Pid, false)[1:]
	if len(tree) < 3 {
		t.Fatalf("process tree %v: want 2 workers and the watchdog", tree)
	}
	u.cmd.Process.Signal(syscall.SIGKILL)
	u.cmd.Wait()
	expectGoneAndPortFree(t, tree, info.Addr, "kill -9 of the upgraded master")
}

// Resume in a process that was not upgraded.
func TestResume_NotUpgraded(t *testing.T) {
	if Upgraded() {
		t.Fatal("the test process says it was upgraded")
	}
	_, err := Resume(Config{Command: []string{"x"}})
	if !errors.Is(err, ErrNotUpgraded) {
		t.Fatalf("got %v", err)
	}
}

// An Upgrade during a Reload is refused, and one after Shutdown too.
func TestMaster_UpgradeBusyClosed(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, Readiness: Readiness{Timeout: 3 * time.Second}})
	h.mustReload(h.release("a"))
	done := make(chan error, 1)
	go func() { _, err := h.reload(h.release("slow", "HELPER_MODE="+modeNever)); done <- err }()
	if !waitFor(5*time.Second, func() bool { return len(h.m.Status().Generations) == 2 }) {
		t.Fatal("second generation never started")
	}
	self := selfPath(t)
	if err := h.m.Upgrade(context.Background(), self, []string{self}, nil, nil); !errors.Is(err, ErrBusy) {
		t.Errorf("Upgrade during a reload: %v, want ErrBusy", err)
	}
	if err := <-done; !errors.Is(err, ErrReadinessTimeout) {
		t.Errorf("slow reload: %v", err)
	}
	h.shutdownTested = true
	if err := h.m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Upgrade(context.Background(), self, []string{self}, nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Upgrade after Shutdown: %v, want ErrClosed", err)
	}
}

// Across an upgrade, a worker not yet ready gets ready by READY=1 on the
// notify socket handed over, and a crash-looping worker keeps its backoff
// and restarts.
func TestMaster_UpgradeNotifyBackoff(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ready")
	u, info := startUpgrader(t, "UPGRADER_MODE=notify", "UPGRADER_NOTIFY_FILE="+file)
	if len(info.Workers) != 3 || info.Workers[0].State != WorkerReady || info.Workers[1].State != WorkerStarting {
		t.Fatalf("start: %+v", info)
	}
	up := u.signal(syscall.SIGUSR2, "resumed")
	if up.Workers[0].PID != info.Workers[0].PID || up.Workers[1].PID != info.Workers[1].PID ||
		up.Workers[0].State != WorkerReady || up.Workers[1].State != WorkerStarting || up.Workers[0].Status != "notified" {
		t.Fatalf("after the upgrade: %+v, before %+v", up, info)
	}
	restarts := up.Workers[2].Restarts
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var st upgraderInfo
	if !waitFor(10*time.Second, func() bool {
		st = u.signal(syscall.SIGWINCH, "status")
		return st.Workers[1].State == WorkerReady && st.Workers[2].Restarts >= restarts+2
	}) {
		t.Fatalf("worker 1 never ready or worker 2 not restarted: %+v (restarts at the upgrade: %d)", st, restarts)
	}
	if st.Workers[1].PID != info.Workers[1].PID || st.Workers[1].Status != "notified" || !strings.Contains(st.Workers[2].LastExit, "exit status 3") {
		t.Errorf("status %+v", st)
	}
	t.Logf("crash-looping worker: %d restarts at the upgrade, %d now, backoff %s", restarts, st.Workers[2].Restarts, st.Workers[2].Backoff)
}
