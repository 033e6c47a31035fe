package examples_test

// Each example runs for real under systemd-socket-activate (which binds
// 127.0.0.1:PORT, then on the first connection execs the app with
// LISTEN_FDS=1, LISTEN_PID=its pid, LISTEN_FDNAMES=http), is driven by a raw
// HTTP/1.1 client on net.Conn (no Transport, so no hidden retries), and is
// stopped with SIGTERM. The tests check the body, the readiness mode each
// recipe claims (an epoll trace of the listening socket in /proc for
// `listen`, READY=1 on a real NOTIFY_SOCKET for `notify`), and the graceful
// stop: a keep-alive connection idle at the signal gets its next request
// answered with `Connection: close` instead of being reset.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/loadgen"
	"golang.org/x/sys/unix"
)

const installHint = "run scripts/install-examples-deps.sh (as root) to install it"

// example describes one app under examples/ and what its recipe claims.
type example struct {
	name string
	dir  string // under examples/
	// command is resolved by resolve(); its first element is looked up in PATH.
	command []string
	// keepAlive: the server keeps a connection open between requests.
	keepAlive bool
	// listenReady: the listening socket shows up in an epoll set of a process
	// of the app's tree (the agent's `listen` readiness); false asserts that
	// it does not, so the recipe must use notify.
	listenReady bool
	// notifyReady: the app sends READY=1 to NOTIFY_SOCKET.
	notifyReady bool
	// stopLine, when set, is the output line that shows the app has started
	// its graceful stop; otherwise that is seen as the listening socket no
	// longer open in any process of the app.
	stopLine string
	// hasDefaultShutdown: HANDOFF_EXAMPLE_SHUTDOWN=default selects the
	// server's default stop, for comparison.
	hasDefaultShutdown bool
}

func examples(t *testing.T) []example {
	t.Helper()
	goBin := buildGoExample(t)
	return []example{
		{name: "node", dir: "node", command: []string{"node", "server.js"},
			keepAlive: true, listenReady: true, hasDefaultShutdown: true},
		{name: "go", dir: "go", command: []string{goBin},
			keepAlive: true, listenReady: true, notifyReady: true, hasDefaultShutdown: true},
		{name: "python-stdlib", dir: "python", command: []string{"python3", "server.py"},
			keepAlive: true, listenReady: true, notifyReady: true},
		{name: "python-gunicorn", dir: "python", command: []string{"gunicorn", "wsgi:app"},
			keepAlive: false, listenReady: true, notifyReady: true},
		{name: "ruby-puma", dir: "ruby", command: []string{"puma", "-C", "puma.rb"},
			keepAlive: true, listenReady: false, notifyReady: true,
			stopLine: "handoff-grace: stopping", hasDefaultShutdown: true},
	}
}

var (
	goBuildOnce sync.Once
	goBuildPath string
	goBuildErr  error
	goBuildDir  string
)

// buildGoExample builds examples/go once per test binary run.
func buildGoExample(t *testing.T) string {
	t.Helper()
	goBuildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "handoff-examples-")
		if err != nil {
			goBuildErr = err
			return
		}
		goBuildDir = dir
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		goBuildPath = filepath.Join(dir, "goexample")
		cmd := exec.Command(goTool, "build", "-o", goBuildPath, "./go")
		out, err := cmd.CombinedOutput()
		if err != nil {
			goBuildErr = fmt.Errorf("go build ./go: %w\n%s", err, out)
		}
	})
	if goBuildErr != nil {
		t.Fatal(goBuildErr)
	}
	return goBuildPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if goBuildDir != "" {
		os.RemoveAll(goBuildDir)
	}
	os.Exit(code)
}

// resolve finds the tools an example needs, failing (never skipping) with a
// hint when one is missing.
func resolve(t *testing.T, ex example) []string {
	t.Helper()
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Fatalf("systemd-socket-activate not found: %s", installHint)
	}
	cmd := append([]string(nil), ex.command...)
	p, err := exec.LookPath(cmd[0])
	if err != nil {
		t.Fatalf("%s not found for the %s example: %s", cmd[0], ex.name, installHint)
	}
	cmd[0] = p
	if ex.name == "ruby-puma" {
		// puma sends READY=1 only with the sd_notify gem (ruby-sd-notify).
		if out, err := exec.Command("ruby", "-e", `require "sd_notify"`).CombinedOutput(); err != nil {
			t.Fatalf("ruby cannot load sd_notify (%v: %s): %s", err, bytes.TrimSpace(out), installHint)
		}
	}
	return cmd
}

func TestExamples_GracefulStop(t *testing.T) {
	for _, ex := range examples(t) {
		t.Run(ex.name, func(t *testing.T) {
			testGracefulStop(t, ex)
		})
	}
}

