package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/loadgen"
	"github.com/handoff/handoff/release"

	"github.com/handoff/handoff/internal/proctest"
)

// socketUnit is a stand-in for a systemd .socket unit with a Restart=always
// service: systemd-socket-activate binds the port and execs a shell that
// keeps the listening socket open (as systemd does) and (re)starts the agent
// with LISTEN_PID set to the agent's own pid. (systemd-socket-activate alone
// execs its command in place, so the socket would die with a killed agent.)
type socketUnit struct {
	t       *testing.T
	cmd     *exec.Cmd
	done    chan struct{}
	out     *bytes.Buffer
	pidFile string
	stop    string
}

func (s *setup) startSocketUnit(addr string) *socketUnit {
	s.t.Helper()
	ssa := proctest.LookPath(s.t, "systemd-socket-activate")
	u := &socketUnit{t: s.t, done: make(chan struct{}), out: &bytes.Buffer{},
		pidFile: filepath.Join(s.dir, "agent.pid"), stop: filepath.Join(s.dir, "unit.stop")}
	script := `while :; do
  [ -e '` + u.stop + `' ] && exit 0
  sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0"; LISTEN_PID=$$ exec "$1" run -c "$2"' '` + u.pidFile + `' '` + agentBin + `' '` + s.cfg + `'
  sleep 0.1
done`
	u.cmd = exec.Command(ssa, "-l", addr, "--fdname=http", "sh", "-c", script)
	mu := &lockedBuf{mu: &sync.Mutex{}, buf: u.out}
	u.cmd.Stdout, u.cmd.Stderr = mu, mu
	if err := u.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() { u.cmd.Wait(); close(u.done) }()
	s.t.Cleanup(func() {
		os.WriteFile(u.stop, nil, 0o644)
		if pid := u.agentPID(); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		select {
		case <-u.done:
		case <-time.After(30 * time.Second):
			if pid := u.agentPID(); pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			u.cmd.Process.Kill()
			<-u.done
		}
		if s.t.Failed() {
			mu.mu.Lock()
			s.t.Logf("socket unit log:\n%s", u.out.String())
			mu.mu.Unlock()
		}
	})
	// systemd-socket-activate starts the service on the first connection.
	proctest.WaitFor(s.t, 10*time.Second, "systemd-socket-activate to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return u
}

func (u *socketUnit) agentPID() int {
	b, err := os.ReadFile(u.pidFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stalledServer serves one archive; the first request gets the headers and
// half the body, then stalls until release is closed.
type stalledServer struct {
	srv     *httptest.Server
	sent    chan struct{} // closed once half the body went out
	release chan struct{}
	url     string
}

func newStalledServer(t *testing.T, body []byte) *stalledServer {
	st := &stalledServer{sent: make(chan struct{}), release: make(chan struct{})}
	first := make(chan struct{}, 1)
	first <- struct{}{}
	st.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		select {
		case <-first:
		default:
			w.Write(body)
			return
		}
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		close(st.sent)
		select {
		case <-st.release:
			w.Write(body[len(body)/2:])
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() {
		select {
		case <-st.release:
		default:
			close(st.release)
		}
		st.srv.CloseClientConnections()
		st.srv.Close()
	})
	sum := sha256.Sum256(body)
	st.url = st.srv.URL + "/app.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:])
	return st
}

// killCases are the stages and how the agent is restarted after the kill.
// Every stage runs once, with the restart paths spread over them (both for
// pre-activate), to keep the suite within its time budget.
var killCases = []struct{ stage, mode string }{
	{"downloading", "by-hand"},
	{"unpacking", "socket-unit"},
	{"pre-activate", "by-hand"},
	{"pre-activate", "socket-unit"},
	{"swapped", "socket-unit"},
	{"readiness", "by-hand"},
	{"readiness-broken", "socket-unit"},
	{"retiring", "socket-unit"},
}

// TestFaults_killAgentDuringDeploy kills the agent with SIGKILL at each
// stage of a deploy under keep-alive load, restarts it by hand (the agent
// binds the port itself) or through a socket unit (the port is held across
// the restart), and checks the root and the process tree recovered.
func TestFaults_killAgentDuringDeploy(t *testing.T) {
	t.Parallel()
	for _, c := range killCases {
		t.Run(c.stage+"/"+c.mode, func(t *testing.T) {
			t.Parallel()
			testKillStage(t, c.stage, c.mode)
		})
	}
}

func testKillStage(t *testing.T, stage, mode string) {
	s := newSetup(t, "")
	listenGate := filepath.Join(s.dir, "listen-gate")
	exitGate := filepath.Join(s.dir, "exit-gate")
	hookGate := filepath.Join(s.dir, "hook-gate")
	hookStarted := filepath.Join(s.dir, "hook-started")
	hookRuns := filepath.Join(s.dir, "hook-runs")
	hookPIDs := filepath.Join(s.dir, "hook-pids")
	port := proctest.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)

	// One worker per generation: the kill tests are about the agent, and
	// each generation's Node start is most of their time.
	cfg := strings.Replace(mustRead(t, s.cfg), "workers = 2", "workers = 1", 1)
	if mode == "by-hand" {
		cfg = strings.Replace(cfg, `address = "127.0.0.1:0"`, `address = "`+addr+`"`, 1)
	} else {
		cfg = strings.Replace(cfg, "address = \"127.0.0.1:0\"\n", "", 1)
	}
	// The pre-activate hook of v2 records its run, starts a child and
	// blocks until hookGate exists.
	hook := `[ "$DEPLOY_RELEASE_ID" = v2 ] || exit 0
echo run >> ` + hookRuns + `
sleep 600 & echo "$$ $!" > ` + hookPIDs + `
touch ` + hookStarted + `
while [ ! -e ` + hookGate + ` ]; do sleep 0.05; done
kill $!`
	hookTOML, _ := json.Marshal(hook)
	cfg = strings.Replace(cfg, "[readiness]", "[hooks]\ntimeout = \"60s\"\npre-activate = [[\"sh\", \"-c\", "+string(hookTOML)+"]]\n\n[readiness]", 1)
	if stage == "readiness-broken" {
		// v2 never listens: after the restart it fails its readiness.
		cfg = strings.Replace(cfg, `timeout = "10s"`, `timeout = "3s"`, 1)
	}
	s.writeConfig(cfg)
	if stage != "pre-activate" {
		os.WriteFile(hookGate, nil, 0o644)
	}

	// The releases.
	v1Server := nodeServer(t)
	if stage == "retiring" {
		v1Server = gatedApp(t, "", exitGate, "")
	}
	v1Files := appFiles(t, v1Server, nil)
	v2Server := nodeServer(t)
	if stage == "readiness" || stage == "readiness-broken" {
		v2Server = gatedApp(t, listenGate, "", "")
	}
	v2Files := appFiles(t, v2Server, map[string]file{"VERSION": {body: "2"}})
	if stage == "unpacking" {
		// Unpacking 4000 files takes long enough to be caught in the act;
		// the first entry shows that it started.
		v2Files["0-first"] = file{body: "first"}
		for i := range 4000 {
			v2Files["many/"+strconv.Itoa(i%100)+"/"+strconv.Itoa(i)] = file{body: "x"}
		}
	}
	v1 := s.art.add(t, "v1", v1Files)
	v2 := s.art.addFast(t, "v2", v2Files)
	var stalled *stalledServer
	if stage == "downloading" {
		stalled = newStalledServer(t, tarGz(t, v2Files))
		v2 = stalled.url
	}
	v3 := s.art.app(t, "v3", nil)

	// An agent serving v1 under load.
	var unit *socketUnit
	if mode == "by-hand" {
		s.start(nil)
	} else {
		unit = s.startSocketUnit(addr)
		s.waitSocket()
	}
	s.mustDo("deploy", "--id", "v1", v1)
	st := s.status()
	agentPID := st.PID
	oldPIDs := workerPIDs(st)
	load := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: true, Timeout: 20 * time.Second})
	waitServed(t, load, 20)

	// Deploy v2 and catch it at the stage.
	d := s.startCLI("deploy", "--id", "v2", v2)
	isStep := func(word string) func(control.Message) bool {
		return func(m control.Message) bool {
			return m.Stage == "reload" && m.Kind == "step" && strings.Contains(m.Message, word)
		}
	}
	var newPIDs []int
	switch stage {
	case "downloading":
		<-stalled.sent
		proctest.WaitFor(t, 30*time.Second, "half the archive in .incoming", func() bool {
			m, _ := filepath.Glob(filepath.Join(s.root, "releases", ".incoming", "*", "download", "*"))
			for _, p := range m {
				if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
					return true
				}
			}
			return false
		})
	case "unpacking":
		proctest.WaitFor(t, 60*time.Second, "unpacking to start", func() bool {
			m, _ := filepath.Glob(filepath.Join(s.root, "releases", ".incoming", "*", "tree", "0-first"))
			return len(m) > 0
		})
	case "pre-activate":
		proctest.WaitFor(t, 30*time.Second, "the pre-activate hook to start", func() bool { _, err := os.Stat(hookStarted); return err == nil })
	case "swapped":
		d.waitEvent("the swap", 30*time.Second, func(m control.Message) bool { return m.Stage == "activate" && m.Kind == "done" })
	case "readiness", "readiness-broken":
		started := 0
		d.waitEvent("the new worker started", 30*time.Second, func(m control.Message) bool {
			if m.Stage == "reload" && m.Kind == "worker" && strings.Contains(m.Message, "started") {
				started++
				newPIDs = append(newPIDs, m.PID)
			}
			return started == 1
		})
	case "retiring":
		d.waitEvent("the old generation retiring", 30*time.Second, isStep("retiring"))
	}
	if mode == "by-hand" {
		// The port closes with the agent: stop the load first.
		res := load.Stop()
		if res.FailedTotal != 0 || res.OK == 0 {
			t.Errorf("load up to the kill: %s", res)
		}
	}
	before := load.Snapshot()
	if before.FailedTotal != 0 {
		t.Errorf("load while serving, up to the kill: %s", before)
	}
	killPID(t, agentPID)
	if _, code := d.result(30 * time.Second); code == 0 {
		t.Errorf("the deploy client of a killed agent exited 0")
	}
	if stage == "readiness" {
		os.WriteFile(listenGate, nil, 0o644)
	}

	// What the killed agent left: its stage's debris, and no process.
	incoming := filepath.Join(s.root, "releases", ".incoming")
	if stage == "downloading" || stage == "unpacking" {
		if debris, _ := os.ReadDir(incoming); len(debris) == 0 {
			t.Errorf("%s: nothing in .incoming right after the kill; the kill missed the stage", stage)
		}
	}
	for _, pid := range append(oldPIDs, newPIDs...) {
		proctest.WaitFor(t, 10*time.Second, "worker "+strconv.Itoa(pid)+" of the killed agent to die", func() bool { return !alive(pid) })
	}
	if stage == "pre-activate" {
		var hookPID, childPID int
		if _, err := fmtSscan(mustRead(t, hookPIDs), &hookPID, &childPID); err != nil {
			t.Fatal(err)
		}
		proctest.WaitFor(t, 10*time.Second, "the pre-activate hook to die with the agent", func() bool { return !alive(hookPID) })
		// KNOWN GAP (hooks/, reported): a hook's descendants have no
		// Pdeathsig and no watchdog, so they outlive a killed agent.
		if alive(childPID) {
			t.Logf("known gap: the pre-activate hook's child %d outlived the killed agent", childPID)
			syscall.Kill(childPID, syscall.SIGKILL)
		}
	}

	// Restart.
	if mode == "by-hand" {
		proctest.WaitFor(t, 10*time.Second, "the port to be free (no orphan holding it)", func() bool { return proctest.ListenInode(t, port) == "" })
		s.start(nil)
	} else {
		proctest.WaitFor(t, 30*time.Second, "the socket unit to restart the agent", func() bool {
			pid := unit.agentPID()
			return pid != 0 && pid != agentPID && alive(pid)
		})
		s.waitSocket()
	}
	// Before the swap the agent comes back on v1; after it on v2, unless v2
	// never gets ready: then its interrupted deploy is failed and v1 serves.
	want := "v1"
	if stage == "swapped" || stage == "readiness" || stage == "retiring" {
		want = "v2"
	}
	var cur *control.StatusDoc
	proctest.WaitFor(t, 60*time.Second, "one generation serving after the restart", func() bool {
		cur = s.status()
		if len(cur.Generations) != 1 || cur.Generations[0].State != "serving" || cur.Running != nil {
			return false
		}
		for _, w := range cur.Generations[0].Workers {
			if w.State != "ready" {
				return false
			}
		}
		return true
	})
	if cur.PID == agentPID {
		t.Fatalf("status answered by the killed agent's pid %d", agentPID)
	}
	checkRecovered(t, s, cur, want, map[string]map[string]file{"v1": v1Files, "v2": v2Files})
	checkPortHolders(t, port, cur, unit)
	for _, pid := range workerPIDs(cur) {
		if slices.Contains(oldPIDs, pid) {
			t.Errorf("worker pid %d survived the agent's kill", pid)
		}
	}
	if code, body, err := httpGetStatus(addr); err != nil || code != 200 || body != "hello from "+want {
		t.Errorf("after the restart a new connection got %d %q %v; want hello from %s", code, body, err, want)
	}

	if mode == "socket-unit" {
		waitServed(t, load, 20)
		res := load.Snapshot()
		t.Logf("load across the kill and restart: %s", res)
		if res.Failed["refused"] != 0 {
			t.Errorf("connections refused across the agent's restart under a socket unit: %s", res)
		}
		// The workers die with the agent (by design): a request one of
		// them was answering at that instant is cut (reset or EOF; on a
		// reused keep-alive connection before any answer byte the client
		// retries it, counted as stale). At most one per load connection;
		// nothing is refused or times out.
		lost := res.FailedTotal - before.FailedTotal
		if lost > 2 || res.Failed["reset"]+res.Failed["eof"]-before.Failed["reset"]-before.Failed["eof"] != lost {
			t.Errorf("%d requests failed across the kill and restart; want at most the 2 in flight, cut by reset or EOF: %s", lost, res)
		}
	} else {
		load = startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: true, Timeout: 20 * time.Second})
		waitServed(t, load, 20)
	}

	// The root is usable: the interrupted deploy can be retried, or the
	// next one goes through.
	before = load.Snapshot()
	if stage == "readiness-broken" {
		var ops []string
		for _, e := range cur.LastDeploys {
			ops = append(ops, e.Op+":"+e.ID+":"+e.Result)
		}
		if got := strings.Join(ops, " "); got != "deploy:v1:ok deploy:v2:failed rollback:v1:ok" {
			t.Errorf("history after recovering from the interrupted deploy of a broken v2: %s", got)
		}
	}
	switch {
	case want == "v1" && stage != "readiness-broken":
		os.WriteFile(hookGate, nil, 0o644)
		if stalled != nil {
			close(stalled.release)
		}
		s.mustDo("deploy", "--id", "v2", v2)
		if stage == "pre-activate" {
			if runs := strings.Count(mustRead(t, hookRuns), "run"); runs != 2 {
				t.Errorf("the retried deploy of v2 ran its pre-activate hook %d times in all; the killed run never finished, so the retry must run it again", runs)
			}
		}
		want = "v2"
	default:
		s.mustDo("deploy", "--id", "v3", v3)
		want = "v3"
	}
	if code, body, err := httpGetStatus(addr); err != nil || body != "hello from "+want {
		t.Errorf("after the follow-up deploy: %d %q %v", code, body, err)
	}
	waitServed(t, load, 10)
	if res := load.Snapshot(); res.FailedTotal != before.FailedTotal {
		t.Errorf("follow-up deploy: %d failed requests: %s", res.FailedTotal-before.FailedTotal, res)
	}
}

