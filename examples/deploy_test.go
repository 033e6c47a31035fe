package examples_test

// End to end with the real agent: each example is packed as a tar.gz
// release, served over HTTP on 127.0.0.1 with ?checksum=sha256:…, and run by
// `agent run` (2 workers). Under continuous keep-alive load (package
// loadgen, which counts a stale keep-alive apart from failures and never
// retries silently) it goes through
//
//	deploy v1 (first, before the load) → deploy v2 → deploy v3
//	→ failed deploy v4 (the same example made to exit at start)
//	→ rollback (to v2)
//
// and every step must end with 0 failed requests and 0 stale keep-alive
// errors, and with new connections served by the release the step names.
// The failed deploy must leave the shared listening socket's mode as the
// serving workers set it, and every retired worker must exit 0 on its own
// (its graceful stop ended; it was not killed at drain_timeout). Each
// example runs with the readiness modes its recipe claims: `listen` where
// the server's accept loop shows in an epoll set, `notify` where it sends
// READY=1. The subtests run in parallel, at most GOMAXPROCS at once.

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/loadgen"

	"github.com/handoff/handoff/internal/proctest"
)

// deployCase is one example under one readiness mode.
type deployCase struct {
	example string // name in examples(), for its tool checks
	mode    string // readiness mode
	command []string
	env     map[string]string
	// release returns the files of a good release.
	release func(t *testing.T) map[string]relFile
	// broken makes a release of the same app that exits at start.
	broken func(files map[string]relFile) map[string]relFile
}

// prepend returns a copy of files whose name starts with line.
func prepend(name, line string) func(map[string]relFile) map[string]relFile {
	return func(files map[string]relFile) map[string]relFile {
		out := make(map[string]relFile, len(files))
		for k, v := range files {
			out[k] = v
		}
		f := out[name]
		f.body = append([]byte(line+"\n"), f.body...)
		out[name] = f
		return out
	}
}

func dirRelease(dir string) func(t *testing.T) map[string]relFile {
	return func(t *testing.T) map[string]relFile { return releaseFiles(t, dir) }
}

func deployCases() []deployCase {
	node := deployCase{example: "node", command: []string{"node", "server.js"},
		release: dirRelease("node"),
		broken:  prepend("server.js", `throw new Error("broken release (test): cannot start");`)}
	goApp := deployCase{example: "go", command: []string{"./app"},
		release: func(t *testing.T) map[string]relFile {
			b, err := os.ReadFile(buildGoExample(t))
			if err != nil {
				t.Fatal(err)
			}
			return map[string]relFile{"app": {mode: 0o755, body: b}}
		},
		// A truncated upload: the kernel refuses or the binary dies at once.
		broken: func(files map[string]relFile) map[string]relFile {
			f := files["app"]
			return map[string]relFile{"app": {mode: 0o755, body: f.body[:len(f.body)/3]}}
		}}
	// gunicorn.conf.py reads GUNICORN_WORKERS: one gunicorn worker under each
	// of the agent's two keeps the 2-core box from drowning.
	gunicorn := deployCase{example: "python-gunicorn", command: []string{"gunicorn", "wsgi:app"},
		env:     map[string]string{"GUNICORN_WORKERS": "1"},
		release: dirRelease("python"),
		broken:  prepend("wsgi.py", `raise RuntimeError("broken release (test): cannot import")`)}
	stdlib := deployCase{example: "python-stdlib", command: []string{"python3", "server.py"},
		release: dirRelease("python"),
		broken:  prepend("server.py", `raise SystemExit("broken release (test): cannot start")`)}
	puma := deployCase{example: "ruby-puma", command: []string{"puma", "-C", "puma.rb"},
		release: dirRelease("ruby"),
		broken:  prepend("config.ru", `raise "broken release (test): cannot boot"`)}
	with := func(c deployCase, mode string) deployCase { c.mode = mode; return c }
	return []deployCase{
		with(node, "listen"),
		with(goApp, "listen"), with(goApp, "notify"),
		with(gunicorn, "listen"), with(gunicorn, "notify"),
		with(stdlib, "listen"), with(stdlib, "notify"),
		with(puma, "notify"),
	}
}