func testGracefulStop(t *testing.T, ex example) {
	release := fmt.Sprintf("r%d", time.Now().UnixNano()%1_000_000_000)
	// A grace of 3 s rather than the default 1 s: on a loaded machine the
	// test's next request on the idle connection may come later than 1 s
	// after SIGTERM, and would then meet the close it is checking against.
	//
	// One gunicorn worker (GUNICORN_WORKERS=1): the readiness check sees the
	// first worker's epoll set while gunicorn may still be forking the
	// second, and gunicorn 20.1 loses a SIGTERM that reaches a worker before
	// it has set its own handlers; that worker then runs until
	// graceful_timeout (10 s), longer than this test waits.
	a := startApp(t, ex, release, []string{"HANDOFF_IDLE_GRACE_MS=3000", "GUNICORN_WORKERS=1"})
	want := "hello from " + release + "\n"

	// The first request also makes systemd-socket-activate exec the app.
	connA := a.dial(t)
	resp := connA.get(t)
	checkResponse(t, "first request", resp, want)
	if ex.keepAlive && resp.close {
		t.Fatalf("first response says Connection: close; the %s example should keep connections alive", ex.name)
	}
	if !ex.keepAlive {
		if !resp.close {
			t.Fatalf("first response keeps the connection alive; the %s recipe turns keep-alive off", ex.name)
		}
		connA.expectEOF(t, 5*time.Second)
	}

	checkReadiness(t, a, ex)

	var connB *client
	if ex.keepAlive {
		connB = a.dial(t)
		checkResponse(t, "request on a second connection", connB.get(t), want)
	}

	signalAt := time.Now()
	if err := a.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	if ex.stopLine != "" {
		proctest.WaitFor(t, 10*time.Second, "the stop line "+strconv.Quote(ex.stopLine), func() bool {
			return strings.Contains(a.Output(), ex.stopLine)
		})
	} else {
		proctest.WaitFor(t, 10*time.Second, "the app to close its listening socket (stop accepting)", func() bool {
			return !a.listenerOpen()
		})
	}

	if ex.keepAlive {
		// connA was idle when SIGTERM arrived: its next request is answered,
		// with Connection: close, and then the server closes it.
		resp := connA.get(t)
		checkResponse(t, "request on a connection idle at SIGTERM", resp, want)
		if !resp.close {
			t.Fatalf("response after SIGTERM lacks Connection: close (headers %v)", resp.header)
		}
		connA.expectEOF(t, 10*time.Second)

		// connB stays idle: the server closes it (a FIN, not a reset), and
		// only after the grace, not at once.
		connB.expectEOF(t, 10*time.Second)
		if d := time.Since(signalAt); d < 500*time.Millisecond {
			t.Fatalf("idle connection closed %v after SIGTERM; want about 1 s of grace", d)
		}
	}

	a.ExpectExit0(t, 15*time.Second)
}

// TestExamples_StopUnderKeepAliveLoad stops an example the way a reload
// does: a successor (here a small Go server in the test) accepts on the same
// listening socket, as many keep-alive clients as puma has threads (4) keep
// sending without a pause, and the app gets SIGTERM. Not one request may
// fail, and the app must end on its own, with status 0, well inside the
// agent's drain_timeout. puma 5 used to hang here until it was killed: its
// accept thread, woken by a connection the successor then took, waited for
// a free pool thread; each pool thread stayed with a client that never
// paused, so the stop command was never read.
func TestExamples_StopUnderKeepAliveLoad(t *testing.T) {
	for _, ex := range examples(t) {
		if !ex.keepAlive {
			continue
		}
		t.Run(ex.name, func(t *testing.T) {
			release := fmt.Sprintf("k%d", time.Now().UnixNano()%1_000_000_000)
			a := startApp(t, ex, release, nil)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			load, err := loadgen.Start(ctx, loadgen.Options{Addr: a.addr, Conns: 4, KeepAlive: true, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer load.Stop()
			proctest.WaitFor(t, 30*time.Second, "the load to get 400 answers", func() bool { return load.Snapshot().OK >= 400 })

			successor := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, "hello from the successor\n")
			})}
			shared := a.shareListener(t)
			served := make(chan struct{})
			go func() { successor.Serve(shared); close(served) }()
			defer func() { successor.Close(); <-served }()
			// A new client: the successor takes it, after it woke the app's
			// accept loop too.
			if got := proctest.Get(t, a.addr); got != "hello from "+release && got != "hello from the successor" {
				t.Fatalf("a new connection got %q", got)
			}

			if err := a.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			signalAt := time.Now()
			a.ExpectExit0(t, 10*time.Second)
			stopped := time.Since(signalAt)
			proctest.WaitFor(t, 10*time.Second, "the successor to answer the load", func() bool {
				return load.Snapshot().Bodies["hello from the successor"] >= 100
			})
			res := load.Stop()
			t.Logf("exited %v after SIGTERM; load: %s", stopped.Round(time.Millisecond), res)
			if res.FailedTotal != 0 || res.StaleKeepAlive != 0 {
				t.Errorf("requests lost across the stop: %s", res)
			}
		})
	}
}

