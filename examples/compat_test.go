package examples_test

// The compatibility suite: third-party stacks exactly as their own docs show
// them, at their own default stop, with no handoff-specific code (each only
// takes the inherited socket the standard systemd way), deployed by the real
// agent under load:
//
//	deploy v1 (before the load) → deploy v2 → deploy v3
//	→ failed deploy v4 (the same app made to fail at start) → rollback (to v2)
//
// under a keep-alive load (KeepAlive, 8 connections) and a
// new-connection-per-request load (4 connections), each in its own agent
// run. Every step must end with 0 failed requests and 0 stale keep-alive
// errors (a client that never retries sees a stale one, so here it is a
// failure), and with new connections served by the release the step names.
//
// A server that dies of the stop signal (Node with no SIGTERM handler) loses
// what it is computing at that instant, and nothing can answer that for it:
// for it the steps that retire nothing must lose nothing, and a step that
// retires its workers may lose at most one request per client connection
// per dying worker (a connection has at most one request outstanding, and
// may reconnect onto the second worker before that one dies).
//
// HANDOFF_COMPAT_RESCUE=off writes `rescue = false` into the [[listen]]
// table and only logs the figures ("figures" lines), to measure what the
// stacks lose without connection rescue.
//
// The hazard tests (TestCompat_HTTP10, _TLS, _LineProtocol, _Pipelining)
// drive clients loadgen does not speak, under the same deploy sequence.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/loadgen"
)

// agentWorkers is `[app] workers` in the deploy.toml startAgent writes.
const agentWorkers = 2

// debianPython is the interpreter Debian's python3-* packages install into;
// a python3 earlier in PATH (pyenv, a venv) would not see them.
const debianPython = "/usr/bin/python3"

// compatStack is one third-party stack as its own docs show it.
type compatStack struct {
	name    string
	mode    string // readiness mode that works for it
	command []string
	env     map[string]string
	// files returns a good release.
	files func(t *testing.T) map[string]relFile
	// broken makes a release of the same app that fails at start.
	broken func(files map[string]relFile) map[string]relFile
	// need checks the stack's dependencies, failing with installHint.
	need func(t *testing.T)
	// diesOnStop: the stop signal kills it mid-request (no handler).
	diesOnStop bool
	// dropsRead: its stop drops a request it reads once the stop began
	// (net/http's conn.serve returns when the server is shutting down,
	// right after reading a request): one the agent did not see waiting
	// before the worker read it is lost with it.
	dropsRead bool
	// maxConns caps the load's connections (0: no cap).
	maxConns int
}

func compatStacks() []compatStack {
	nodeStack := func(name string, diesOnStop bool) compatStack {
		return compatStack{name: name, mode: "listen", command: []string{"node", "server.js"},
			files:      compatDir("compat/" + name),
			broken:     prepend("server.js", `throw new Error("broken release (test): cannot start");`),
			need:       needTools("node"),
			diesOnStop: diesOnStop}
	}
	express := nodeStack("express", false)
	express.files = func(t *testing.T) map[string]relFile {
		files := compatDir("compat/express")(t)
		if _, ok := files["node_modules/express/package.json"]; !ok {
			t.Fatalf("express is not installed in examples/compat/express/node_modules: %s", installHint)
		}
		return files
	}
	return []compatStack{
		express,
		nodeStack("nodehttp", false),
		nodeStack("nodebare", true),
		{name: "fastapi", mode: "listen",
			command: []string{debianPython, "-m", "uvicorn", "--fd", "3", "main:app"},
			files:   compatDir("compat/fastapi"),
			broken:  prepend("main.py", `raise SystemExit("broken release (test): cannot start")`),
			need:    needPython("uvicorn", "fastapi")},
		// gunicorn's arbiter sends READY=1 before it forks its workers;
		// --preload imports the app first, so a broken release fails
		// instead of reporting ready.
		{name: "django", mode: "notify",
			command: []string{"gunicorn", "--preload", "compatsite.wsgi"},
			files:   compatDir("compat/django"),
			broken:  prepend("compatsite/wsgi.py", `raise SystemExit("broken release (test): cannot import")`),
			need:    func(t *testing.T) { needTools("gunicorn")(t); needPython("django")(t) }},
		// puma 5 gives each keep-alive client that never pauses a pool
		// thread of its own and accepts only when one is free: with as
		// many such clients as its 5 default threads, a new connection
		// waits (10 s and more here) whatever the agent does. 4
		// connections keep that capacity limit out of the figures.
		{name: "sinatra", mode: "notify", command: []string{"puma", "-C", "puma.rb"}, maxConns: 4,
			files:  compatDir("compat/sinatra"),
			broken: prepend("app.rb", `raise "broken release (test): cannot boot"`),
			need:   func(t *testing.T) { needTools("puma")(t); needRuby("sinatra/base", "sd_notify")(t) }},
		{name: "go", mode: "listen", command: []string{"./app"},
			files: func(t *testing.T) map[string]relFile {
				return map[string]relFile{"app": {mode: 0o755, body: compatGoBinary(t)}}
			},
			// A truncated upload: the kernel refuses it or it dies at once.
			broken: func(files map[string]relFile) map[string]relFile {
				f := files["app"]
				return map[string]relFile{"app": {mode: 0o755, body: f.body[:len(f.body)/3]}}
			},
			need:      func(t *testing.T) {},
			dropsRead: true},
	}
}

