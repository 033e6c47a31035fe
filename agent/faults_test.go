package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/proctest"
)

// TestFaults_diskFullWhileUnpacking uses a 2 MiB tmpfs as the release root
// and deploys an archive that unpacks to more than that: the deploy fails
// with the cause, the staging directory is gone, nothing else changed, the
// old release serves on under load, and the next deploy goes through.
func TestFaults_diskFullWhileUnpacking(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	s := newSetup(t, "")
	mnt := filepath.Join(s.dir, "tmpfs")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	// Registered before the agent starts, so it runs after the agent stops.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	s.writeConfig(strings.Replace(mustRead(t, s.cfg), "root = \""+s.root+"\"", "root = \""+mnt+"\"", 1))
	s.root, s.sock = mnt, filepath.Join(mnt, ".agent", "agent.sock")

	v1 := s.art.app(t, "v1", nil)
	v2 := s.art.app(t, "v2", nil)
	// 3 MiB of zeros: a few KiB to download, more than the tmpfs unpacked.
	big := s.art.app(t, "big", map[string]file{"zeros.bin": {body: string(make([]byte, 3<<20))}})

	s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	addr, load, snap := s.loadApp()
	before := rootSnapshot(t, s.root)

	r := s.do("deploy", "--id", "big", big)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 1 || len(lines) != 2 || !strings.HasPrefix(lines[0], "deploy failed: unpack big.tar.gz: ") ||
		!strings.Contains(lines[0], "no space left on device") || lines[1] != "nothing changed: current is v1" {
		t.Errorf("deploy onto a full disk: want exit 1, the cause in one line and \"nothing changed\"; got %v", r)
	}
	if debris, _ := os.ReadDir(filepath.Join(s.root, "releases", ".incoming")); len(debris) != 0 {
		t.Errorf("staging left in .incoming: %v", debris)
	}
	if after := rootSnapshot(t, s.root); after != before {
		t.Errorf("the root changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Errorf("after the failed deploy: %q", got)
	}
	snap = checkLoad(t, "disk full", load, snap)
	// The space came back: the next deploy fits.
	s.mustDo("deploy", "--id", "v2", v2)
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after the next deploy: %q", got)
	}
	checkLoad(t, "deploy after disk full", load, snap)
}