// shareListener returns the app's listening socket, taken from the running
// app with pidfd_getfd(2): the same open file description, so connections
// are shared between the app and whoever accepts on the returned listener.
func (a *app) shareListener(t *testing.T) net.Listener {
	t.Helper()
	pid := a.Cmd.Process.Pid // systemd-socket-activate execs the app in place
	fds := proctest.SocketFDs(pid, a.inode)
	if len(fds) == 0 {
		t.Fatalf("pid %d holds no fd on the listening socket (inode %s)", pid, a.inode)
	}
	target := fds[0]
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, target, 0)
	if err != nil {
		t.Fatalf("pidfd_getfd %d fd %d: %v", pid, target, err)
	}
	f := os.NewFile(uintptr(fd), "shared-listener")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		t.Fatalf("listener from pid %d fd %d: %v", pid, target, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestExamples_DefaultShutdown shows what the graceful stop avoids: with the
// server's default stop, a keep-alive connection idle at SIGTERM is closed
// under the client, whose next request gets no response at all.
func TestExamples_DefaultShutdown(t *testing.T) {
	for _, ex := range examples(t) {
		if !ex.hasDefaultShutdown {
			continue
		}
		t.Run(ex.name, func(t *testing.T) {
			release := fmt.Sprintf("d%d", time.Now().UnixNano()%1_000_000_000)
			a := startApp(t, ex, release, []string{"HANDOFF_EXAMPLE_SHUTDOWN=default"})
			conn := a.dial(t)
			checkResponse(t, "first request", conn.get(t), "hello from "+release+"\n")
			if err := a.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatalf("SIGTERM: %v", err)
			}
			a.ExpectExit0(t, 15*time.Second)
			if resp, err := conn.tryGet(); err == nil {
				t.Fatalf("default shutdown: the idle connection still answered (%d %q)", resp.status, resp.body)
			}
		})
	}
}

// checkReadiness verifies the readiness mode the example's recipe claims.
func checkReadiness(t *testing.T, a *app, ex example) {
	t.Helper()
	if ex.notifyReady {
		select {
		case msg := <-a.ready:
			t.Logf("%s: NOTIFY_SOCKET got %q", ex.name, msg)
		case <-time.After(20 * time.Second):
			t.Fatalf("no READY=1 on NOTIFY_SOCKET within 20s; output:\n%s", a.Output())
		}
	}
	if ex.listenReady {
		proctest.WaitFor(t, 10*time.Second, "the listening socket in an epoll set (listen readiness)", a.epollTrace)
		t.Logf("%s: epoll trace of the listening socket found", ex.name)
	} else if a.epollTrace() {
		t.Fatalf("%s: the listening socket is in an epoll set; its recipe says listen readiness does not work", ex.name)
	}
}

// app is one example started under systemd-socket-activate.
type app struct {
	*proctest.Proc // systemd-socket-activate, which execs the app in place
	addr           string
	inode          string      // the listening socket's inode, decimal
	ready          chan string // READY=1 datagrams from NOTIFY_SOCKET
}

// startApp starts the example on a free 127.0.0.1 port; a port taken
// between picking and binding is retried with another.
func startApp(t *testing.T, ex example, release string, env []string) *app {
	t.Helper()
	command := resolve(t, ex)
	notifyPath, ready := notifySocket(t)
	var lastOut string
	for attempt := 0; attempt < 5; attempt++ {
		a, ok := tryStart(t, ex, command, release, env, notifyPath)
		if ok {
			a.ready = ready
			return a
		}
		lastOut = a.Output()
	}
	t.Fatalf("systemd-socket-activate could not bind a port in 5 attempts; last output:\n%s", lastOut)
	return nil
}

func tryStart(t *testing.T, ex example, command []string, release string, env []string, notifyPath string) (*app, bool) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(proctest.FreePort(t)))

	args := []string{"-l", addr, "--fdname=http",
		"-E", "DEPLOY_RELEASE_ID=" + release,
		"-E", "NOTIFY_SOCKET=" + notifyPath}
	for _, e := range env {
		args = append(args, "-E", e)
	}
	args = append(args, command...)
	cmd := exec.Command("systemd-socket-activate", args...)
	cmd.Dir = ex.dir
	a := &app{Proc: proctest.Start(t, ex.name, cmd), addr: addr} // own group: gunicorn forks workers

	listening := "Listening on " + addr + " as 3."
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.Output(), listening) {
		select {
		case <-a.Done():
			return a, false // most likely the port was taken meanwhile
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd-socket-activate did not bind %s within 10s; output:\n%s", addr, a.Output())
		}
	}
	a.inode = listenInode(t, addr)
	return a, true
}