// compatDir reads examples/<dir> with everything in it, node_modules too
// (an Express release carries its dependencies).
func compatDir(dir string) func(t *testing.T) map[string]relFile {
	return func(t *testing.T) map[string]relFile {
		t.Helper()
		return readTree(t, dir, func(name string) bool { return name == "__pycache__" }, func(string) bool { return false })
	}
}

func needTools(names ...string) func(t *testing.T) {
	return func(t *testing.T) {
		t.Helper()
		for _, n := range names {
			if _, err := exec.LookPath(n); err != nil {
				t.Fatalf("%s not found: %s", n, installHint)
			}
		}
	}
}

func needPython(modules ...string) func(t *testing.T) {
	return func(t *testing.T) {
		t.Helper()
		src := "import " + strings.Join(modules, ", ")
		if out, err := exec.Command(debianPython, "-c", src).CombinedOutput(); err != nil {
			t.Fatalf("%s -c %q: %v: %s: %s", debianPython, src, err, bytes.TrimSpace(out), installHint)
		}
	}
}

func needRuby(libs ...string) func(t *testing.T) {
	return func(t *testing.T) {
		t.Helper()
		for _, l := range libs {
			if out, err := exec.Command("ruby", "-e", "require "+fmt.Sprintf("%q", l)).CombinedOutput(); err != nil {
				t.Fatalf("ruby cannot load %s (%v: %s): %s", l, err, bytes.TrimSpace(out), installHint)
			}
		}
	}
}

var (
	compatGoOnce sync.Once
	compatGoBin  []byte
	compatGoErr  error
)

// compatGoBinary builds examples/compat/go once, into the directory
// buildGoExample made (TestMain removes it).
func compatGoBinary(t *testing.T) []byte {
	t.Helper()
	dir := filepath.Dir(buildGoExample(t))
	compatGoOnce.Do(func() {
		out := filepath.Join(dir, "compatgo")
		if b, err := exec.Command(goTool(), "build", "-o", out, "./compat/go").CombinedOutput(); err != nil {
			compatGoErr = fmt.Errorf("go build ./compat/go: %w\n%s", err, b)
			return
		}
		compatGoBin, compatGoErr = os.ReadFile(out)
	})
	if compatGoErr != nil {
		t.Fatal(compatGoErr)
	}
	return compatGoBin
}

// rescueOff reads HANDOFF_COMPAT_RESCUE: "off" turns connection rescue off
// and the suite's assertions into logged figures; unset or "on" keeps the
// agent's default.
func rescueOff(t *testing.T) bool {
	t.Helper()
	switch v := os.Getenv("HANDOFF_COMPAT_RESCUE"); v {
	case "", "on":
		return false
	case "off":
		return true
	default:
		t.Fatalf("HANDOFF_COMPAT_RESCUE=%q: want on or off", v)
		return false
	}
}

// compatLoad is one client load of the suite.
type compatLoad struct {
	name      string
	keepAlive bool
	conns     int
}

var compatLoads = []compatLoad{
	{name: "keepalive", keepAlive: true, conns: 8},
	{name: "newconn", keepAlive: false, conns: 4},
}

func TestCompat_Stacks(t *testing.T) {
	off := rescueOff(t)
	buildAgent(t)
	for _, s := range compatStacks() {
		for _, l := range compatLoads {
			t.Run(s.name+"/"+l.name, func(t *testing.T) {
				t.Parallel() // at most -parallel (GOMAXPROCS) at once
				s.need(t)
				testCompatStack(t, s, l, off)
			})
		}
	}
}

// compatStep is one step of the deploy sequence.
type compatStep struct {
	name    string
	retires bool // it retires a generation (its workers get the stop signal)
}

// compatRun is one agent with releases v1…v4 published and v1 deployed.
type compatRun struct {
	t    *testing.T
	a    *agentRun
	url  map[string]string
	addr string
	// serves checks that a new connection is served by release id.
	serves func(id string) error
}

