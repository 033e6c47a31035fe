package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testProcs(t *testing.T) *procs {
	t.Helper()
	ps := &procs{logDir: t.TempDir(), logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	t.Cleanup(ps.stopAll)
	return ps
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadProc_self(t *testing.T) {
	p, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.PPID != os.Getppid() || p.Start == 0 || !alive(p) {
		t.Fatalf("readProc(self) = %+v, ppid want %d", p, os.Getppid())
	}
	if rss, err := rssKiB(os.Getpid()); err != nil || rss <= 0 {
		t.Fatalf("rssKiB(self) = %d, %v", rss, err)
	}
	rss, _ := rssKiB(os.Getpid())
	if pss, err := pssKiB(os.Getpid()); err != nil || pss <= 0 || pss > rss+1024 {
		t.Fatalf("pssKiB(self) = %d, %v (rss %d)", pss, err, rss)
	}
}

func TestProcs_stopEndsTheTree(t *testing.T) {
	ps := testProcs(t)
	c, err := ps.start(spawn{name: "tree", argv: []string{"/bin/sh", "-c", "sleep 60 & sleep 60 & wait"}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two grandchildren", 5*time.Second, func() bool { return len(descendants(c.pid())) == 2 })
	desc := descendants(c.pid())
	ps.stop(c, 2*time.Second)
	if !c.exited() {
		t.Fatal("child not reaped")
	}
	for _, d := range desc {
		if alive(d) {
			t.Errorf("descendant %d still alive", d.PID)
		}
	}
	pids, err := os.ReadFile(filepath.Join(ps.logDir, "children.pids"))
	if err != nil || !strings.HasPrefix(string(pids), strings.Fields(string(pids))[0]) || len(strings.Fields(string(pids))) != 2 {
		t.Fatalf("children.pids = %q, %v", pids, err)
	}
}

func TestProcs_stopEscalatesToSIGKILL(t *testing.T) {
	ps := testProcs(t)
	c, err := ps.start(spawn{name: "stubborn", argv: []string{"/bin/sh", "-c", `trap "" TERM; echo armed; while :; do sleep 0.05; done`}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "trap armed", 5*time.Second, func() bool {
		b, _ := os.ReadFile(c.logPath(ps))
		return strings.Contains(string(b), "armed")
	})
	begin := time.Now()
	ps.stop(c, 200*time.Millisecond)
	if !c.exited() {
		t.Fatal("not reaped")
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Fatalf("stop took %v", d)
	}
}

func TestProcs_runReportsFailureWithOutput(t *testing.T) {
	ps := testProcs(t)
	err := ps.run(context.Background(), spawn{name: "fails", argv: []string{"/bin/sh", "-c", "echo something broke; exit 3"}}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "something broke") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("run = %v", err)
	}
	out, err := ps.output(context.Background(), spawn{name: "prints", argv: []string{"/bin/echo", "hello"}}, 5*time.Second)
	if err != nil || string(out) != "hello\n" {
		t.Fatalf("output = %q, %v", out, err)
	}
	// Names are unique per process: the second "prints" gets its own log.
	if _, err := ps.output(context.Background(), spawn{name: "prints", argv: []string{"/bin/true"}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ps.logDir, "prints.2.log")); err != nil {
		t.Fatal(err)
	}
	// The end of ctx stops a command at once.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	begin := time.Now()
	if err := ps.run(ctx, spawn{name: "long", argv: []string{"/bin/sleep", "30"}}, time.Minute); !errors.Is(err, context.Canceled) {
		t.Fatalf("run after cancel = %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Fatalf("cancelled run took %v", d)
	}
}

func TestBuildArchive(t *testing.T) {
	files := []releaseFile{{Name: "app.js", Data: []byte("console.log(1)\n")}, {Name: "RELEASE", Data: []byte("r1\n")}}
	a, err := buildArchive(files)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := buildArchive(files)
	if !bytes.Equal(a, b) {
		t.Fatal("the same files gave different archives")
	}
	gz, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		got[h.Name] = string(data)
	}
	if got["app.js"] != "console.log(1)\n" || got["RELEASE"] != "r1\n" || len(got) != 2 {
		t.Fatalf("archive holds %q", got)
	}
}

func TestArtifactServer_servesWithChecksum(t *testing.T) {
	a, err := newArtifactServer()
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	url, err := a.add("r7.tar.gz", []releaseFile{{Name: "app.js", Data: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.Contains(url, "/r7.tar.gz?checksum=sha256:") {
		t.Fatalf("url %q", url)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if resp.StatusCode != 200 || !strings.HasSuffix(url, hex.EncodeToString(sum[:])) {
		t.Fatalf("status %d, sum %x, url %s", resp.StatusCode, sum, url)
	}
	if resp, err := http.Get(strings.Replace(url, "r7", "r8", 1)); err != nil || resp.StatusCode != 404 {
		t.Fatalf("unknown archive: %v %v", resp, err)
	}
}

func TestBodyHasToken(t *testing.T) {
	is := bodyHasToken("r1")
	for body, want := range map[string]bool{"hello from r1": true, "hello from r12": false, "hello from gen1": false, "r1": true} {
		if got := is(body); got != want {
			t.Errorf("bodyHasToken(r1)(%q) = %v", body, got)
		}
	}
}

func TestReadyTime(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	events := []agentEvent{
		{Type: "event", Time: at(0), Stage: "fetch", Kind: "start"},
		{Type: "event", Time: at(100), Stage: "reload", Kind: "start", Message: "starting 2 workers"},
		{Type: "event", Time: at(700), Stage: "reload", Kind: "worker", Message: "generation 3: 1/2 workers ready"},
		{Type: "event", Time: at(720), Stage: "reload", Kind: "worker", Message: "generation 3: 2/2 workers ready"},
		{Type: "event", Time: at(721), Stage: "reload", Kind: "step", Message: "generation 3: quorum"},
		{Type: "result", Time: at(900), Code: "ok"},
	}
	if got := readyTime(events); !got.Equal(at(721)) {
		t.Errorf("readyTime = %v", got)
	}
	if got := reloadStart(events); !got.Equal(at(100)) {
		t.Errorf("reloadStart = %v", got)
	}
	if got := readyTime(events[:4]); !got.Equal(at(720)) {
		t.Errorf("readyTime without quorum = %v", got)
	}
	quorum1 := []agentEvent{
		{Type: "event", Time: at(500), Stage: "reload", Kind: "worker", Message: "generation 4: 1/2 workers ready"},
		{Type: "event", Time: at(501), Stage: "reload", Kind: "step", Message: "generation 4: quorum: 1 of 2 ready after 1.547s"},
		{Type: "event", Time: at(502), Stage: "reload", Kind: "step", Message: "generation 3: quorumless"},
	}
	if got := readyTime(quorum1); !got.Equal(at(501)) {
		t.Errorf("readyTime with quorum 1 = %v", got)
	}
	failed := []agentEvent{{Type: "event", Time: at(3000), Stage: "reload", Kind: "warn", Message: "0 of 2 workers ready within 3s"}}
	if got := readyTime(failed); !got.IsZero() {
		t.Errorf("readyTime of a failed reload = %v", got)
	}
}

func TestMergeRounds(t *testing.T) {
	rs := []Row{
		{Manager: "x", Seconds: 2, Requests: 10, OK: 9, FailedTotal: 1, Failed: map[string]int64{"reset": 1}, PerSecond: []int64{5, 4, 1}, MedianSecond: 5, P50MS: 1, P99MS: 10, MaxMS: 50,
			ManagerUsage: &Usage{RSSKiB: 100, CPUPercent: 1}, WorkersUsage: &Usage{CPUPercent: 80, PerPID: []float64{50, 30}}},
		{Manager: "x", Seconds: 2, Requests: 20, OK: 20, PerSecond: []int64{10, 9, 2}, MedianSecond: 10, P50MS: 2, P99MS: 20, MaxMS: 40,
			ManagerUsage: &Usage{RSSKiB: 120, CPUPercent: 3}, WorkersUsage: &Usage{CPUPercent: 80, PerPID: []float64{70, 10}}},
		{Manager: "x", Seconds: 2, Requests: 30, OK: 30, PerSecond: []int64{7, 8, 3}, MedianSecond: 8, P50MS: 3, P99MS: 30, MaxMS: 60,
			ManagerUsage: &Usage{RSSKiB: 110, CPUPercent: 2}, WorkersUsage: &Usage{CPUPercent: 80, PerPID: []float64{60, 20}}},
	}
	m := mergeRounds(rs)
	if m.Requests != 60 || m.OK != 59 || m.FailedTotal != 1 || m.Failed["reset"] != 1 || m.Seconds != 6 {
		t.Fatalf("counts %+v", m)
	}
	// Partial last seconds are left out: 5 4 10 9 7 8.
	if len(m.PerSecond) != 6 || m.WorstSecond != 4 || m.MedianSecond != 8 {
		t.Fatalf("per second %v worst %d median %d", m.PerSecond, m.WorstSecond, m.MedianSecond)
	}
	if m.P50MS != 2 || m.P99MS != 20 || m.MaxMS != 60 {
		t.Fatalf("latency %v %v %v", m.P50MS, m.P99MS, m.MaxMS)
	}
	if m.ManagerUsage.RSSKiB != 120 || m.ManagerUsage.CPUPercent != 2 || m.WorkersUsage.PerPID[0] != 60 || m.WorkersUsage.PerPID[1] != 20 {
		t.Fatalf("usage %+v %+v", m.ManagerUsage, m.WorkersUsage)
	}
	// (2 + 80) % of a core over 6 s for 59 responses.
	if want := 0.82 * 6 / 59 * 1e6; m.CPUPerRequestUS < want*0.999 || m.CPUPerRequestUS > want*1.001 {
		t.Fatalf("cpu per request %v, want %v", m.CPUPerRequestUS, want)
	}
	if m.BestRound != 10 {
		t.Fatalf("best round %d", m.BestRound)
	}
	if len(m.Rounds) != 3 {
		t.Fatalf("rounds %d", len(m.Rounds))
	}
}

func sampleResults() *Results {
	row := func(mgr, scenario, mode string, median int64, p99 float64) Row {
		return Row{Manager: mgr, Scenario: scenario, Mode: mode, Shutdown: "graceful", Conns: 32, MedianSecond: median, WorstSecond: median / 2, P99MS: p99}
	}
	r := &Results{AppBootMS: 500}
	r.Rows = []Row{
		row("alone", "baseline", modeKeepAlive, 6000, 10),
		row("handoff", "baseline", modeKeepAlive, 5000, 10),
		row("cluster-master", "baseline", modeKeepAlive, 5500, 12),
		row("pm2", "baseline", modeKeepAlive, 3000, 20),
		row("handoff", "baseline", modeNewConn, 3000, 20),
		row("cluster-master", "baseline", modeNewConn, 1500, 30),
		row("pm2", "baseline", modeNewConn, 1000, 40),
	}
	r.Rows[1].ManagerUsage = &Usage{RSSKiB: 15 * 1024, CPUPercent: 0.1}
	reloads := row("handoff", "reloads", modeKeepAlive, 4000, 14)
	for i := 0; i < 10; i++ {
		reloads.Reloads = append(reloads.Reloads, Reload{N: i + 1, OK: true, ReadyMS: 530, SpawnMS: 30, FirstNewMS: 540, OldGoneMS: 600})
	}
	reloads.FailedTotal, reloads.Failed = 2, map[string]int64{"reset": 2}
	r.Rows = append(r.Rows, reloads, row("handoff", "reloads", modeNewConn, 2500, 40))
	return r
}

func TestEvaluate(t *testing.T) {
	r := sampleResults()
	evaluate(r)
	got := map[string]Target{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg
	}
	want := map[string]bool{
		"0 failed requests in every handoff row":       false, // 2 resets
		"steady throughput, keep-alive":                false, // 5000 < 5500
		"steady throughput, new-conn":                  true,  // 3000 > 1500
		"reload time (trigger → new generation ready)": true,  // 530 ≤ 550
		"p99 during reloads, keep-alive":               true,  // 14 ≤ 15
		"p99 during reloads, new-conn":                 false, // 40 > 30
		"agent RSS, steady state":                      true,
		"agent CPU, steady state under load":           true,
	}
	for name, met := range want {
		tg, ok := got[name]
		if !ok {
			t.Errorf("target %q not evaluated", name)
			continue
		}
		if tg.Met != met {
			t.Errorf("%s: met = %v, want %v (%+v)", name, tg.Met, met, tg)
		}
	}
	if tg := got["steady throughput, keep-alive"]; !strings.Contains(tg.Margin, "-9.1%") {
		t.Errorf("keep-alive margin %q", tg.Margin)
	}
	if tg := got["0 failed requests in every handoff row"]; !strings.Contains(tg.Margin, "reset:2") {
		t.Errorf("failed margin %q", tg.Margin)
	}
}

func TestRenderMarkdown(t *testing.T) {
	r := sampleResults()
	evaluate(r)
	md := renderMarkdown(r)
	for _, want := range []string{
		"| manager | mode | req/s baseline | vs alone | vs best other |",
		"| handoff | keep-alive | 5000 (2500) | 0.83× | 0.91× cluster-master |",
		"| cluster-master | keep-alive | 5500 (2750) | 0.92× | (best) |",
		"**missed** — steady throughput, keep-alive",
		"met — reload time",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// TestAlone_realApp starts the fixture app twice on one shared socket, the
// way the alone row does, and checks it serves and is fully stopped.
func TestAlone_realApp(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is needed (scripts/install-deps.sh installs it): %v", err)
	}
	fixtures, _ := filepath.Abs("../../bench/fixtures")
	b := &bench{procs: testProcs(t), node: node, fixtures: fixtures, workers: 2, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	boot, err := b.measureBoot(ctx, 1)
	if err != nil || boot < 100*time.Millisecond {
		t.Fatalf("boot = %v, %v (the fixture waits 500 ms before it listens)", boot, err)
	}
	m, err := b.startAlone(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body, err := probe(m.addr())
	if err != nil || body != "hello from alone" {
		t.Fatalf("probe = %q, %v", body, err)
	}
	ws := m.workers()
	if len(ws) != 2 {
		t.Fatalf("workers = %+v", ws)
	}
	// One short measured row through the real load generator.
	b.conns = 4
	row := &Row{Scenario: "baseline", Mode: modeKeepAlive}
	if err := b.runRow(ctx, m, row, rowPlan{steady: time.Second}); err != nil {
		t.Fatal(err)
	}
	if row.OK == 0 || row.FailedTotal != 0 || row.Bodies["hello from alone"] != row.OK {
		t.Fatalf("row: ok %d failed %d %v bodies %v", row.OK, row.FailedTotal, row.Errors, row.Bodies)
	}
	if row.WorkersUsage == nil || row.WorkersUsage.PIDs != 2 || row.CPUPerRequestUS <= 0 || row.ManagerUsage != nil {
		t.Fatalf("usage: workers %+v manager %+v cpu/request %v", row.WorkersUsage, row.ManagerUsage, row.CPUPerRequestUS)
	}
	m.stop()
	for _, w := range ws {
		if alive(w) {
			t.Errorf("worker %d still alive", w.PID)
		}
	}
}

func TestBench_skipPastTheBudget(t *testing.T) {
	b := &bench{logger: slog.New(slog.NewTextHandler(io.Discard, nil)), deadline: time.Now().Add(time.Hour)}
	res := &Results{}
	if b.skip(context.Background(), res, "a row") {
		t.Fatal("skipped before the deadline")
	}
	b.deadline = time.Now().Add(-time.Second)
	if !b.skip(context.Background(), res, "a late row") || len(res.Skipped) != 1 || res.Skipped[0] != "a late row" {
		t.Fatalf("skipped = %v", res.Skipped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.deadline = time.Now().Add(time.Hour)
	if !b.skip(ctx, res, "interrupted") || len(res.Skipped) != 1 {
		t.Fatalf("an interrupted run skips without recording: %v", res.Skipped)
	}
	if md := renderMarkdown(res); !strings.Contains(md, "skipped to stay within the time budget: a late row") {
		t.Fatalf("markdown does not list the skipped row:\n%s", md)
	}
}