// tree lists the pids of the app and its descendants.
func (a *app) tree() []int {
	root := a.Cmd.Process.Pid
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		parent[pid] = ppid
	}
	in := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for pid, ppid := range parent {
			if !in[pid] && in[ppid] {
				in[pid] = true
				changed = true
			}
		}
	}
	pids := make([]int, 0, len(in))
	for pid := range in {
		if _, ok := parent[pid]; ok {
			pids = append(pids, pid)
		}
	}
	return pids
}

// listenerOpen reports whether any process of the app holds an fd on the
// listening socket.
func (a *app) listenerOpen() bool {
	for _, pid := range a.tree() {
		if len(proctest.SocketFDs(pid, a.inode)) > 0 {
			return true
		}
	}
	return false
}

// epollTrace reports whether an epoll fd of any process of the app watches
// the listening socket: a "tfd: N events: … ino:<hex inode>" line in
// /proc/<pid>/fdinfo/<epoll fd>, what the agent's listen readiness reads.
func (a *app) epollTrace() bool {
	ino, err := strconv.ParseUint(a.inode, 10, 64)
	if err != nil {
		return false
	}
	want := fmt.Sprintf("ino:%x", ino)
	for _, pid := range a.tree() {
		dir := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
		fds, _ := os.ReadDir(dir)
		for _, fd := range fds {
			b, err := os.ReadFile(filepath.Join(dir, fd.Name()))
			if err != nil || !bytes.Contains(b, []byte("tfd:")) {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(line, "tfd:") && containsField(line, want) {
					return true
				}
			}
		}
	}
	return false
}

func containsField(line, field string) bool {
	for _, f := range strings.Fields(line) {
		if f == field {
			return true
		}
	}
	return false
}

// listenInode finds the inode of the TCP socket listening on addr in
// /proc/net/tcp.
func listenInode(t *testing.T, addr string) string {
	t.Helper()
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	ino := proctest.ListenInode(t, port)
	if ino == "" {
		t.Fatalf("no listening socket on %s in /proc/net/tcp", addr)
	}
	return ino
}

// notifySocket listens on a unixgram socket, as a service manager would, and
// delivers each datagram holding READY=1 on the returned channel.
func notifySocket(t *testing.T) (string, chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	ready := make(chan string, 16)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			for _, line := range strings.Split(msg, "\n") {
				if line == "READY=1" {
					select {
					case ready <- msg:
					default:
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-stopped
	})
	return path, ready
}

// client is a raw HTTP/1.1 client on one TCP connection.
type client struct {
	conn net.Conn
	br   *bufio.Reader
}

type response struct {
	status int
	header http.Header
	body   string
	close  bool // the server said Connection: close
}

func (a *app) dial(t *testing.T) *client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", a.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", a.addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{conn: conn, br: bufio.NewReader(conn)}
}

func (c *client) get(t *testing.T) response {
	t.Helper()
	resp, err := c.tryGet()
	if err != nil {
		t.Fatalf("GET / on %v: %v", c.conn.LocalAddr(), err)
	}
	return resp
}

// tryGet sends one request and reads one response, with a deadline (an app
// under systemd-socket-activate may still be booting on the first request).
func (c *client) tryGet() (response, error) {
	c.conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(c.conn, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: handoff-examples-test\r\n\r\n"); err != nil {
		return response{}, fmt.Errorf("write: %w", err)
	}
	// http.ReadResponse only parses bytes off this connection; nothing is
	// retried behind our back.
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return response{}, fmt.Errorf("read response: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("read body: %w", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(body), close: resp.Close}, nil
}

// expectEOF waits for the server to close the connection with a FIN; a
// reset or unexpected bytes fail the test.
func (c *client) expectEOF(t *testing.T, within time.Duration) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(within))
	defer c.conn.SetReadDeadline(time.Time{})
	b, err := c.br.ReadByte()
	switch {
	case err == nil:
		t.Fatalf("expected the server to close the connection, got byte %q", b)
	case errors.Is(err, io.EOF):
	case errors.Is(err, syscall.ECONNRESET):
		t.Fatalf("connection reset by the server; want a clean close (FIN)")
	default:
		t.Fatalf("waiting for the server to close the connection: %v", err)
	}
}

func checkResponse(t *testing.T, what string, r response, wantBody string) {
	t.Helper()
	if r.status != http.StatusOK || r.body != wantBody {
		t.Fatalf("%s: got %d %q, want 200 %q", what, r.status, r.body, wantBody)
	}
}