// startCompat publishes v1–v3 (good) and v4 (broken), starts an agent and
// deploys v1.
func startCompat(t *testing.T, dc deployConfig, good, bad map[string]relFile, off bool,
	serves func(addr, id string) error) *compatRun {
	t.Helper()
	if off {
		dc.listenTOML = "rescue = false\n"
	}
	// Express, Django and puma take seconds to boot on a busy 2-core box
	// while the load takes every cycle it can.
	dc.timeout = "60s"
	g, b := tarGz(t, good), tarGz(t, bad)
	art := newArtifactServer(t)
	r := &compatRun{t: t, url: map[string]string{
		"v1": art.publish("v1", g), "v2": art.publish("v2", g), "v3": art.publish("v3", g), "v4": art.publish("v4", b),
	}}
	r.a = startAgent(t, dc)
	r.a.mustDo("deploy", "--id", "v1", r.url["v1"])
	st := r.a.status()
	if st.Current != "v1" || len(st.Listen) == 0 {
		t.Fatalf("after deploy v1: %+v", st)
	}
	r.addr = strings.TrimPrefix(st.Listen[0], "tcp:")
	r.serves = func(id string) error { return serves(r.addr, id) }
	if err := r.serves("v1"); err != nil {
		t.Fatal(err)
	}
	return r
}

// httpServes is serves for plain HTTP.
func httpServes(addr, id string) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return fmt.Errorf("GET %s: %w", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: %w", addr, err)
	}
	if got := strings.TrimSpace(string(b)); got != "hello from "+id {
		return fmt.Errorf("a new connection got %q, want %q", got, "hello from "+id)
	}
	return nil
}

// sequence runs deploy v2, deploy v3, failed deploy v4 and rollback, calling
// step after each (and once before, for v1 serving) with the time it began.
func (r *compatRun) sequence(step func(s compatStep, started time.Time)) {
	t, a := r.t, r.a
	step(compatStep{name: "v1 serving"}, time.Now())
	for _, id := range []string{"v2", "v3"} {
		start := time.Now()
		res := a.mustDo("deploy", "--id", id, r.url[id])
		if !strings.Contains(res.stdout, "deployed "+id) {
			t.Errorf("deploy %s output: %v", id, res)
		}
		for i := 0; i < 3; i++ { // once deploy exits 0 every new connection is served by it
			if err := r.serves(id); err != nil {
				t.Fatalf("after deploy %s: %v", id, err)
			}
		}
		step(compatStep{name: "deploy " + id, retires: true}, start)
	}
	start := time.Now()
	res := a.do("deploy", "--id", "v4", r.url["v4"])
	if res.code != 1 || !strings.Contains(res.stderr, "restored: current is v3 again") {
		t.Errorf("failed deploy v4: want exit 1 and v3 restored; %v", res)
	}
	if err := r.serves("v3"); err != nil {
		t.Errorf("after the failed deploy: %v", err)
	}
	step(compatStep{name: "failed deploy v4"}, start)
	start = time.Now()
	res = a.mustDo("rollback")
	if !strings.Contains(res.stdout, "rolled back to v2") {
		t.Errorf("rollback output: %v", res)
	}
	if err := r.serves("v2"); err != nil {
		t.Errorf("after rollback: %v", err)
	}
	step(compatStep{name: "rollback to v2", retires: true}, start)
}

// checkHistory wants the sequence's five results in the agent's history.
func (r *compatRun) checkHistory() {
	var results []string
	for _, e := range r.a.status().LastDeploys {
		results = append(results, e.Op+":"+e.ID+":"+e.Result)
	}
	if got, want := strings.Join(results, " "), "deploy:v1:ok deploy:v2:ok deploy:v3:ok deploy:v4:failed rollback:v2:ok"; got != want {
		r.t.Errorf("history:\n got %s\nwant %s", got, want)
	}
}

