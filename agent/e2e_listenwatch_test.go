package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/loadgen"
)

// listenApp is a Python worker on the inherited sockets, with the bugs the
// listen watch is for, chosen by the release's "mode" file: "shutdown"
// calls shutdown(2) on the inherited TCP socket in its SIGTERM handler,
// "unlink" removes the unix socket's path on exit; anything else closes
// only its own copy. GET /shutdown-listener shuts the TCP socket down at
// once, in steady state. Every response says Connection: close; on SIGTERM
// it stops accepting, finishes what it accepted and exits. Readiness is
// notify: socketserver waits in poll(2), which listen readiness cannot see.
const listenApp = `
import os, signal, socket, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

release = os.environ["DEPLOY_RELEASE_ID"]
mode = open("mode").read().strip() if os.path.exists("mode") else ""
socks = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
for s in socks:
    s.setblocking(False)  # both workers wake on a connection: the loser must not block in accept

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/shutdown-listener"):
            for s in socks:
                if s.family != socket.AF_UNIX:
                    s.shutdown(socket.SHUT_RDWR)
        body = ("hello from %s\n" % release).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(ThreadingHTTPServer):
    daemon_threads = False  # server_close waits for the requests in progress
    def server_bind(self):
        pass
    def handle_error(self, request, client_address):
        pass  # a client gone at the end of the load

servers = []
for s in socks:
    srv = S(("", 0), H, bind_and_activate=False)
    srv.socket.close()
    srv.socket = s
    servers.append(srv)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
stop.wait()
for srv in servers:
    srv.shutdown()
if mode == "shutdown":
    for s in socks:
        if s.family != socket.AF_UNIX:
            s.shutdown(socket.SHUT_RDWR)
paths = [s.getsockname() for s in socks if s.family == socket.AF_UNIX]
for srv in servers:
    srv.server_close()
if mode == "unlink":
    for p in paths:
        os.unlink(p)
`

func listenConfig(root, unixPath string) string {
	c := fmt.Sprintf(`root = %q

[app]
command = ["python3", "app.py"]
workers = 2
drain_timeout = "10s"

[[listen]]
name = "http"
address = "127.0.0.1:0"
`, root)
	if unixPath != "" {
		c += fmt.Sprintf("\n[[listen]]\nname = \"local\"\naddress = \"unix:%s\"\n", unixPath)
	}
	return c + `
[readiness]
mode = "notify"
timeout = "20s"
`
}

func (s *setup) listenRelease(name, mode string) string {
	return s.art.add(s.t, name, map[string]file{"app.py": {body: listenApp}, "mode": {body: mode}})
}

// deployJSON deploys url with --json and returns its result and its events.
func (s *setup) deployJSON(id, url string) (control.Message, []control.Message) {
	s.t.Helper()
	d := s.startCLI("deploy", "--id", id, url)
	res, code := d.result(90 * time.Second)
	if code != 0 || res.Code != control.CodeOK {
		s.t.Fatalf("deploy %s: exit %d: %s", id, code, d.transcript())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return res, append([]control.Message(nil), d.msgs...)
}

// portFailures counts the failures a listening socket that is down
// causes: refused (or no path), and timed out in a queue nobody accepts
// from. About one run in three, this Python app also ends one connection
// in 10k early (an EOF or a reset), with the watch off as well: the tests
// log those and leave them to the app.
func portFailures(r *loadgen.Result) int64 {
	return r.Failed[loadgen.KindRefused] + r.Failed[loadgen.KindTimeout]
}

func listenEvents(msgs []control.Message) []string {
	var out []string
	for _, m := range msgs {
		if m.Stage == "listen" {
			out = append(out, string(m.Kind)+": "+m.Message)
		}
	}
	return out
}

// A worker that shuts down the inherited TCP socket on SIGTERM: the deploy
// that retires it still ends with the new release serving, and says what
// happened; the port serves again; status counts it; later deploys work.
// Then the same in steady state (no deploy): the agent reloads by itself.
func TestE2E_ListenWatchShutdownTCP(t *testing.T) {
	s := newSetup(t, "")
	s.writeConfig(listenConfig(s.root, ""))
	s.start(nil)
	s.deployJSON("v1", s.listenRelease("v1", "shutdown"))
	addr := s.appAddr()
	load := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 4, KeepAlive: false, Duration: 5 * time.Minute})
	waitServed(t, load, 20)

	res, msgs := s.deployJSON("v2", s.listenRelease("v2", ""))
	t.Logf("listen events:\n%s", strings.Join(listenEvents(msgs), "\n"))
	if len(res.ListenLost) != 1 {
		t.Fatalf("result listen_lost: %+v", res.ListenLost)
	}
	l := res.ListenLost[0]
	if l.Socket != "http" || l.Address != addr || l.Reason != "shut down" || l.Restored != "rebound" || l.Stopping != 1 || l.DownS <= 0 || l.ServedBy != 3 {
		t.Errorf("listen_lost: %+v", l)
	}
	t.Logf("outage: refused for at most %.0fms, served again after at most %.0fms", l.RefusedS*1000, l.DownS*1000)
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after the deploy: %q", got)
	}
	st := s.status()
	if st.ListenersLost != 1 || st.LastListenerLost == nil || st.LastListenerLost.ServedBy != 3 {
		t.Errorf("status: lost %d, last %+v", st.ListenersLost, st.LastListenerLost)
	}
	if out := s.mustDo("status").stdout; !strings.Contains(out, "listeners lost") {
		t.Errorf("status text says nothing of it:\n%s", out)
	}
	mid := load.Snapshot()
	t.Logf("failed while the port was down (expected, the port really was down): %d %v", mid.FailedTotal, mid.Failed)

	res, _ = s.deployJSON("v3", s.listenRelease("v3", ""))
	if len(res.ListenLost) != 0 {
		t.Errorf("a clean deploy reports %+v", res.ListenLost)
	}
	waitServed(t, load, 20)
	after := load.Snapshot()
	if n := portFailures(after) - portFailures(mid); n != 0 {
		t.Errorf("%d refused or timed out after the recovery: %v %q", n, after.Failed, after.Errors)
	}

	// Steady state: a worker shuts the socket down while serving; the agent
	// rebinds and reloads v3 with no deploy.
	if _, body, err := httpGetStatus(addr + "/shutdown-listener"); err != nil {
		t.Logf("the request that shut the socket down: %q %v", body, err)
	}
	proctest.WaitFor(t, 60*time.Second, "the agent's own reload onto the new socket", func() bool {
		st := s.status()
		return st.ListenersLost == 2 && st.LastListenerLost.ServedBy != 0
	})
	st = s.status()
	t.Logf("steady state: %s", summarizeLost(st.LastListenerLost))
	if got := proctest.Get(t, addr); got != "hello from v3" {
		t.Errorf("after the recovery: %q", got)
	}
	if h := st.LastDeploys; len(h) == 0 || h[len(h)-1].Op != control.OpReload || h[len(h)-1].Result != "ok" {
		t.Errorf("no recovery reload in the history: %+v", h)
	}
	s.deployJSON("v4", s.listenRelease("v4", ""))
	waitServed(t, load, 20)
	end := load.Stop()
	t.Logf("load: %s", end)
	if got := proctest.Get(t, addr); got != "hello from v4" {
		t.Errorf("after v4: %q", got)
	}
}

