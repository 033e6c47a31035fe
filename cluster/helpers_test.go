package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// The test binary doubles as the worker shim, as every kind of worker
// (CLUSTER_TEST_ROLE=worker, HELPER_MODE=…), as a master process that a
// test kills (CLUSTER_TEST_ROLE=master) and as one that upgrades itself
// (CLUSTER_TEST_ROLE=upgrader, upgrade_test.go).
func TestMain(m *testing.M) {
	RunShimIfRequested()
	// Masters of the master role, and of the upgrader role until its first
	// upgrade when UPGRADER_OWN_THREAD is set, start their workers from a
	// thread of their own (no RunMain); all others from the main thread.
	switch role := os.Getenv("CLUSTER_TEST_ROLE"); {
	case role == "master":
		os.Exit(runMasterRole())
	case role == "upgrader" && os.Getenv("UPGRADER_OWN_THREAD") != "" && !Upgraded():
		os.Exit(runUpgraderRole())
	}
	os.Exit(RunMain(func() int {
		switch os.Getenv("CLUSTER_TEST_ROLE") {
		case "worker":
			return runWorkerRole(os.Getenv("HELPER_MODE"))
		case "upgrader":
			return runUpgraderRole()
		case "adopt":
			return runAdoptRole()
		}
		// Race-enabled helpers would sleep 1s at exit (atexit_sleep_ms).
		os.Setenv("GORACE", "atexit_sleep_ms=0 "+os.Getenv("GORACE"))
		return m.Run()
	}))
}

// Worker modes of the helper.
const (
	modeServe        = "serve"         // HTTP on the inherited sockets; graceful drain on SIGTERM
	modeNever        = "never"         // never touches the sockets; exits on SIGTERM
	modeCrash        = "crash"         // exits 3 at once with a message
	modeListenCrash  = "listen-crash"  // serves, then exits 4 after HELPER_CRASH_AFTER
	modeIgnoreTerm   = "ignore-term"   // drains on SIGTERM, then never exits
	modeGrandchild   = "grandchild"    // a grandchild (through the shim) serves; the leader exits on SIGTERM
	modeOwnPort      = "own-port"      // binds the master's address itself: EADDRINUSE, exit 1
	modeOwnPortHang  = "own-port-hang" // binds a port of its own and waits
	modeNotifyGrand  = "notify-grand"  // serves; READY=1 sent by systemd-notify run by a grandchild
	modeNotifySelf   = "notify-self"   // serves; sends READY=1 itself after HELPER_NOTIFY_AFTER
	modeAcceptRaw    = "accept-raw"    // blocks in accept(2) on fd 3 (no epoll), answers HTTP by hand
	modeExitOnSignal = "exit-on-term"  // sleeps; exits 0 on SIGTERM
	modeNotifyFile   = "notify-file"   // serves; READY=1 at once, or once HELPER_NOTIFY_FILE exists for worker HELPER_WAIT_WORKER
)

func runWorkerRole(mode string) int {
	// A release directory may carry helper.env: KEY=VALUE lines that set the
	// mode of the workers of that release.
	if b, err := os.ReadFile("helper.env"); err == nil && os.Getenv("HELPER_NO_FILE") == "" {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				os.Setenv(k, v)
			}
		}
		mode = os.Getenv("HELPER_MODE")
	}
	body := os.Getenv("DEPLOY_RELEASE_ID") + " " + os.Getenv("HELPER_BODY")
	if w := os.Getenv("HELPER_CRASH_WORKER"); w != "" && w == os.Getenv("WORKER_ID") {
		mode = modeCrash
	}
	switch mode {
	case modeCrash:
		fmt.Fprintln(os.Stderr, "boom: config missing")
		return 3
	case modeNever, modeExitOnSignal:
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		fmt.Println("not listening, on purpose")
		<-sig
		return 0
	case modeOwnPort:
		_, err := net.Listen("tcp", os.Getenv("HELPER_ADDR"))
		fmt.Fprintf(os.Stderr, "Error: listen %v\n", err)
		return 1
	case modeOwnPortHang:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 1
		}
		fmt.Println("listening on", l.Addr())
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		return 0
	case modeGrandchild:
		// The leader hands fds 3.. to a grandchild started through the
		// shim (so LISTEN_PID is the grandchild's) and waits.
		self, _ := os.Executable()
		n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		var files []*os.File
		for i := range n {
			files = append(files, os.NewFile(uintptr(3+i), "listen"))
		}
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), shimEnv+"="+shimExec, "HELPER_MODE="+modeIgnoreTerm, "HELPER_NO_FILE=1")
		cmd.Args = []string{self, self}
		cmd.ExtraFiles = files
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "grandchild:", err)
			return 1
		}
		for _, f := range files {
			f.Close()
		}
		fmt.Printf("grandchild pid %d\n", cmd.Process.Pid)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		return 0 // the grandchild lingers; the group kill ends it
	case modeAcceptRaw:
		return acceptRaw(body)
	case modeCloseIdle, modeShutdownNow, modeDieOnTerm, modeLine, modeTLS, modeCloseOnly, modeServeOnTerm:
		return serveRude(mode, body)
	}
	return serve(mode, body)
}