func fmtSscan(s string, a ...any) (int, error) {
	f := strings.Fields(s)
	for i := range a {
		if i >= len(f) {
			return i, os.ErrInvalid
		}
		n, err := strconv.Atoi(f[i])
		if err != nil {
			return i, err
		}
		*(a[i].(*int)) = n
	}
	return len(a), nil
}

// checkRecovered checks the root after a restart: .incoming empty, current
// names want and holds every file of its archive, state.json parses and
// agrees with the releases on disk, status agrees with the link.
func checkRecovered(t *testing.T, s *setup, st *control.StatusDoc, want string, archives map[string]map[string]file) {
	t.Helper()
	if debris, _ := os.ReadDir(filepath.Join(s.root, "releases", ".incoming")); len(debris) != 0 {
		t.Errorf("releases/.incoming not empty after the restart: %v", debris)
	}
	link, err := os.Readlink(filepath.Join(s.root, "current"))
	if err != nil || link != "releases/"+want {
		t.Errorf("current -> %q (%v), want releases/%s", link, err, want)
	}
	if st.Current != want || st.Generations[0].ReleaseID != want {
		t.Errorf("status: current %q, generation of %q; want %s", st.Current, st.Generations[0].ReleaseID, want)
	}
	for name, f := range archives[want] {
		b, err := os.ReadFile(filepath.Join(s.root, "releases", want, name))
		if err != nil || len(b) != len(f.body) {
			t.Errorf("current release %s incomplete: %s: %d bytes, %v", want, name, len(b), err)
		}
	}
	raw, err := os.ReadFile(filepath.Join(s.root, ".agent", "state.json"))
	if err != nil {
		t.Fatalf("state.json: %v", err)
	}
	var state struct {
		Version int             `json:"version"`
		Events  []release.Event `json:"events"`
	}
	if err := json.Unmarshal(raw, &state); err != nil {
		t.Fatalf("state.json does not parse: %v\n%s", err, raw)
	}
	onDisk := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(s.root, "releases"))
	for _, e := range entries {
		if e.Name() == ".incoming" {
			continue
		}
		onDisk[e.Name()] = true
		if _, err := os.Stat(filepath.Join(s.root, ".agent", "digests", e.Name())); err != nil {
			t.Errorf("releases/%s has no content digest: %v", e.Name(), err)
		}
	}
	var lastOK string
	for _, ev := range state.Events {
		if ev.Result == "ok" {
			lastOK = ev.ID
		}
	}
	servedOK := false
	for _, ev := range state.Events {
		servedOK = servedOK || (ev.ID == want && ev.Result == "ok")
	}
	if !servedOK {
		t.Errorf("state.json has no successful deploy of %s, which serves now: %s", want, raw)
	}
	if lastOK == "" || !onDisk[lastOK] {
		t.Errorf("state.json's last successful release %q is not on disk (%v)", lastOK, onDisk)
	}
	if len(state.Events) != len(st.LastDeploys) && len(st.LastDeploys) < lastDeploys {
		t.Errorf("status shows %d history entries, state.json has %d", len(st.LastDeploys), len(state.Events))
	}
}

// checkPortHolders checks that only the agent, its workers and (with a
// socket unit) the unit's shell hold the listening socket.
func checkPortHolders(t *testing.T, port int, st *control.StatusDoc, unit *socketUnit) {
	t.Helper()
	ino := proctest.ListenInode(t, port)
	if ino == "" {
		t.Fatalf("nothing listens on port %d", port)
	}
	allowed := append([]int{st.PID}, workerPIDs(st)...)
	if unit != nil {
		allowed = append(allowed, unit.cmd.Process.Pid)
	}
	for _, pid := range proctest.SocketHolders(ino) {
		if !slices.Contains(allowed, pid) {
			comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			t.Errorf("pid %d (%q) holds the listening socket; only the agent %d and its workers %v may", pid, bytes.ReplaceAll(comm, []byte{0}, []byte{' '}), st.PID, workerPIDs(st))
		}
	}
}