// TestFaults_hookTimeouts: a pre-activate hook that hangs past [hooks]
// timeout is killed with its group and changes nothing; a post-deploy hook
// whose child ignores SIGTERM is killed with its group (SIGKILL after the
// runner's grace) and rolls the deploy back. No request fails meanwhile.
func TestFaults_hookTimeouts(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	s.writeConfig(strings.Replace(mustRead(t, s.cfg), "[readiness]", "[hooks]\ntimeout = \"1s\"\n\n[readiness]", 1))
	pids := filepath.Join(s.dir, "hook-pids")
	hang := "#!/bin/sh\necho \"$$\" >> " + pids + "\necho hanging\nsleep 600\n"
	stubborn := "#!/bin/sh\ntrap '' TERM\nsleep 600 &\necho \"$$ $!\" >> " + pids + "\necho ignoring SIGTERM\nwait\nwait\n"
	v1 := s.art.app(t, "v1", nil)
	hangPre := s.art.app(t, "hang-pre", map[string]file{".deploy/hooks/pre-activate": {mode: 0o755, body: hang}})
	stubbornPost := s.art.app(t, "stubborn-post", map[string]file{".deploy/hooks/post-deploy": {mode: 0o755, body: stubborn}})

	s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	addr, load, snap := s.loadApp()
	before := rootSnapshot(t, s.root)

	hookPIDs := func() []int {
		var out []int
		for _, f := range strings.Fields(mustRead(t, pids)) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
		os.Remove(pids)
		return out
	}
	// The stubborn hook (child deaf to SIGTERM, so the group waits for the
	// runner's SIGKILL grace) runs once, as post-deploy, below.
	for _, c := range []struct{ id, url string }{{"hang-pre", hangPre}} {
		r := s.do("deploy", "--id", c.id, c.url)
		if r.code != 1 || !strings.Contains(r.stderr, "hook pre-activate [./.deploy/hooks/pre-activate]: timed out after 1s") ||
			!strings.Contains(r.stderr, "nothing changed: current is v1") {
			t.Errorf("%s: want exit 1, a timeout and nothing changed; got %v", c.id, r)
		}
		for _, pid := range hookPIDs() {
			if alive(pid) {
				t.Errorf("%s: hook process %d outlived the failed deploy", c.id, pid)
			}
		}
		if after := rootSnapshot(t, s.root); after != before {
			t.Errorf("%s: the root changed:\nbefore:\n%s\nafter:\n%s", c.id, before, after)
		}
	}
	snap = checkLoad(t, "pre-activate timeouts", load, snap)

	r := s.do("deploy", "--id", "stubborn-post", stubbornPost)
	if r.code != 1 || !strings.Contains(r.stderr, "hook post-deploy [./.deploy/hooks/post-deploy]: timed out after 1s") ||
		!strings.Contains(r.stderr, "restored: current is v1 again") {
		t.Errorf("post-deploy timeout: want exit 1 and a rollback to v1; got %v", r)
	}
	for _, pid := range hookPIDs() {
		if alive(pid) {
			t.Errorf("post-deploy hook process %d outlived the failed deploy", pid)
		}
	}
	if link, _ := os.Readlink(filepath.Join(s.root, "current")); link != "releases/v1" {
		t.Errorf("current after the rollback: %q", link)
	}
	st := s.status()
	if len(st.Generations) != 1 || st.Generations[0].ReleaseID != "v1" {
		t.Errorf("after the rollback: %+v", st.Generations)
	}
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Errorf("after the rollback: %q", got)
	}
	if h := st.LastDeploys; h[len(h)-1].ID != "stubborn-post" || h[len(h)-1].Result != "rolled-back" {
		t.Errorf("last history entry: %+v", h[len(h)-1])
	}
	checkLoad(t, "post-deploy timeout", load, snap)
}

