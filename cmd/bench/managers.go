package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// manager is one way of running the sample app: alone, under handoff, under
// the cluster master fixture, under pm2.
type manager interface {
	name() string
	addr() string
	pid() int            // the manager's own process; 0 when there is none
	workers() []procInfo // the app processes serving now
	reload(n int) action // the standard reload, bringing up generation n
	stop() error
}

// bodyHasToken reports whether a response body names tok as a whole word
// ("hello from r12" has r12, not r1).
func bodyHasToken(tok string) func(string) bool {
	return func(body string) bool {
		return slices.Contains(strings.FieldsFunc(body, func(r rune) bool {
			return r == ' ' || r == '\t' || r == '\n' || r == ',' || r == ';' || r == '(' || r == ')' || r == '=' || r == ':'
		}), tok)
	}
}

// probe sends one GET on a fresh connection and returns the body.
func probe(addr string) (string, error) {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET http://%s/: %s", addr, resp.Status)
	}
	return strings.TrimSpace(string(b)), nil
}

// waitServing polls addr until it answers 200 (and, with want non-nil, a
// body want accepts), or timeout.
func waitServing(ctx context.Context, addr string, timeout time.Duration, want func(string) bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		body, err := probe(addr)
		if err == nil && (want == nil || want(body)) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("body %q", body)
		}
		last = err
		if !sleepCtx(ctx, 5*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("wait for %s: %w after %v: %v", addr, errTimeout, timeout, last)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// listenFile binds addr and returns the listening socket as a file to pass
// as fd 3 (a systemd socket unit's part).
func listenFile(addr string) (*os.File, string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen %s: %w", addr, err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return nil, "", fmt.Errorf("listen %s: %w", addr, err)
	}
	return f, ln.Addr().String(), nil
}

// socketActivated wraps argv so that it runs with the socket on fd 3 the way
// systemd passes it: LISTEN_FDS=1, LISTEN_FDNAMES=http and LISTEN_PID equal
// to its own pid (sh sets it, then execs in place, keeping the pid).
func socketActivated(argv []string) []string {
	return append([]string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$@"`, "sh"}, argv...)
}

var socketEnv = []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=http"}

// measureBoot starts the app alone on a fresh port and times exec → first
// 200 response, the app's boot time; median of n runs.
func (b *bench) measureBoot(ctx context.Context, n int) (time.Duration, error) {
	var runs []time.Duration
	for i := 0; i < n; i++ {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		t0 := time.Now()
		c, err := b.procs.start(spawn{name: fmt.Sprintf("boot-%d", i), argv: []string{b.node, b.fixture("app.js")},
			env: []string{"PORT=" + strconv.Itoa(port), "DEPLOY_RELEASE_ID=boot"}, dir: b.fixtures})
		if err != nil {
			return 0, err
		}
		err = waitServing(ctx, addr, 10*time.Second, nil)
		d := time.Since(t0)
		b.procs.stop(c, 5*time.Second)
		if err != nil {
			return 0, fmt.Errorf("app boot: %w: %s", err, tail(c.logPath(b.procs), 5))
		}
		runs = append(runs, d)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i] < runs[j] })
	return runs[len(runs)/2], nil
}

// aloneMgr is two app processes sharing one listening socket that the bench
// holds, with no manager at all: the throughput ceiling for two workers.
type aloneMgr struct {
	b    *bench
	ad   string
	kids []*child
}

