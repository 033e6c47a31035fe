package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
)

// metricsConfig is the e2e config (baseConfig) with the endpoint on
// 127.0.0.1:port.
const metricsConfig = baseConfig + `
[metrics]
address = "127.0.0.1:%d"
`

// TestE2E_metricsPrometheus: a real Prometheus scrapes the real agent every
// second through deploys, a deploy that fails and is rolled back, a refused
// deploy (pre-activate hook), a rollback, a killed worker and an in-place
// upgrade; its HTTP API then answers with the values these operations must
// give, the alert rules fire on the failure, and every query of the Grafana
// dashboard evaluates. `promtool check metrics` is clean on the endpoint.
func TestE2E_metricsPrometheus(t *testing.T) {
	s := newSetup(t, "")
	port := proctest.FreePort(t)
	s.writeConfig(fmt.Sprintf(metricsConfig, s.root, port))
	endpoint := fmt.Sprintf("127.0.0.1:%d", port)
	prom := startPrometheus(t, endpoint)

	p := s.start(nil)
	if st := s.status(); st.Metrics != endpoint {
		t.Fatalf("status metrics %q, want %q", st.Metrics, endpoint)
	}
	before := scrapeMetrics(t, endpoint)
	promtoolMetrics(t, before)
	if v := sampleValue(t, before, `handoff_generation`); v != 0 {
		t.Errorf("handoff_generation before the first deploy = %v", v)
	}

	s.mustDo("deploy", "--id", "v1", s.art.app(t, "v1", nil))
	s.mustDo("deploy", "--id", "v2", s.art.app(t, "v2", nil))
	if r := s.do("deploy", "--id", "v3", s.art.broken(t, "v3")); r.code != 1 {
		t.Fatalf("broken deploy: %v", r)
	}
	hook := map[string]file{".deploy/hooks/pre-activate": {mode: 0o755, body: "#!/bin/sh\necho migration failed\nexit 3\n"}}
	if r := s.do("deploy", "--id", "v4", s.art.app(t, "v4", hook)); r.code != 1 {
		t.Fatalf("deploy with a failing pre-activate hook: %v", r)
	}
	s.mustDo("rollback")
	fetched := s.art.srv.BlobBytes() // each fetched once

	st := s.status()
	if st.Current != "v1" || len(st.Generations) != 1 {
		t.Fatalf("after the rollback: %+v", st)
	}
	gen := st.Generations[0].ID
	victim := st.Generations[0].Workers[0].PID
	syscall.Kill(victim, syscall.SIGKILL)
	proctest.WaitFor(t, 20*time.Second, "the killed worker restarted and ready", func() bool {
		w := s.status().Generations[0].Workers[0]
		return w.PID != victim && w.State == "ready"
	})

	// What Prometheus must see, each series' value once it scraped it.
	want := map[string]float64{
		`handoff_deploys_total{op="deploy",result="ok"}`:                2,
		`handoff_deploys_total{op="deploy",result="failed"}`:            2, // never ready; pre-activate
		`handoff_deploys_total{op="rollback",result="ok"}`:              1,
		`handoff_deploys_total{op="reload",result="failed"}`:            0,
		`handoff_deploy_duration_seconds_count{op="deploy"}`:            4,
		`handoff_readiness_seconds_count`:                               3, // v1, v2, the rollback
		`handoff_release_info{release="v1"}`:                            1,
		`count(handoff_release_info)`:                                   1,
		`handoff_generation`:                                            float64(gen),
		`handoff_workers{state="ready"}`:                                2,
		`handoff_workers{state="starting"}`:                             0,
		`handoff_hook_failures_total{stage="pre-activate"}`:             1,
		`handoff_hook_failures_total{stage="post-deploy"}`:              0,
		`handoff_fetch_bytes_total`:                                     float64(fetched),
		`handoff_worker_restarts_total`:                                 1,
		`handoff_worker_exits_total{reason="killed"}`:                   1,
		`handoff_worker_exits_total{reason="stopped"}`:                  6, // v1 and v2 retired, v3 stopped
		`handoff_worker_exits_total{reason="exited"}`:                   0,
		`handoff_listeners_lost_total`:                                  0,
		`handoff_rescue_held_connections_total`:                         0, // no client connected
		`sum(handoff_rescued_connections_total)`:                        0,
		`handoff_agent_info{upgrades="0"}`:                              1,
		`up{job="handoff"}`:                                             1,
		`count(process_resident_memory_bytes > 1e6)`:                    1,
		`count(go_goroutines > 0)`:                                      1,
		`count(process_open_fds > 0)`:                                   1,
		`count(process_cpu_seconds_total > 0)`:                          1,
		`count(go_memstats_heap_alloc_bytes > 0)`:                       1,
		`count(handoff_deploy_duration_seconds_bucket{op="deploy"})`:    17, // 16 bounds and +Inf
		`handoff_deploy_duration_seconds_bucket{op="deploy",le="+Inf"}`: 4,
		`count(process_start_time_seconds > time() - 3600)`:             1,
	}
	for q, v := range want {
		prom.expect(t, q, v)
	}
	// The failed deploys fire the alert (its rule file is loaded).
	proctest.WaitFor(t, 30*time.Second, "HandoffDeployFailed firing", func() bool {
		return prom.alertFiring(t, "HandoffDeployFailed")
	})

	after := scrapeMetrics(t, endpoint)
	promtoolMetrics(t, after)
	checkDashboard(t, prom, after)

	// SIGUSR2: the new program adopts the endpoint's socket (same inode);
	// its counters start from 0.
	inode := proctest.ListenInode(t, port)
	p.cmd.Process.Signal(syscall.SIGUSR2)
	proctest.WaitFor(t, 30*time.Second, "the upgraded agent's endpoint", func() bool {
		out, err := getMetrics(endpoint)
		return err == nil && strings.Contains(out, `handoff_agent_info{version=`) && strings.Contains(out, `upgrades="1"} 1`)
	})
	if got := proctest.ListenInode(t, port); got != inode || inode == "" {
		t.Errorf("endpoint socket inode %q after the upgrade, want %q", got, inode)
	}
	up := scrapeMetrics(t, endpoint)
	if v := sampleValue(t, up, `handoff_deploys_total{op="deploy",result="ok"}`); v != 0 {
		t.Errorf("deploys after the upgrade = %v, want 0 (counters restart)", v)
	}
	if v := sampleValue(t, up, `handoff_generation`); v != float64(gen) {
		t.Errorf("handoff_generation after the upgrade = %v, want %d", v, gen)
	}
	prom.expect(t, `handoff_agent_info{upgrades="1"}`, 1)
	prom.expect(t, `resets(handoff_deploys_total{op="deploy",result="ok"}[10m])`, 1)
}