// TestFaults_workers drives misbehaving workers through the agent: a
// release whose worker closes its inherited socket and idles (never
// counted ready: the deploy fails, nothing is lost), workers that ignore
// the stop signal and leave a daemonized grandchild in their group (SIGKILL
// after drain_timeout, the group dies), and a crash loop (backoff in
// status, the agent's CPU stays low).
func TestFaults_workers(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	cfg := strings.Replace(mustRead(t, s.cfg), `drain_timeout = "10s"`, `drain_timeout = "1s"`, 1)
	cfg = strings.Replace(cfg, `timeout = "10s"`, `timeout = "4s"`, 1)
	cfg = strings.Replace(cfg, `backoff_min = "50ms"`, `backoff_min = "100ms"`, 1)
	s.writeConfig(cfg)
	crash := filepath.Join(s.dir, "crash")
	grandPIDs := filepath.Join(s.dir, "grandchildren")

	// v1 ignores SIGTERM and leaves a grandchild behind in its group.
	v1 := s.art.add(t, "v1", appFiles(t, gatedApp(t, "", "", `
const __on = process.on.bind(process);
process.on = (ev, fn) => (ev === 'SIGTERM' ? process : __on(ev, fn));
__on('SIGTERM', () => console.log('ignoring SIGTERM'));
const __gc = require('node:child_process').spawn('sleep', ['600'], { stdio: 'ignore' });
__gc.unref();
__fs.appendFileSync(`+strconv.Quote(grandPIDs)+`, __gc.pid + '\n');
`), nil))
	closer := s.art.add(t, "closer", appFiles(t, "require('node:fs').closeSync(3);\nconsole.log('closed fd 3');\nsetInterval(() => {}, 1000);\n", nil))
	// v2 crashes at start while the crash file exists.
	v2 := s.art.add(t, "v2", appFiles(t, gatedApp(t, "", "", "if (__fs.existsSync("+strconv.Quote(crash)+")) { console.log('crashing'); process.exit(3); }"), nil))

	p := s.start(nil)
	agentPID := p.cmd.Process.Pid
	s.mustDo("deploy", "--id", "v1", v1)
	addr := s.appAddr()
	v1PIDs := workerPIDs(s.status())
	load := startLoad(t, addr)
	waitServed(t, load, 20)
	snap := load.Snapshot()

	// A worker that closes its socket is never ready.
	d := s.startCLI("deploy", "--id", "closer", closer)
	res, code := d.result(30 * time.Second)
	if code != 1 || res.Restored != "v1" || len(res.Failures) != 2 {
		t.Errorf("closer: want exit 1, restored v1, two failures; got %d %+v", code, res)
	}
	for _, f := range res.Failures {
		if !strings.HasPrefix(f.Verdict, "never touched the inherited socket") {
			t.Errorf("closer: verdict %q", f.Verdict)
		}
	}
	d.mu.Lock()
	for _, m := range d.msgs {
		if m.Kind == "worker" && strings.Contains(m.Message, "ready") {
			t.Errorf("closer: a worker counted ready: %+v", m)
		}
	}
	d.mu.Unlock()
	if got := workerPIDs(s.status()); !equalInts(got, v1PIDs) {
		t.Errorf("closer: v1 workers changed from %v to %v", v1PIDs, got)
	}
	snap = checkLoad(t, "worker closing its socket", load, snap)

	// v1 ignores SIGTERM: retired by SIGKILL after drain_timeout, with its
	// grandchildren.
	grand := []int{}
	for _, f := range strings.Fields(mustRead(t, grandPIDs)) {
		n, _ := strconv.Atoi(f)
		grand = append(grand, n)
	}
	if len(grand) != 2 {
		t.Fatalf("grandchildren: %v", grand)
	}
	d = s.startCLI("deploy", "--id", "v2", v2)
	if res, code := d.result(30 * time.Second); code != 0 {
		t.Fatalf("deploy v2: %d %+v %s", code, res, d.transcript())
	}
	retired := d.waitEvent("the reload's summary", time.Second, func(m control.Message) bool { return m.Stage == "reload" && m.Kind == "done" })
	after := retired.Message[strings.LastIndex(retired.Message, " ")+1:]
	if el, err := time.ParseDuration(after); err != nil || el < time.Second || el > 5*time.Second {
		t.Errorf("the old generation, deaf to SIGTERM, retired after %q; want drain_timeout (1s) and a little", after)
	}
	for _, pid := range append(v1PIDs, grand...) {
		if alive(pid) {
			t.Errorf("process %d of the retired generation is alive", pid)
		}
	}
	snap = checkLoad(t, "workers deaf to SIGTERM", load, snap)

	// Crash loop: worker 0 of v2 is killed and crashes at every restart.
	if err := os.WriteFile(crash, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st := s.status()
	killPID(t, st.Generations[0].Workers[0].PID)
	var w control.WorkerDoc
	// The backoff shows from the first restart until the worker is ready
	// again; the state "backoff" itself lasts only the delay, too short for a
	// poll through the CLI to be sure to see it.
	proctest.WaitFor(t, 20*time.Second, "worker 0 crash-looping with a backoff after 3 restarts", func() bool {
		w = s.status().Generations[0].Workers[0]
		return w.Backoff > 0 && w.State != "ready" && w.Restarts >= 3
	})
	cpu0, t0 := readProc(t, agentPID), time.Now()
	r0 := w.Restarts
	proctest.WaitFor(t, 20*time.Second, "two more restarts", func() bool {
		w = s.status().Generations[0].Workers[0]
		return w.Restarts >= r0+2
	})
	cpu1, el := readProc(t, agentPID), time.Since(t0)
	ticks := float64(cpu1.utime + cpu1.stime - cpu0.utime - cpu0.stime)
	share := ticks / 100 / el.Seconds() // USER_HZ is 100 on Linux
	t.Logf("crash loop: %d restarts, last exit %q; agent CPU %.1f%% of a core over %s", w.Restarts, w.LastExit, share*100, el.Round(time.Millisecond))
	if share > 0.25 {
		t.Errorf("the agent burns %.0f%% of a core while a worker crash-loops", share*100)
	}
	if r := s.mustDo("status"); !strings.Contains(r.stdout, "backoff") {
		t.Errorf("human status does not show the backoff:\n%s", r.stdout)
	}
	os.Remove(crash)
	proctest.WaitFor(t, 20*time.Second, "worker 0 to recover", func() bool {
		return s.status().Generations[0].Workers[0].State == "ready"
	})
	checkLoad(t, "crash loop", load, snap)
}

// TestFaults_busy: a deploy during a rollback, and a deploy during a
// deploy, get exit 4 naming the running operation; both running ones
// complete and the history is exact.
func TestFaults_busy(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	gate := filepath.Join(s.dir, "listen-gate")
	os.WriteFile(gate, nil, 0o644)
	v1 := s.art.add(t, "v1", appFiles(t, gatedApp(t, gate, "", ""), nil))
	v2 := s.art.app(t, "v2", nil)
	v4 := s.art.app(t, "v4", nil)
	v3Files := appFiles(t, nodeServer(t), map[string]file{"VERSION": {body: "3"}})
	stalled := newStalledServer(t, tarGz(t, v3Files))

	p := s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	s.mustDo("deploy", "--id", "v2", v2)
	addr, load, snap := s.loadApp()

	// The rollback to v1 waits for v1's workers, which wait for the gate.
	os.Remove(gate)
	rb := s.startCLI("rollback")
	rb.waitEvent("v1's workers to start", 30*time.Second, func(m control.Message) bool { return m.Kind == "worker" && strings.Contains(m.Message, "started") })
	r := s.do("deploy", "--id", "v3", stalled.url)
	if r.code != 4 || !strings.Contains(r.stderr, "busy: rollback") || !strings.Contains(r.stderr, "v1") {
		t.Errorf("deploy during a rollback: want exit 4 naming the rollback to v1; got %v", r)
	}
	if st := s.status(); st.Running == nil || st.Running.Op != "rollback" {
		t.Errorf("status during the rollback: running %+v", st.Running)
	}
	os.WriteFile(gate, nil, 0o644)
	if res, code := rb.result(30 * time.Second); code != 0 || res.ID != "v1" {
		t.Errorf("the rollback: %d %+v", code, res)
	}

	// A deploy stalled in its download; a second one is refused.
	dp := s.startCLI("deploy", "--id", "v3", stalled.url)
	<-stalled.sent
	r = s.do("deploy", "--id", "v4", v4)
	if r.code != 4 || !strings.Contains(r.stderr, "busy: deploy v3") {
		t.Errorf("deploy during a deploy: want exit 4 naming deploy v3; got %v", r)
	}
	close(stalled.release)
	if res, code := dp.result(30 * time.Second); code != 0 || res.ID != "v3" {
		t.Errorf("the first deploy: %d %+v", code, res)
	}
	if got := proctest.Get(t, addr); got != "hello from v3" {
		t.Errorf("after both: %q", got)
	}
	var ops []string
	for _, e := range s.status().LastDeploys {
		ops = append(ops, e.Op+":"+e.ID+":"+e.Result)
	}
	if got, want := strings.Join(ops, " "), "deploy:v1:ok deploy:v2:ok rollback:v1:ok deploy:v3:ok"; got != want {
		t.Errorf("history:\n got %s\nwant %s", got, want)
	}
	if _, err := os.Stat(filepath.Join(s.root, "releases", "v4")); !os.IsNotExist(err) {
		t.Errorf("the refused deploy left releases/v4: %v", err)
	}
	checkLoad(t, "busy", load, snap)
	if strings.Contains(p.log(), "DATA RACE") {
		t.Errorf("the agent reported a data race:\n%s", p.log())
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