// A worker that removes the unix socket's path on exit: the agent puts the
// path back on the same socket; nothing else changes.
func TestE2E_ListenWatchUnlinkUnix(t *testing.T) {
	s := newSetup(t, "")
	path := filepath.Join(s.dir, "app.sock")
	s.writeConfig(listenConfig(s.root, path))
	s.start(nil)
	s.deployJSON("v1", s.listenRelease("v1", "unlink"))
	load := startLoadOpts(t, loadgen.Options{Addr: path, Network: "unix", Conns: 4, KeepAlive: false, Duration: 5 * time.Minute})
	waitServed(t, load, 20)

	res, msgs := s.deployJSON("v2", s.listenRelease("v2", ""))
	t.Logf("listen events:\n%s", strings.Join(listenEvents(msgs), "\n"))
	if len(res.ListenLost) == 0 {
		t.Fatalf("no listen_lost in the result")
	}
	for _, l := range res.ListenLost {
		if l.Socket != "local" || l.Reason != "path removed" || l.Restored != "relinked" || l.Stopping != 1 {
			t.Errorf("listen_lost: %+v", l)
		}
		t.Logf("outage: no path for at most %.0fms", l.RefusedS*1000)
	}
	st := s.status()
	if st.ListenersLost != len(res.ListenLost) {
		t.Errorf("status counts %d, the deploy reported %d", st.ListenersLost, len(res.ListenLost))
	}
	waitServed(t, load, 20)
	mid := load.Snapshot()
	t.Logf("failed while the path was gone (expected): %d %v", mid.FailedTotal, mid.Failed)
	s.deployJSON("v3", s.listenRelease("v3", ""))
	waitServed(t, load, 20)
	end := load.Stop()
	t.Logf("load: %s", end)
	if n := portFailures(end) - portFailures(mid); n != 0 {
		t.Errorf("%d refused or timed out after the recovery: %v %q", n, end.Failed, end.Errors)
	}
	if end.Bodies["hello from v3"] == 0 {
		t.Errorf("v3 never served: %v", end.Bodies)
	}
}

// Workers that close only their own copy: nothing is lost, nothing fails.
func TestE2E_ListenWatchOwnCopyClose(t *testing.T) {
	s := newSetup(t, "")
	s.writeConfig(listenConfig(s.root, ""))
	s.start(nil)
	s.deployJSON("v1", s.listenRelease("v1", ""))
	addr := s.appAddr()
	load := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 4, KeepAlive: false, Duration: 5 * time.Minute})
	waitServed(t, load, 20)
	for _, id := range []string{"v2", "v3"} {
		res, _ := s.deployJSON(id, s.listenRelease(id, ""))
		if len(res.ListenLost) != 0 {
			t.Errorf("deploy %s reports %+v", id, res.ListenLost)
		}
		waitServed(t, load, 20)
	}
	end := load.Stop()
	t.Logf("load: %s", end)
	if n := portFailures(end); n != 0 {
		t.Errorf("%d failed: %v %q", n, end.Failed, end.Errors)
	}
	if st := s.status(); st.ListenersLost != 0 {
		t.Errorf("status counts %d lost", st.ListenersLost)
	}
}