func testCompatStack(t *testing.T, s compatStack, l compatLoad, off bool) {
	files := s.files(t)
	r := startCompat(t, deployConfig{command: s.command, env: s.env, mode: s.mode},
		files, s.broken(files), off, httpServes)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if s.maxConns > 0 && l.conns > s.maxConns {
		l.conns = s.maxConns
	}
	load, err := loadgen.Start(ctx, loadgen.Options{Addr: r.addr, Conns: l.conns, KeepAlive: l.keepAlive, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer load.Stop()
	proctest.WaitFor(t, 30*time.Second, "the load to get answers from v1", func() bool { return load.Snapshot().OK >= 50 })

	var prev loadgen.Result
	var residual int64 // single losses let through (see below), at most one a run
	r.sequence(func(st compatStep, started time.Time) {
		cur := load.Snapshot()
		req, failed, stale := cur.Requests-prev.Requests, cur.FailedTotal-prev.FailedTotal, cur.StaleKeepAlive-prev.StaleKeepAlive
		t.Logf("figures %s %-16s requests=%d failed=%d stale=%d took=%v",
			t.Name(), st.name, req, failed, stale, time.Since(started).Round(time.Millisecond))
		if cur.OK <= prev.OK {
			t.Errorf("%s: no request answered under load: %s", st.name, cur)
		}
		lost := failed + stale
		switch {
		case off:
			// The baseline: figures only.
		case (s.diesOnStop || s.dropsRead) && st.retires:
			// Each client connection has at most one request in each
			// stopping worker; what it was computing when it died, or
			// what it read and dropped, is lost.
			if lost > int64(l.conns*agentWorkers) {
				t.Errorf("%s: %d failed and %d stale of %d, more than one a connection (%d) a dying worker (%d): %s",
					st.name, failed, stale, req, l.conns, agentWorkers, cur)
			}
		case lost > 1 || residual+lost > 1:
			t.Errorf("%s: %d failed and %d stale keep-alive requests of %d: %s", st.name, failed, stale, req, cur)
		case lost == 1:
			// One loss in a whole run is logged, not failed: a worker
			// that accepts a connection and closes it unread between two
			// looks of the agent (1 ms apart while it stops) takes it with
			// it. Seen about once in several thousand requests on a
			// loaded 2-core box; more than one in a run still fails.
			residual++
			t.Logf("RESIDUAL %s: 1 request lost (%s)", st.name, cur)
		}
		prev = *cur
	})
	final := load.Stop()
	t.Logf("figures %s %-16s requests=%d failed=%d stale=%d p50=%v p99=%v bodies=%v", t.Name(), "total",
		final.Requests, final.FailedTotal, final.StaleKeepAlive, final.P50, final.P99, final.Bodies)
	for _, id := range []string{"v1", "v2", "v3"} {
		if final.Bodies["hello from "+id] == 0 {
			t.Errorf("the load never saw %s: %v", id, final.Bodies)
		}
	}
	if n := final.Bodies["hello from v4"]; n != 0 {
		t.Errorf("the broken v4 answered %d requests", n)
	}
	r.checkHistory()
	r.a.stop(30 * time.Second)
}

// tally counts the outcomes of a hazard client by kind, for step deltas.
type tally struct {
	mu     sync.Mutex // guards counts, errs and lat
	counts map[string]int64
	errs   []string        // the last few errors
	lat    []time.Duration // latencies of ok requests, when recorded
}

// Outcome kinds of the hazard clients.
const (
	outOK    = "ok"
	outStale = "stale" // a reused connection closed (EOF, reset) before any byte of the answer
	// outAfterClose: a pipelined request left unanswered on a connection
	// whose earlier response said Connection: close.
	outAfterClose = "unanswered-after-close"
)

func newTally() *tally { return &tally{counts: map[string]int64{}} }

func (ta *tally) add(kind string, err error, lat time.Duration) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.counts[kind]++
	if err != nil { // the last 10, so a failing step shows its own
		ta.errs = append(ta.errs, kind+": "+err.Error())
		if len(ta.errs) > 10 {
			ta.errs = ta.errs[1:]
		}
	}
	if kind == outOK && lat > 0 {
		ta.lat = append(ta.lat, lat)
	}
}

// snapshot returns the counts and latencies so far, and the last errors.
func (ta *tally) snapshot() (map[string]int64, []time.Duration, []string) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	c := make(map[string]int64, len(ta.counts))
	for k, v := range ta.counts {
		c[k] = v
	}
	return c, append([]time.Duration(nil), ta.lat...), append([]string(nil), ta.errs...)
}

// failKind names a failure for a tally: "failed:<loadgen kind>".
func failKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "failed:" + loadgen.KindRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "failed:" + loadgen.KindReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "failed:" + loadgen.KindEOF
	case errors.As(err, &ne) && ne.Timeout():
		return "failed:" + loadgen.KindTimeout
	}
	return "failed:" + loadgen.KindOther
}

// cleanClose: the peer closed the connection (FIN or RST), as a server
// does to an idle keep-alive connection.
func cleanClose(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// clients runs n copies of one, each until ctx ends, and waits for them.
type clients struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startClients(n int, one func(ctx context.Context)) *clients {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	c := &clients{cancel: cancel}
	for i := 0; i < n; i++ {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for ctx.Err() == nil {
				one(ctx)
			}
		}()
	}
	return c
}

