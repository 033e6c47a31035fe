package examples_test

// Node apps with no code change, deployed by the real agent with
// [app] adapter = "node": apps of examples/node-adapter written as their
// tutorials write them (listen(PORT), no signal handler; one with a handler
// of its own) go through
//
//	deploy v1 → deploy v2 → deploy v3 → failed deploy v4 → rollback (to v2)
//
// under keep-alive load and new-connection load at once (package loadgen),
// and every step must end with 0 failed and 0 stale keep-alive requests. The
// only change to the apps is PORT in [app] env, set to the port of the
// agent's [[listen]] address. Each worker must stop by itself with exit 0:
// by the adapter's graceful stop, or by the app's own handler where it has
// one (and then never by the adapter's).
//
// The apps run under `node` from PATH, and under every Node binary listed
// in HANDOFF_TEST_NODE_BINS (colon-separated paths), one subtest each.

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/loadgen"
)

// adapterApp is one app of examples/node-adapter.
type adapterApp struct {
	name, file string
	deps       []string // npm packages it requires
	ownHandler bool     // installs its own SIGTERM handler
}

var adapterApps = []adapterApp{
	{name: "express", file: "express.js", deps: []string{"express"}},
	{name: "plain-http", file: "plain.js"},
	{name: "fastify", file: "fastify.js", deps: []string{"fastify"}},
	{name: "own-handler", file: "ownhandler.js", ownHandler: true},
	{name: "seed", file: "seed.js", deps: []string{"express"}},
}

// The adapter's stop lines on a worker's stderr (agent/nodepreload.cjs).
const (
	adapterStopLine     = "handoff node adapter: SIGTERM: stopping gracefully"
	adapterDeferredLine = "handoff node adapter: SIGTERM: the app handles it"
	ownHandlerLine      = "own SIGTERM handler: stopping"
)

// nodeBinaries returns the Node binaries to test with: `node` from PATH,
// then HANDOFF_TEST_NODE_BINS; each with the version it reports.
func nodeBinaries(t *testing.T) (bins, versions []string) {
	t.Helper()
	list := []string{"node"}
	for _, b := range strings.Split(os.Getenv("HANDOFF_TEST_NODE_BINS"), ":") {
		if b != "" {
			list = append(list, b)
		}
	}
	for _, b := range list {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Fatalf("node binary %s: %v", b, err)
		}
		out, err := exec.Command(p, "--version").Output()
		if err != nil {
			t.Fatalf("%s --version: %v", p, err)
		}
		bins = append(bins, p)
		versions = append(versions, strings.TrimSpace(string(out)))
	}
	return bins, versions
}