func (b *bench) startAlone(ctx context.Context) (*aloneMgr, error) {
	f, addr, err := listenFile("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer f.Close() // the children hold it; the bench does not accept
	m := &aloneMgr{b: b, ad: addr}
	for i := 0; i < b.workers; i++ {
		c, err := b.procs.start(spawn{name: fmt.Sprintf("alone-%d", i), argv: socketActivated([]string{b.node, b.fixture("app.js")}),
			env: append([]string{"DEPLOY_RELEASE_ID=alone", "WORKER_ID=" + strconv.Itoa(i)}, socketEnv...), dir: b.fixtures, files: []*os.File{f}})
		if err != nil {
			m.stop()
			return nil, err
		}
		m.kids = append(m.kids, c)
	}
	if err := waitServing(ctx, addr, 15*time.Second, nil); err != nil {
		m.stop()
		return nil, fmt.Errorf("alone: %w: %s", err, tail(m.kids[0].logPath(b.procs), 5))
	}
	return m, nil
}

func (m *aloneMgr) name() string { return "alone" }
func (m *aloneMgr) addr() string { return m.ad }
func (m *aloneMgr) pid() int     { return 0 }
func (m *aloneMgr) workers() []procInfo {
	var out []procInfo
	for _, c := range m.kids {
		if p, err := readProc(c.pid()); err == nil && !c.exited() {
			out = append(out, p)
		}
	}
	return out
}
func (m *aloneMgr) reload(int) action { return action{} }
func (m *aloneMgr) stop() error {
	for _, c := range m.kids {
		m.b.procs.stop(c, 5*time.Second)
	}
	return nil
}

// clusterMgr runs the seed-style cluster master fixture: SIGHUP forks a new
// set and retires the old one once a new worker listens.
type clusterMgr struct {
	b      *bench
	ad     string
	master *child
	gen    int // the master's generation number: 1 at start, +1 per SIGHUP
}

func (b *bench) startCluster(ctx context.Context) (*clusterMgr, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &clusterMgr{b: b, ad: fmt.Sprintf("127.0.0.1:%d", port), gen: 1}
	m.master, err = b.procs.start(spawn{name: "cluster-master", argv: []string{b.node, b.fixture("cluster-master.js")},
		env: []string{"PORT=" + strconv.Itoa(port), "WORKERS=" + strconv.Itoa(b.workers), "APP=" + b.fixture("app.js")}, dir: b.fixtures})
	if err != nil {
		return nil, err
	}
	if err := waitServing(ctx, m.ad, 15*time.Second, nil); err != nil {
		m.stop()
		return nil, fmt.Errorf("cluster-master: %w: %s", err, tail(m.master.logPath(b.procs), 5))
	}
	return m, nil
}

func (m *clusterMgr) name() string        { return "cluster-master" }
func (m *clusterMgr) addr() string        { return m.ad }
func (m *clusterMgr) pid() int            { return m.master.pid() }
func (m *clusterMgr) workers() []procInfo { return descendants(m.master.pid()) }
func (m *clusterMgr) reload(int) action {
	m.gen++
	gen := m.gen
	return action{
		op: "SIGHUP",
		do: func(ctx context.Context) (marks, error) {
			t0 := time.Now()
			if err := syscall.Kill(m.master.pid(), syscall.SIGHUP); err != nil {
				return marks{}, fmt.Errorf("cluster-master: SIGHUP: %w", err)
			}
			return m.waitReloaded(ctx, t0, gen)
		},
		isNew: bodyHasToken("gen" + strconv.Itoa(gen)),
	}
}

// waitReloaded reads the master's JSON lines for generation gen's
// "reloaded" event and returns t0 + its ready_ms (counted from the SIGHUP).
func (m *clusterMgr) waitReloaded(ctx context.Context, t0 time.Time, gen int) (marks, error) {
	deadline := t0.Add(m.b.readyTimeout + 5*time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(m.master.logPath(m.b.procs))
		for _, line := range strings.Split(string(b), "\n") {
			var ev struct {
				Event      string  `json:"event"`
				Generation int     `json:"generation"`
				ReadyMS    float64 `json:"ready_ms"`
			}
			if json.Unmarshal([]byte(line), &ev) == nil && ev.Event == "reloaded" && ev.Generation == gen {
				return marks{ready: t0.Add(time.Duration(ev.ReadyMS * float64(time.Millisecond)))}, nil
			}
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return marks{}, ctx.Err()
		}
	}
	return marks{}, fmt.Errorf("cluster-master: generation %d not reloaded after %v", gen, m.b.readyTimeout+5*time.Second)
}
func (m *clusterMgr) stop() error {
	m.b.procs.stop(m.master, 10*time.Second)
	return nil
}

// pm2Mgr runs the app in pm2's cluster mode from a private PM2_HOME.
type pm2Mgr struct {
	b      *bench
	ad     string
	port   int
	home   string
	daemon procInfo
	seq    int
}

func (b *bench) startPM2(ctx context.Context) (*pm2Mgr, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &pm2Mgr{b: b, ad: fmt.Sprintf("127.0.0.1:%d", port), port: port, home: filepath.Join(b.work, "pm2-home")}
	if err := os.MkdirAll(m.home, 0o755); err != nil {
		return nil, err
	}
	// pm2 checks for updates over the network on first use unless told not
	// to; the bench stays on loopback.
	if err := os.WriteFile(filepath.Join(m.home, "touch"), []byte("0"), 0o644); err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() { m.stop() })
	if err := m.cli(ctx, "start", "DEPLOY_RELEASE_ID=g0", b.fixture("app.js"), "-i", strconv.Itoa(b.workers), "--name", "app"); err != nil {
		return nil, err
	}
	pidb, err := os.ReadFile(filepath.Join(m.home, "pm2.pid"))
	if err != nil {
		return nil, fmt.Errorf("pm2: daemon pid: %w", err)
	}
	dpid, err := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if err != nil {
		return nil, fmt.Errorf("pm2: daemon pid: %w", err)
	}
	if m.daemon, err = readProc(dpid); err != nil {
		return nil, fmt.Errorf("pm2: daemon: %w", err)
	}
	if err := waitServing(ctx, m.ad, 15*time.Second, nil); err != nil {
		return nil, fmt.Errorf("pm2: %w", err)
	}
	return m, nil
}