func (c *clients) stop() {
	c.cancel()
	c.wg.Wait()
}

// hazardSteps runs the sequence with the tally's step deltas logged, and
// calls check with each step's delta (unless off).
func hazardSteps(t *testing.T, r *compatRun, ta *tally, off bool, check func(s compatStep, delta map[string]int64)) {
	t.Helper()
	prev := map[string]int64{}
	prevLat := 0
	r.sequence(func(s compatStep, started time.Time) {
		cur, lat, errs := ta.snapshot()
		delta := map[string]int64{}
		var parts []string
		for k, v := range cur {
			if d := v - prev[k]; d != 0 {
				delta[k] = d
				parts = append(parts, fmt.Sprintf("%s=%d", k, d))
			}
		}
		sort.Strings(parts)
		step := lat[prevLat:]
		t.Logf("figures %s %-16s %s %s took=%v", t.Name(), s.name, strings.Join(parts, " "), latencies(step),
			time.Since(started).Round(time.Millisecond))
		if delta[outOK] == 0 {
			t.Errorf("%s: no request answered: %v %q", s.name, cur, errs)
		}
		if !off {
			failedBefore := t.Failed()
			check(s, delta)
			if !failedBefore && t.Failed() {
				t.Logf("last errors: %q", errs)
			}
		}
		prev, prevLat = cur, len(lat)
	})
}

// latencies summarises ok latencies: p50, p99 and max.
func latencies(lat []time.Duration) string {
	if len(lat) == 0 {
		return ""
	}
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))].Round(100 * time.Microsecond) }
	return fmt.Sprintf("p50=%v p99=%v max=%v", q(0.5), q(0.99), s[len(s)-1].Round(100*time.Microsecond))
}

// lossesOnly wants nothing but ok (and kinds in allowed) in a step.
func lossesOnly(t *testing.T, s compatStep, delta map[string]int64, allowed ...string) {
	t.Helper()
	for k, v := range delta {
		if k == outOK || slices.Contains(allowed, k) {
			continue
		}
		t.Errorf("%s: %d %s", s.name, v, k)
	}
}

// TestCompat_HTTP10 deploys FastAPI on uvicorn (which ends a connection with
// close(2) alone, never shutdown(2), so an HTTP/1.0 client sees EOF only
// when the last copy of the socket is closed) under HTTP/1.0 clients that
// send one request a connection and read the response up to EOF. Every
// response must be complete; the latency of each step is logged beside the
// steady state's, as the cost of holding a retiring worker's sockets.
func TestCompat_HTTP10(t *testing.T) {
	t.Parallel()
	off := rescueOff(t)
	var s compatStack
	for _, c := range compatStacks() {
		if c.name == "fastapi" {
			s = c
		}
	}
	s.need(t)
	files := s.files(t)
	r := startCompat(t, deployConfig{command: s.command, mode: s.mode}, files, s.broken(files), off, httpServes)

	ta := newTally()
	cl := startClients(6, func(ctx context.Context) { http10Once(ctx, r.addr, ta) })
	defer cl.stop()
	proctest.WaitFor(t, 30*time.Second, "answers from v1", func() bool { c, _, _ := ta.snapshot(); return c[outOK] >= 20 })
	hazardSteps(t, r, ta, off, func(s compatStep, delta map[string]int64) { lossesOnly(t, s, delta) })
	cl.stop()
	r.checkHistory()
	r.a.stop(30 * time.Second)
}

// http10Once sends one HTTP/1.0 request on a new connection and reads to EOF.
func http10Once(ctx context.Context, addr string, ta *tally) {
	c, end, ok := sessionConn(ctx, ta, tcpDial(ctx, addr))
	if !ok {
		return
	}
	defer end()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	begin := time.Now()
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: compat\r\n\r\n"); err != nil {
		if ctx.Err() == nil {
			ta.add(failKind(err), err, 0)
		}
		return
	}
	raw, err := io.ReadAll(c) // the response ends at EOF
	lat := time.Since(begin)
	if ctx.Err() != nil {
		return // cut short by our own stop
	}
	if err != nil {
		ta.add(failKind(err), fmt.Errorf("after %d bytes: %w", len(raw), err), 0)
		return
	}
	if err := checkHTTPResponse(raw); err != nil {
		ta.add("failed:incomplete", err, 0)
		return
	}
	ta.add(outOK, nil, lat)
}