// TestE2E_metricsAddressInUse: an endpoint address taken by another socket
// is refused at start as a config error at its line, exit 2.
func TestE2E_metricsAddressInUse(t *testing.T) {
	s := newSetup(t, "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.writeConfig(fmt.Sprintf(metricsConfig, s.root, l.Addr().(*net.TCPAddr).Port))
	p := s.spawn(nil)
	if code := p.wait(30 * time.Second); code != exitUsage {
		t.Fatalf("exit %d, want %d; log:\n%s", code, exitUsage, p.log())
	}
	line := strings.Count(metricsConfig[:strings.Index(metricsConfig, "address = \"127.0.0.1:%d\"")], "\n") + 1
	want := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(s.cfg) + fmt.Sprintf(":%d:1: ", line) + `metrics\.address: listen tcp 127\.0\.0\.1:\d+: bind: address already in use$`)
	if !want.MatchString(p.log()) {
		t.Errorf("stderr does not name the line:\n%s", p.log())
	}
	if _, err := os.Stat(s.sock); err == nil {
		t.Errorf("control socket left behind at %s", s.sock)
	}
}

// TestMetrics_alertRules: the alert rules load and their unit tests pass.
func TestMetrics_alertRules(t *testing.T) {
	promtool := lookPathOrFail(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "handoff-alerts.yml"},
		{"test", "rules", "handoff-alerts.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../scripts/metrics"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

func lookPathOrFail(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (scripts/install-deps.sh installs Debian's prometheus): %v", name, err)
	}
	return p
}

func getMetrics(addr string) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != 200 {
		err = fmt.Errorf("GET /metrics: %s", res.Status)
	}
	return string(b), err
}

func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	out, err := getMetrics(addr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// sampleValue is the value of the sample line that starts with series.
func sampleValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in:\n%s", series, text)
	return 0
}

func promtoolMetrics(t *testing.T, text string) {
	t.Helper()
	cmd := exec.Command(lookPathOrFail(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s\non:\n%s", err, out, text)
	}
}

// prometheus is a real Prometheus server on 127.0.0.1, scraping the agent
// every second with the alert rules loaded.
type prometheus struct {
	addr string
}

func startPrometheus(t *testing.T, target string) *prometheus {
	t.Helper()
	bin := lookPathOrFail(t, "prometheus")
	dir := t.TempDir()
	rules, err := filepath.Abs("../scripts/metrics/handoff-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: handoff
    static_configs:
      - targets: [%q]
`, rules, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Prometheus takes no port 0: a free port, as FreePort finds one.
	p := &prometheus{addr: fmt.Sprintf("127.0.0.1:%d", proctest.FreePort(t))}
	proc := proctest.Start(t, "prometheus", exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn"))
	t.Cleanup(func() { // before proctest's SIGKILL of the group: stop it by its pid
		proc.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-proc.Done():
		case <-time.After(10 * time.Second):
		}
	})
	proctest.WaitFor(t, 60*time.Second, "prometheus ready", func() bool {
		select {
		case <-proc.Done():
			t.Fatalf("prometheus exited:\n%s", proc.Output())
		default:
		}
		res, err := http.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	})
	return p
}

// apiResult is what /api/v1/query answers.
type apiResult struct {
	Status    string `json:"status"`
	Error     string `json:"error"`
	ErrorType string `json:"errorType"`
	Data      struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

func (p *prometheus) query(t *testing.T, q string) apiResult {
	t.Helper()
	res, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r apiResult
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	if r.Status != "success" {
		t.Fatalf("query %s: %s: %s", q, r.ErrorType, r.Error)
	}
	return r
}

// expect waits until q gives exactly one series with value want (scrapes
// come every second; the last one may predate the last operation).
func (p *prometheus) expect(t *testing.T, q string, want float64) {
	t.Helper()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := p.query(t, q)
		if len(r.Data.Result) == 1 {
			s, _ := r.Data.Result[0].Value[1].(string)
			if v, err := strconv.ParseFloat(s, 64); err == nil && v == want {
				return
			}
		}
		last = fmt.Sprintf("%+v", r.Data.Result)
		if time.Now().After(deadline) {
			t.Errorf("query %s: got %s, want one series = %v", q, last, want)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (p *prometheus) alertFiring(t *testing.T, name string) bool {
	t.Helper()
	res, err := http.Get("http://" + p.addr + "/api/v1/alerts")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var r struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(res.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	for _, a := range r.Data.Alerts {
		if a.Labels["alertname"] == name && a.State == "firing" {
			return true
		}
	}
	return false
}

// checkDashboard evaluates every query of the Grafana dashboard on the real
// Prometheus (Grafana's variables filled in): each must be valid and find
// series, and each metric it names must be in the endpoint's output.
func checkDashboard(t *testing.T, p *prometheus, scrape string) {
	t.Helper()
	b, err := os.ReadFile("../scripts/metrics/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	vars := strings.NewReplacer("$instance", ".*", "$__rate_interval", "1m", "$__range", "10m")
	names := regexp.MustCompile(`\b((?:handoff|go|process)_[a-z_]+)`)
	n := 0
	for _, panel := range dash.Panels {
		for _, tg := range panel.Targets {
			n++
			for _, m := range names.FindAllStringSubmatch(tg.Expr, -1) {
				base := regexp.MustCompile(`_(bucket|sum|count)$`).ReplaceAllString(m[1], "")
				if !strings.Contains(scrape, "\n# TYPE "+base+" ") && !strings.HasPrefix(scrape, "# HELP "+base+" ") {
					t.Errorf("dashboard panel %q: %s is not exposed", panel.Title, m[1])
				}
			}
			if r := p.query(t, vars.Replace(tg.Expr)); len(r.Data.Result) == 0 {
				t.Errorf("dashboard panel %q: %s finds no series", panel.Title, tg.Expr)
			}
		}
	}
	if n < 10 {
		t.Errorf("dashboard has %d queries", n)
	}
}

// TestE2E_metricsUnixSocket: the endpoint on a unix socket replaces a stale
// socket file (left by a killed agent), answers there, stays there when a
// reload re-reads a config that moves it (refused: restart_needed), and its
// path goes with the agent.
func TestE2E_metricsUnixSocket(t *testing.T) {
	s := newSetup(t, "")
	path := filepath.Join(s.dir, "metrics.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, nobody listens: what kill -9 leaves
	s.writeConfig(fmt.Sprintf(baseConfig, s.root) + "\n[metrics]\naddress = \"unix:metrics.sock\"\n")
	p := s.start(nil)
	if st := s.status(); st.Metrics != "unix:"+path {
		t.Fatalf("status metrics %q, want unix:%s", st.Metrics, path)
	}
	if out := s.mustDo("status").stdout; !regexp.MustCompile(`(?m)^metrics +unix:` + regexp.QuoteMeta(path) + `$`).MatchString(out) {
		t.Errorf("agent status does not show the endpoint:\n%s", out)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}}
	scrape := func() string {
		t.Helper()
		res, err := c.Get("http://agent/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return string(b)
	}
	b := scrape()
	if v := sampleValue(t, b, "handoff_generation"); v != 0 {
		t.Errorf("handoff_generation = %v with no deploy", v)
	}
	promtoolMetrics(t, b)

	// A re-read config that moves the endpoint is refused: a restart is
	// needed; the endpoint stays where it is and counts the refusal.
	s.writeConfig(fmt.Sprintf(baseConfig, s.root) + "\n[metrics]\naddress = \"unix:other.sock\"\n")
	if r := s.do("reload"); r.code != 2 || !strings.Contains(r.stderr, "metrics.address: changed") || !strings.Contains(r.stderr, "restarted") {
		t.Errorf("reload moving the endpoint: %v", r)
	}
	if v := sampleValue(t, scrape(), `handoff_deploys_total{op="reload",result="restart_needed"}`); v != 1 {
		t.Errorf("refused reloads counted %v, want 1", v)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s after the agent stopped: %v", path, err)
	}
}