// serve answers HTTP on every inherited socket. On SIGTERM it drains the way
// a careful app does: keep-alives off (each response says Connection: close),
// listeners closed, then it waits for its connections to finish.
func serve(mode, body string) int {
	// Before the sockets are touched: a reload may retire this worker the
	// moment it is ready, and SIGTERM must then start the drain.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	ls, err := activation.Listeners()
	listening := time.Now() // epoll registration happened in Listeners
	if err != nil || len(ls) == 0 {
		fmt.Fprintln(os.Stderr, "no inherited sockets:", err, os.Getenv("LISTEN_PID"), os.Getpid())
		return 2
	}
	var active atomic.Int64
	var draining atomic.Bool
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/up" && answerUp(w, r) {
				return
			}
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprint(w, body)
		}),
		ConnState: func(c net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				active.Add(1)
			case http.StateClosed, http.StateHijacked:
				active.Add(-1)
			}
		},
	}
	for _, l := range ls {
		go srv.Serve(l)
	}
	fmt.Println("serving", listening.UnixNano())
	switch mode {
	case modeNotifyGrand:
		go func() {
			// sh forks systemd-notify: READY=1 comes from a grandchild.
			out, err := exec.Command("sh", "-c", "systemd-notify --ready --status=warm; true").CombinedOutput()
			fmt.Printf("systemd-notify: %s %v\n", out, err)
		}()
	case modeNotifyFile:
		go func() {
			if os.Getenv("WORKER_ID") == os.Getenv("HELPER_WAIT_WORKER") {
				for {
					if _, err := os.Stat(os.Getenv("HELPER_NOTIFY_FILE")); err == nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			daemon.SdNotify(false, "READY=1\nSTATUS=notified")
		}()
	case modeNotifySelf:
		go func() {
			d, _ := time.ParseDuration(os.Getenv("HELPER_NOTIFY_AFTER"))
			time.Sleep(d)
			daemon.SdNotify(false, "READY=1\nSTATUS=serving")
		}()
	case modeListenCrash:
		d, _ := time.ParseDuration(os.Getenv("HELPER_CRASH_AFTER"))
		time.Sleep(d)
		fmt.Fprintln(os.Stderr, "panic: listen-crash")
		os.Exit(4)
	}
	<-sig
	// No SetKeepAlivesEnabled(false) or Shutdown yet: both close idle
	// keep-alive connections, racing a request the client may be sending.
	// Each connection is closed after its next response instead.
	draining.Store(true)
	if os.Getenv("HELPER_ON_TERM") == "shutdown" {
		// The bug some apps ship: shutdown(2) of the inherited listening
		// socket, which is every generation's.
		for _, l := range ls {
			if sc, ok := l.(syscall.Conn); ok {
				if rc, err := sc.SyscallConn(); err == nil {
					rc.Control(func(fd uintptr) { syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
				}
			}
		}
		fmt.Println("shut down the listening sockets")
	}
	for _, l := range ls {
		l.Close()
	}
	if os.Getenv("HELPER_ON_EXIT") == "unlink" {
		// The other one: removing a unix socket's path on exit.
		defer func() {
			for _, l := range ls {
				if a := l.Addr(); a.Network() == "unix" {
					os.Remove(a.String())
				}
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Second)
	for active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	if mode == modeIgnoreTerm {
		fmt.Println("drained, but not exiting")
		select {}
	}
	return 0
}

// acceptRaw blocks in accept(2) on fd 3 — no epoll — and answers each
// connection with one HTTP response.
func acceptRaw(body string) int {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return 2
	}
	syscall.SetNonblock(3, false)
	for {
		nfd, _, err := syscall.Accept(3)
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return 1
		}
		buf := make([]byte, 4096)
		syscall.Read(nfd, buf)
		resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		syscall.Write(nfd, []byte(resp))
		syscall.Close(nfd)
	}
}

// masterInfo is what the master role prints once its workers serve.
type masterInfo struct {
	Addr string `json:"addr"`
	Pids []int  `json:"pids"`
}

// runMasterRole runs a Master with two workers of HELPER_MASTER_MODE and
// prints masterInfo, then waits to be killed.
func runMasterRole() int {
	socks, err := OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	self, _ := os.Executable()
	m, err := NewMaster(Config{
		Command:   []string{self},
		Workers:   2,
		Env:       []string{"CLUSTER_TEST_ROLE=worker", "HELPER_MODE=" + os.Getenv("HELPER_MASTER_MODE")},
		Readiness: Readiness{Timeout: 20 * time.Second},
	}, socks)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dir, _ := os.Getwd()
	if _, err := m.Reload(context.Background(), GenerationSpec{Dir: dir, ReleaseID: "m"}, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	info := masterInfo{Addr: socks.Addrs()[0]}
	for _, g := range m.Status().Generations {
		for _, w := range g.Workers {
			info.Pids = append(info.Pids, w.PID)
		}
	}
	json.NewEncoder(os.Stdout).Encode(info)
	select {}
}

// --- test-side helpers ---

// testLogger sends the master's log to t.Log.
type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func selfPath(t testing.TB) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	st, ok := readStat(pid)
	return ok && st.state != 'Z'
}

// waitFor polls cond every 10ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func strconvItoa(i int) string { return strconv.Itoa(i) }

// runAdoptRole opens sockets from ADOPT_SPECS ("name=addr,…", may be empty)
// and prints their addresses and names as JSON.
func runAdoptRole() int {
	var specs []ListenSpec
	for _, kv := range strings.Split(os.Getenv("ADOPT_SPECS"), ",") {
		if n, a, ok := strings.Cut(kv, "="); ok {
			specs = append(specs, ListenSpec{Name: n, Address: a})
		}
	}
	socks, err := OpenSockets(specs, nil)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer socks.Close()
	json.NewEncoder(os.Stdout).Encode(map[string][]string{"addrs": socks.Addrs(), "names": socks.Names()})
	return 0
}