// checkHTTPResponse wants one whole 200 response naming a release.
func checkHTTPResponse(raw []byte) error {
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	if err != nil {
		return fmt.Errorf("response %q: %w", raw, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("response %q: body: %w", raw, err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "hello from v") {
		return fmt.Errorf("response %q: want 200 hello from a release", raw)
	}
	return nil
}

// testCert makes a self-signed certificate for 127.0.0.1, as PEM.
func testCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "handoff compat test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// goRelease is a release of the compat Go server with extra files.
func goRelease(t *testing.T, extra map[string]relFile) (good, bad map[string]relFile) {
	bin := compatGoBinary(t)
	good = map[string]relFile{"app": {mode: 0o755, body: bin}}
	bad = map[string]relFile{"app": {mode: 0o755, body: bin[:len(bin)/3]}}
	for k, v := range extra {
		good[k], bad[k] = v, v
	}
	return good, bad
}

// keepAliveBound is the check of the hazard tests whose server closes idle
// connections at its stop (Go's Shutdown, the line server): only clean
// closes of reused connections before any byte of an answer ("stale"), none
// in a step that retires nothing, and in a step that retires a generation at
// most one per connection per retiring worker (each closes its listener
// first, but a client sent away by one may reconnect onto the other before
// that one has taken its signal); no other failure at all.
//
// The Go server stops with Server.Shutdown, which drops a request it reads
// once its stop began (net/http): the client sees an EOF before any byte of
// the answer, on a new connection too. Those count with the stale ones.
func keepAliveBound(t *testing.T, conns int) func(s compatStep, delta map[string]int64) {
	dropped := "failed:" + loadgen.KindEOF
	return func(s compatStep, delta map[string]int64) {
		t.Helper()
		lossesOnly(t, s, delta, outStale, dropped)
		if n := delta[outStale] + delta[dropped]; !s.retires && n != 0 {
			t.Errorf("%s: %d stale keep-alive or dropped while no generation retired", s.name, n)
		} else if n > int64(conns*agentWorkers) {
			t.Errorf("%s: %d stale keep-alive or dropped, more than one a connection (%d) a retiring worker (%d)", s.name, n, conns, agentWorkers)
		}
	}
}

// TestCompat_TLS deploys a Go TLS server (crypto/tls on the inherited
// socket, Shutdown on SIGTERM) under TLS keep-alive clients. Rescue must
// never touch non-HTTP bytes: the only losses allowed are the server's own
// (a connection closed before any byte of the answer); a TLS error, a
// timeout or a reset means something else spoke on the socket.
func TestCompat_TLS(t *testing.T) {
	t.Parallel()
	off := rescueOff(t)
	certPEM, keyPEM := testCert(t)
	good, bad := goRelease(t, map[string]relFile{"cert.pem": {mode: 0o644, body: certPEM}, "key.pem": {mode: 0o600, body: keyPEM}})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	r := startCompat(t, deployConfig{command: []string{"./app"}, env: map[string]string{"COMPAT_PROTO": "tls"}, mode: "listen"},
		good, bad, off, func(addr, id string) error { return tlsServes(addr, id, cfg) })

	const conns = 8
	ta := newTally()
	cl := startClients(conns, func(ctx context.Context) {
		keepAliveSession(ctx, ta, func() (net.Conn, error) {
			return (&tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: cfg}).DialContext(ctx, "tcp", r.addr)
		}, httpExchange)
	})
	defer cl.stop()
	proctest.WaitFor(t, 30*time.Second, "answers from v1", func() bool { c, _, _ := ta.snapshot(); return c[outOK] >= 50 })
	hazardSteps(t, r, ta, off, keepAliveBound(t, conns))
	cl.stop()
	r.checkHistory()
	r.a.stop(30 * time.Second)
}

func tlsServes(addr, id string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return fmt.Errorf("tls dial %s: %w", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	body, _, err := httpExchange(c, bufio.NewReader(c), &countingConn{Conn: c})
	if err != nil {
		return fmt.Errorf("GET over tls %s: %w", addr, err)
	}
	if body != "hello from "+id {
		return fmt.Errorf("a new tls connection got %q, want %q", body, "hello from "+id)
	}
	return nil
}

// countingConn counts the bytes read from a connection (below a
// bufio.Reader), to tell "nothing arrived" from "part of an answer".
type countingConn struct {
	net.Conn
	n int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n += int64(n)
	return n, err
}

// wrongAnswer is a complete answer that is not the one the request wants.
type wrongAnswer struct{ what string }

func (e *wrongAnswer) Error() string { return e.what }

// exchange sends one request on c and reads its answer through br (which
// reads from cc); it returns the answer's text, whether the server said it
// closes, and the error.
type exchange func(c net.Conn, br *bufio.Reader, cc *countingConn) (string, bool, error)

// httpExchange is a keep-alive GET /.
func httpExchange(c net.Conn, br *bufio.Reader, _ *countingConn) (string, bool, error) {
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: compat\r\n\r\n"); err != nil {
		return "", false, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", false, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", false, fmt.Errorf("body: %w", err)
	}
	body := strings.TrimSpace(string(b))
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "hello from v") {
		return "", false, &wrongAnswer{fmt.Sprintf("status %d: %q", resp.StatusCode, b)}
	}
	return body, resp.Close, nil
}