func TestDeploy_UnderLoad(t *testing.T) {
	exs := map[string]example{}
	for _, ex := range examples(t) {
		exs[ex.name] = ex
	}
	buildAgent(t)
	for _, c := range deployCases() {
		t.Run(c.example+"/"+c.mode, func(t *testing.T) {
			t.Parallel()               // at most -parallel (GOMAXPROCS) at once
			resolve(t, exs[c.example]) // fails naming scripts/install-examples-deps.sh
			testDeployUnderLoad(t, c)
		})
	}
}

func testDeployUnderLoad(t *testing.T, c deployCase) {
	good := tarGz(t, c.release(t))
	bad := tarGz(t, c.broken(c.release(t)))
	art := newArtifactServer(t)
	url := map[string]string{
		"v1": art.publish("v1", good),
		"v2": art.publish("v2", good),
		"v3": art.publish("v3", good),
		"v4": art.publish("v4", bad),
	}
	a := startAgent(t, deployConfig{command: c.command, env: c.env, mode: c.mode})

	a.mustDo("deploy", "--id", "v1", url["v1"])
	st := a.status()
	if st.Current != "v1" || len(st.Listen) == 0 {
		t.Fatalf("after deploy v1: %+v", st)
	}
	addr := strings.TrimPrefix(st.Listen[0], "tcp:")
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Fatalf("v1 serves %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	load, err := loadgen.Start(ctx, loadgen.Options{Addr: addr, Conns: 4, KeepAlive: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer load.Stop()
	proctest.WaitFor(t, 15*time.Second, "the load to get answers from v1", func() bool { return load.Snapshot().OK >= 50 })

	var prev loadgen.Result
	step := func(name string, started time.Time) {
		t.Helper()
		cur := load.Snapshot()
		req, failed, stale := cur.Requests-prev.Requests, cur.FailedTotal-prev.FailedTotal, cur.StaleKeepAlive-prev.StaleKeepAlive
		t.Logf("figures %s %-16s requests=%d failed=%d stale=%d took=%v",
			t.Name(), name, req, failed, stale, time.Since(started).Round(time.Millisecond))
		if failed != 0 || stale != 0 {
			t.Errorf("%s: %d failed and %d stale keep-alive requests of %d: %s", name, failed, stale, req, cur)
		}
		if cur.OK <= prev.OK {
			t.Errorf("%s: no request answered under load: %s", name, cur)
		}
		prev = *cur
	}
	step("v1 serving", time.Now())

	for _, id := range []string{"v2", "v3"} {
		start := time.Now()
		r := a.mustDo("deploy", "--id", id, url[id])
		if !strings.Contains(r.stdout, "deployed "+id) {
			t.Errorf("deploy %s output: %v", id, r)
		}
		for i := 0; i < 3; i++ { // once deploy exits 0 every new connection is served by it
			if got := proctest.Get(t, addr); got != "hello from "+id {
				t.Fatalf("after deploy %s a new connection got %q", id, got)
			}
		}
		step("deploy "+id, start)
	}

	// The listening socket is one open file description shared by the agent
	// and every worker: its O_NONBLOCK is whatever the serving app set. A
	// failed deploy must leave it so; a Go server whose listener turns
	// blocking under it sits in accept(2) where Close cannot reach it, and
	// its graceful stop hangs until drain_timeout.
	inode := listenInode(t, addr)
	nonblockBefore := socketNonblock(t, a.cmd.Process.Pid, inode)
	start := time.Now()
	r := a.do("deploy", "--id", "v4", url["v4"])
	if r.code != 1 || !strings.Contains(r.stderr, "restored: current is v3 again") {
		t.Errorf("failed deploy v4: want exit 1 and v3 restored; %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from v3" {
		t.Errorf("after the failed deploy a new connection got %q", got)
	}
	if after := socketNonblock(t, a.cmd.Process.Pid, inode); after != nonblockBefore {
		t.Errorf("the failed deploy changed the shared listening socket's O_NONBLOCK from %v to %v under the serving v3 workers", nonblockBefore, after)
	}
	step("failed deploy v4", start)

	start = time.Now()
	r = a.mustDo("rollback")
	if !strings.Contains(r.stdout, "rolled back to v2") {
		t.Errorf("rollback output: %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after rollback a new connection got %q", got)
	}
	// rollback, like deploy, returns once the old generation is retired.
	if st := a.status(); len(st.Generations) != 1 || st.Generations[0].Release != "v2" {
		t.Errorf("after rollback: generations %+v; want v2 alone", st.Generations)
	}
	step("rollback to v2", start)
	final := load.Stop()
	t.Logf("figures %s %-16s requests=%d failed=%d stale=%d bodies=%v", t.Name(), "total",
		final.Requests, final.FailedTotal, final.StaleKeepAlive, final.Bodies)
	if final.FailedTotal != 0 || final.StaleKeepAlive != 0 {
		t.Errorf("whole run: %s", final)
	}
	for _, id := range []string{"v1", "v2", "v3"} {
		if final.Bodies["hello from "+id] == 0 {
			t.Errorf("the load never saw %s: %v", id, final.Bodies)
		}
	}
	if n := final.Bodies["hello from v4"]; n != 0 {
		t.Errorf("the broken v4 answered %d requests", n)
	}

	st = a.status()
	var results []string
	for _, e := range st.LastDeploys {
		results = append(results, e.Op+":"+e.ID+":"+e.Result)
	}
	if got, want := strings.Join(results, " "), "deploy:v1:ok deploy:v2:ok deploy:v3:ok deploy:v4:failed rollback:v2:ok"; got != want {
		t.Errorf("history:\n got %s\nwant %s", got, want)
	}
	for _, w := range st.Generations[0].Workers {
		if w.State != "ready" || w.Restarts != 0 {
			t.Errorf("v2 worker after the run: %+v", w)
		}
	}
	a.stop(30 * time.Second)
	checkWorkerExits(t, a.out.String(), "v4")
}

// socketNonblock reports whether the socket with inode (decimal), as held by
// process pid, has O_NONBLOCK set: the flags line of its fdinfo, which shows
// the open file description's flags.
func socketNonblock(t *testing.T, pid int, inode string) bool {
	t.Helper()
	fds := proctest.SocketFDs(pid, inode)
	if len(fds) == 0 {
		t.Fatalf("pid %d holds no fd on socket inode %s", pid, inode)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fds[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatalf("fdinfo flags %q: %v", v, err)
			}
			return flags&syscall.O_NONBLOCK != 0
		}
	}
	t.Fatalf("pid %d fd %d: no flags line in fdinfo", pid, fds[0])
	return false
}

var (
	reloadingLine = regexp.MustCompile(`msg=Reloading gen=(\d+) release=(\S+)`)
	exitedLine    = regexp.MustCompile(`msg="Worker exited" gen=(\d+) worker=\d+ pid=(\d+) status="([^"]*)"`)
)

// checkWorkerExits reads the agent's log: every worker of a release other
// than broken exited 0, so its graceful stop ended by itself (not killed at
// drain_timeout, not dead of the stop signal).
func checkWorkerExits(t *testing.T, log, broken string) {
	t.Helper()
	release := map[string]string{}
	for _, m := range reloadingLine.FindAllStringSubmatch(log, -1) {
		release[m[1]] = m[2]
	}
	n := 0
	for _, m := range exitedLine.FindAllStringSubmatch(log, -1) {
		if release[m[1]] == broken {
			continue
		}
		n++
		if m[3] != "exit status 0" {
			t.Errorf("worker pid %s of %s ended with %q; want exit status 0 after its graceful stop", m[2], release[m[1]], m[3])
		}
	}
	// 2 workers each of v1, v2, v3 and the rolled-back v2.
	if n != 8 {
		t.Errorf("%d worker exits in the agent log, want 8:\n%s", n, log)
	}
}
