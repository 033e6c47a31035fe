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
	"github.com/handoff/handoff/loadgen"

	"github.com/handoff/handoff/internal/proctest"
)

// soakDeploys is how many deploys TestSoak_deploys runs in a row.
const soakDeploys = 200

// TestSoak_deploys deploys soakDeploys releases in a row under keep-alive
// load, with testdata/soakapp (a minimal Go server, built once) as a fast
// worker: no request fails, the agent's open fds, threads and RSS stay flat from the 10th
// deploy to the last, and releases/ holds keep_releases.
func TestSoak_deploys(t *testing.T) {
	t.Parallel()
	start := time.Now()
	s := newSetup(t, "")
	app := filepath.Join(s.dir, "goapp")
	build := exec.Command("go", "build", "-o", app, "./testdata/soakapp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building testdata/soakapp: %v\n%s", err, out)
	}
	t.Logf("built testdata/soakapp in %s", time.Since(start).Round(time.Millisecond))
	cfg := strings.Replace(mustRead(t, s.cfg), `command = ["node", "server.js"]`, `command = [`+strconv.Quote(app)+`]`, 1)
	s.writeConfig(cfg)
	url := s.art.add(t, "app", map[string]file{"VERSION": {body: "soak"}})

	p := s.start(nil)
	pid := p.cmd.Process.Pid
	deploy := func(i int) {
		t.Helper()
		id := "s" + strconv.Itoa(i)
		res, err := control.Call(s.sock, control.Request{Op: control.OpDeploy, ID: id, URL: url}, nil)
		if err != nil || res.Code != control.CodeOK {
			t.Fatalf("deploy %d: %v %+v", i, err, res)
		}
	}
	deploy(0)
	addr := s.appAddr()
	load := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: true, Timeout: 10 * time.Second})
	waitServed(t, load, 20)

	const warm = 10
	loopStart := time.Now()
	var before procStat
	for i := 1; i <= soakDeploys; i++ {
		deploy(i)
		if i == warm {
			before = readProc(t, pid)
		}
	}
	loop := time.Since(loopStart)
	after := readProc(t, pid)
	res := load.Stop()
	t.Logf("%d deploys in %s (%s each) under load: %s", soakDeploys, loop.Round(time.Millisecond), (loop / soakDeploys).Round(time.Millisecond), res)
	t.Logf("agent after deploy %d -> %d: fds %d -> %d, threads %d -> %d, RSS %d -> %d KiB",
		warm, soakDeploys, before.fds, after.fds, before.threads, after.threads, before.rssKB, after.rssKB)
	if res.FailedTotal != 0 || res.OK == 0 {
		t.Errorf("load over the soak: %s", res)
	}
	if got := proctest.Get(t, addr); got != "hello from s"+strconv.Itoa(soakDeploys) {
		t.Errorf("after the soak: %q", got)
	}
	if after.fds > before.fds+2 {
		t.Errorf("open fds grew from %d to %d", before.fds, after.fds)
	}
	if after.threads > before.threads+3 {
		t.Errorf("threads grew from %d to %d", before.threads, after.threads)
	}
	// The race detector's shadow memory grows with the heap; allow more
	// noise when it is on.
	slack := int64(8 << 10)
	if raceEnabled {
		slack = 48 << 10
	}
	if after.rssKB > before.rssKB+slack {
		t.Errorf("RSS grew from %d to %d KiB", before.rssKB, after.rssKB)
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "releases"))
	if err != nil {
		t.Fatal(err)
	}
	var rels []string
	for _, e := range entries {
		if e.Name() != ".incoming" {
			rels = append(rels, e.Name())
		}
	}
	if len(rels) != 3 { // keep_releases in baseConfig
		t.Errorf("releases/ holds %v; want keep_releases = 3", rels)
	}
	if st := s.status(); len(st.Generations) != 1 || len(workerPIDs(st)) != 2 {
		t.Errorf("after the soak: %+v", st.Generations)
	}
}