// adapterRelease returns the files of a release of app: its file,
// package.json and, from node_modules as `npm ci` left it (flat), the
// packages it requires and theirs.
func adapterRelease(t *testing.T, app adapterApp) map[string]relFile {
	t.Helper()
	const dir = "node-adapter"
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "express", "package.json")); err != nil {
		t.Fatalf("examples/node-adapter has no node_modules: %s", installHint)
	}
	files := map[string]relFile{}
	add := func(p string) error {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = relFile{mode: int64(info.Mode().Perm()), body: b}
		return nil
	}
	for _, f := range []string{app.file, "package.json"} {
		if err := add(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	var pack func(name string)
	pack = func(name string) {
		if seen[name] {
			return
		}
		seen[name] = true
		pkg := filepath.Join(dir, "node_modules", filepath.FromSlash(name))
		err := filepath.WalkDir(pkg, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				return add(p)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("package %s: %v", name, err)
		}
		b, err := os.ReadFile(filepath.Join(pkg, "package.json"))
		if err != nil {
			t.Fatal(err)
		}
		var meta struct{ Dependencies map[string]string }
		if err := json.Unmarshal(b, &meta); err != nil {
			t.Fatalf("package %s: %v", name, err)
		}
		for dep := range meta.Dependencies {
			// npm ci hoists every package to the top unless versions clash;
			// a clashing one lives under its dependent, packed above.
			if _, err := os.Stat(filepath.Join(dir, "node_modules", filepath.FromSlash(dep))); err == nil {
				pack(dep)
			}
		}
	}
	for _, d := range app.deps {
		pack(d)
	}
	return files
}

func TestNodeAdapter_DeployUnderLoad(t *testing.T) {
	bins, versions := nodeBinaries(t)
	buildAgent(t)
	for i, bin := range bins {
		for _, app := range adapterApps {
			t.Run(versions[i]+"/"+app.name, func(t *testing.T) {
				t.Parallel() // at most -parallel (GOMAXPROCS) at once
				testNodeAdapterDeploy(t, bin, app)
			})
		}
	}
}

func testNodeAdapterDeploy(t *testing.T, node string, app adapterApp) {
	files := adapterRelease(t, app)
	good := tarGz(t, files)
	bad := tarGz(t, prepend(app.file, `throw new Error("broken release (test): cannot start");`)(files))
	art := newArtifactServer(t)
	url := map[string]string{
		"v1": art.publish("v1", good),
		"v2": art.publish("v2", good),
		"v3": art.publish("v3", good),
		"v4": art.publish("v4", bad),
	}
	port := strconv.Itoa(proctest.FreePort(t))
	addr := "127.0.0.1:" + port
	// A long readiness timeout: the subtests run two at a time on a small
	// machine, each with 2 workers and load; a slow start is not the subject.
	a := startAgent(t, deployConfig{command: []string{node, app.file}, mode: "listen", adapter: "node",
		listen: addr, env: map[string]string{"PORT": port}, timeout: "60s"})

	a.mustDo("deploy", "--id", "v1", url["v1"])
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Fatalf("v1 serves %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	keep, err := loadgen.Start(ctx, loadgen.Options{Addr: addr, Conns: 4, KeepAlive: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Stop()
	fresh, err := loadgen.Start(ctx, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: false, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Stop()
	proctest.WaitFor(t, 15*time.Second, "both loads to get answers from v1", func() bool {
		return keep.Snapshot().OK >= 50 && fresh.Snapshot().OK >= 20
	})

	loads := []struct {
		name string
		gen  *loadgen.Run
		prev loadgen.Result
	}{{name: "keep-alive", gen: keep}, {name: "new-conn", gen: fresh}}
	step := func(name string, started time.Time) {
		t.Helper()
		for i := range loads {
			l := &loads[i]
			cur := l.gen.Snapshot()
			req, failed, stale := cur.Requests-l.prev.Requests, cur.FailedTotal-l.prev.FailedTotal, cur.StaleKeepAlive-l.prev.StaleKeepAlive
			t.Logf("figures %s %-16s %-10s requests=%d failed=%d stale=%d took=%v",
				t.Name(), name, l.name, req, failed, stale, time.Since(started).Round(time.Millisecond))
			if failed != 0 || stale != 0 {
				t.Errorf("%s, %s load: %d failed and %d stale keep-alive requests of %d: %s", name, l.name, failed, stale, req, cur)
			}
			if cur.OK <= l.prev.OK {
				t.Errorf("%s, %s load: no request answered: %s", name, l.name, cur)
			}
			l.prev = *cur
		}
	}
	step("v1 serving", time.Now())

	for _, id := range []string{"v2", "v3"} {
		start := time.Now()
		a.mustDo("deploy", "--id", id, url[id])
		if got := proctest.Get(t, addr); got != "hello from "+id {
			t.Fatalf("after deploy %s a new connection got %q", id, got)
		}
		step("deploy "+id, start)
	}
	start := time.Now()
	r := a.do("deploy", "--id", "v4", url["v4"])
	if r.code != 1 || !strings.Contains(r.stderr, "restored: current is v3 again") {
		t.Errorf("failed deploy v4: want exit 1 and v3 restored; %v", r)
	}
	step("failed deploy v4", start)
	start = time.Now()
	a.mustDo("rollback")
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after rollback a new connection got %q", got)
	}
	step("rollback to v2", start)

	for i := range loads {
		final := loads[i].gen.Stop()
		t.Logf("figures %s %-16s %-10s requests=%d failed=%d stale=%d bodies=%v", t.Name(), "total", loads[i].name,
			final.Requests, final.FailedTotal, final.StaleKeepAlive, final.Bodies)
		if final.FailedTotal != 0 || final.StaleKeepAlive != 0 {
			t.Errorf("whole run, %s load: %s", loads[i].name, final)
		}
		for _, id := range []string{"v1", "v2", "v3"} {
			if final.Bodies["hello from "+id] == 0 {
				t.Errorf("the %s load never saw %s: %v", loads[i].name, id, final.Bodies)
			}
		}
	}
	a.stop(30 * time.Second)
	log := a.out.String()
	checkWorkerExits(t, log, "v4")
	// 8 stops: 2 workers each of v1, v2, v3 and the rolled-back v2.
	stops, deferred, own := strings.Count(log, adapterStopLine), strings.Count(log, adapterDeferredLine), strings.Count(log, ownHandlerLine)
	if app.ownHandler {
		// The app's handler runs first (installed before listen) and may exit
		// at once with no connection open: the adapter's then says nothing.
		if stops != 0 || deferred < 1 || deferred > 8 || own != 8 {
			t.Errorf("an app with its own handler: %d adapter stops, %d deferrals, %d own stops; want 0, 1 to 8, 8", stops, deferred, own)
		}
	} else if stops != 8 || deferred != 0 {
		t.Errorf("%d adapter stops and %d deferrals in the agent log; want 8 and 0", stops, deferred)
	}
}