func (m *pm2Mgr) cli(ctx context.Context, args ...string) error {
	m.seq++
	env := []string{"PM2_HOME=" + m.home, "PM2_DISABLE_VERSION_CHECK=1", "PORT=" + strconv.Itoa(m.port)}
	var argv []string
	for _, a := range args {
		if strings.HasPrefix(a, "DEPLOY_RELEASE_ID=") {
			env = append(env, a)
			continue
		}
		argv = append(argv, a)
	}
	return m.b.procs.run(ctx, spawn{name: fmt.Sprintf("pm2-%02d-%s", m.seq, argv[0]), argv: append([]string{m.b.pm2}, argv...),
		env: env, dir: m.b.fixtures}, 60*time.Second)
}

func (m *pm2Mgr) name() string { return "pm2" }
func (m *pm2Mgr) addr() string { return m.ad }
func (m *pm2Mgr) pid() int     { return m.daemon.PID }
func (m *pm2Mgr) workers() []procInfo {
	if m.daemon.PID == 0 {
		return nil
	}
	return descendants(m.daemon.PID)
}
func (m *pm2Mgr) reload(n int) action {
	id := "g" + strconv.Itoa(n)
	return action{
		op: "pm2 reload",
		do: func(ctx context.Context) (marks, error) {
			return marks{}, m.cli(ctx, "reload", "DEPLOY_RELEASE_ID="+id, "app", "--update-env")
		},
		isNew: bodyHasToken(id),
	}
}

// stop runs `pm2 kill`, then kills whatever of the daemon's tree is left.
func (m *pm2Mgr) stop() error {
	if m.daemon.PID == 0 {
		return nil
	}
	tree := append([]procInfo{m.daemon}, descendants(m.daemon.PID)...)
	err := m.cli(context.Background(), "kill")
	m.b.procs.killLeftovers(tree)
	m.daemon = procInfo{}
	return err
}

// agentEvent is the part of a line of `agent deploy --json` the bench reads.
type agentEvent struct {
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Stage   string    `json:"stage"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
	Code    string    `json:"code"`
	Error   string    `json:"error"`
}

// readyTime finds, in an agent's --json event stream, when the new
// generation became ready: the reload stage's "generation N: quorum" step,
// else its last "k/k workers ready" line.
func readyTime(events []agentEvent) time.Time {
	var last time.Time
	for _, e := range events {
		if e.Type != "event" || e.Stage != "reload" {
			continue
		}
		// "generation 3: quorum" or "generation 3: quorum: 1 of 2 ready after 1.5s"
		var g, k, n int
		var rest string
		if e.Kind == "step" {
			if _, err := fmt.Sscanf(e.Message, "generation %d: %s", &g, &rest); err == nil && strings.TrimSuffix(rest, ":") == "quorum" {
				return e.Time
			}
		}
		if _, err := fmt.Sscanf(e.Message, "generation %d: %d/%d workers ready", &g, &k, &n); err == nil && k == n {
			last = e.Time
		}
	}
	return last
}

// reloadStart is when the agent began starting the new generation (after
// fetch, unpack, hooks and activate).
func reloadStart(events []agentEvent) time.Time {
	for _, e := range events {
		if e.Type == "event" && e.Stage == "reload" && e.Kind == "start" {
			return e.Time
		}
	}
	return time.Time{}
}

func readEvents(path string) ([]agentEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []agentEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e agentEvent
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Type != "" {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

var errNoAgent = errors.New("no agent binary")