// sessionConn dials a hazard client's connection: a dial error counts as a
// failure unless ctx ended (then ok is false), and the connection's
// deadline is cut once ctx ends. end stops that and closes it.
func sessionConn(ctx context.Context, ta *tally, dial func() (net.Conn, error)) (c net.Conn, end func(), ok bool) {
	c, err := dial()
	if err != nil {
		if ctx.Err() == nil {
			ta.add(failKind(err), err, 0)
		}
		return nil, nil, false
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	return c, func() { stop(); c.Close() }, true
}

// tcpDial dials addr for a hazard client, giving up with ctx.
func tcpDial(ctx context.Context, addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		return (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
	}
}

// keepAliveSession opens a connection and runs exchanges on it until the
// server closes it or ctx ends. It counts "stale" for a clean close of a
// reused connection before any byte of the answer, and any other error as a
// failure.
func keepAliveSession(ctx context.Context, ta *tally, dial func() (net.Conn, error), ex exchange) {
	c, end, ok := sessionConn(ctx, ta, dial)
	if !ok {
		return
	}
	defer end()
	cc := &countingConn{Conn: c} // over TLS it counts decrypted bytes
	br := bufio.NewReader(cc)
	for served := 0; ctx.Err() == nil; served++ {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		before := cc.n
		_, closing, err := ex(c, br, cc)
		if ctx.Err() != nil {
			return
		}
		var wrong *wrongAnswer
		switch {
		case err == nil:
			ta.add(outOK, nil, 0)
		case errors.As(err, &wrong):
			ta.add("failed:wrong-answer", err, 0)
			return
		case served > 0 && cc.n == before && br.Buffered() == 0 && cleanClose(err):
			ta.add(outStale, err, 0)
			return
		default:
			ta.add(failKind(err), err, 0)
			return
		}
		if closing {
			return
		}
	}
}

// TestCompat_LineProtocol deploys a raw TCP line server (each line answered
// with "RELEASE: LINE"; its stop closes idle connections) under clients that
// keep a connection and send lines, half of them starting with "GET " as a
// key-value protocol's would. Rescue must leave such bytes alone: only clean
// closes of reused connections before an answer are allowed, never a wrong
// answer, an HTTP answer, or a wait until the timeout.
func TestCompat_LineProtocol(t *testing.T) {
	t.Parallel()
	off := rescueOff(t)
	good, bad := goRelease(t, nil)
	r := startCompat(t, deployConfig{command: []string{"./app"}, env: map[string]string{"COMPAT_PROTO": "line"}, mode: "listen"},
		good, bad, off, lineServes)

	const conns = 8
	ta := newTally()
	var seq sync.Mutex
	n := 0
	next := func() int { seq.Lock(); defer seq.Unlock(); n++; return n }
	cl := startClients(conns, func(ctx context.Context) {
		keepAliveSession(ctx, ta, tcpDial(ctx, r.addr), func(c net.Conn, br *bufio.Reader, _ *countingConn) (string, bool, error) {
			return lineExchange(c, br, next())
		})
	})
	defer cl.stop()
	proctest.WaitFor(t, 30*time.Second, "answers from v1", func() bool { c, _, _ := ta.snapshot(); return c[outOK] >= 50 })
	hazardSteps(t, r, ta, off, keepAliveBound(t, conns))
	cl.stop()
	r.checkHistory()
	r.a.stop(30 * time.Second)
}

// lineExchange sends line number i and wants "vN: LINE" back.
func lineExchange(c net.Conn, br *bufio.Reader, i int) (string, bool, error) {
	line := fmt.Sprintf("PING %d\n", i)
	if i%2 == 0 {
		line = fmt.Sprintf("GET key-%d\n", i)
	}
	if _, err := io.WriteString(c, line); err != nil {
		return "", false, err
	}
	got, err := br.ReadString('\n')
	if err != nil {
		if got != "" {
			return "", false, fmt.Errorf("partial answer %q: %w", got, err)
		}
		return "", false, err
	}
	release, rest, ok := strings.Cut(got, ": ")
	if !ok || rest != line || !strings.HasPrefix(release, "v") {
		return got, false, &wrongAnswer{fmt.Sprintf("line %q answered %q", line, got)}
	}
	return got, false, nil
}

func lineServes(addr, id string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _, err := lineExchange(c, bufio.NewReader(c), 1)
	if err != nil {
		return fmt.Errorf("line server %s: %w", addr, err)
	}
	if !strings.HasPrefix(got, id+": ") {
		return fmt.Errorf("a new connection got %q, want an answer from %s", got, id)
	}
	return nil
}

// TestCompat_Pipelining deploys the Go net/http server (Shutdown) under
// clients that write 3 requests back to back on one keep-alive connection,
// then read the answers. Every answer must be complete and in order; a
// request left unanswered after an answer that said Connection: close is
// counted apart (allowed); a reused connection closed before any byte of
// its first answer is stale, counted as failed like every other loss.
func TestCompat_Pipelining(t *testing.T) {
	t.Parallel()
	off := rescueOff(t)
	good, bad := goRelease(t, nil)
	r := startCompat(t, deployConfig{command: []string{"./app"}, mode: "listen"}, good, bad, off, httpServes)

	const conns = 4
	ta := newTally()
	cl := startClients(conns, func(ctx context.Context) { pipelineSession(ctx, r.addr, ta) })
	defer cl.stop()
	proctest.WaitFor(t, 30*time.Second, "answers from v1", func() bool { c, _, _ := ta.snapshot(); return c[outOK] >= 50 })
	// The Go server's Server.Shutdown drops what it reads once its stop
	// began, a whole pipelined batch at times: those count as stale, within
	// keepAliveBound's bound. Rescue must never answer out of order or in
	// part (failed:out-of-order, a partial answer).
	bound := keepAliveBound(t, conns*3) // a batch of 3 in flight a connection
	hazardSteps(t, r, ta, off, func(s compatStep, delta map[string]int64) {
		rest := map[string]int64{}
		for k, v := range delta {
			if k != outAfterClose {
				rest[k] = v
			}
		}
		bound(s, rest)
	})
	cl.stop()
	r.checkHistory()
	r.a.stop(30 * time.Second)
}

// pipelineSession keeps one connection and sends batches of 3 pipelined
// requests (/p/<batch>-<k>) until the server closes it or ctx ends.
func pipelineSession(ctx context.Context, addr string, ta *tally) {
	c, end, ok := sessionConn(ctx, ta, tcpDial(ctx, addr))
	if !ok {
		return
	}
	defer end()
	cc := &countingConn{Conn: c}
	br := bufio.NewReader(cc)
	for batch := 0; ctx.Err() == nil; batch++ {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var reqs bytes.Buffer
		paths := make([]string, 3)
		for k := range paths {
			paths[k] = fmt.Sprintf("/p/%d-%d", batch, k)
			fmt.Fprintf(&reqs, "GET %s HTTP/1.1\r\nHost: compat\r\n\r\n", paths[k])
		}
		if _, err := c.Write(reqs.Bytes()); err != nil {
			if ctx.Err() == nil {
				kind := failKind(err)
				if batch > 0 && cleanClose(err) {
					kind = outStale
				}
				for range paths {
					ta.add(kind, err, 0)
				}
			}
			return
		}
		closed := false // an answer said Connection: close
		for k, p := range paths {
			if closed {
				ta.add(outAfterClose, nil, 0)
				continue
			}
			before := cc.n
			resp, err := http.ReadResponse(br, nil)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if ctx.Err() != nil {
				return
			}
			switch {
			case err == nil && resp.StatusCode == 200 && strings.HasSuffix(strings.TrimSpace(string(body)), " "+p):
				ta.add(outOK, nil, 0)
				closed = resp.Close
			case err == nil:
				ta.add("failed:out-of-order", fmt.Errorf("request %s answered %d %q", p, resp.StatusCode, body), 0)
				return
			case k > 0 && cc.n == before && br.Buffered() == 0 && cleanClose(err):
				// The server answered part of the batch, then closed: a
				// server may close after any response, and a client that
				// pipelines resends what was left unanswered (RFC 9112,
				// 9.3.2), as after a "Connection: close" answer.
				for range paths[k:] {
					ta.add(outAfterClose, err, 0)
				}
				return
			case batch > 0 && cc.n == before && br.Buffered() == 0 && cleanClose(err):
				// Closed before any answer to the batch: every request of
				// it is lost, as a stale keep-alive.
				for range paths {
					ta.add(outStale, err, 0)
				}
				return
			default:
				ta.add(failKind(err), err, 0)
				return
			}
		}
		if closed {
			return
		}
	}
}
