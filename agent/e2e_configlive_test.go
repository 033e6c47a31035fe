package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/loadgen"
)

// liveConfig is the config of the config-live test: workers, [app] env
// GREETING, an extra [app] line and the listen address vary.
const liveConfig = `root = %q

[app]
command = ["node", %q]
workers = %d
drain_timeout = "10s"
env = { GREETING = %q }
env_file = ["shared/app.env"]
%s
[[listen]]
name = "http"
address = %q

[readiness]
timeout = "20s"

[restart]
backoff_min = "50ms"
backoff_max = "1s"
`

type liveSetup struct {
	*setup
	p       *agentProc
	envFile string
	script  string // the app's file: server.js
}

func (s *liveSetup) write(workers int, greeting, appExtra, addr string) {
	script := s.script
	if script == "" {
		script = "server.js"
	}
	s.writeConfig(fmt.Sprintf(liveConfig, s.root, script, workers, greeting, appExtra, addr))
}

func (s *liveSetup) writeEnv(text string, mode os.FileMode) {
	s.t.Helper()
	if err := os.WriteFile(s.envFile, []byte(text), mode); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Chmod(s.envFile, mode); err != nil {
		s.t.Fatal(err)
	}
}

// st is status --json through the socket: the config file may be broken.
func (s *liveSetup) st() *control.StatusDoc {
	s.t.Helper()
	r := cli(s.t, nil, "status", "--json", "--socket", s.sock)
	var st control.StatusDoc
	if err := json.Unmarshal([]byte(r.stdout), &st); r.code != 0 || err != nil {
		s.t.Fatalf("status --json: %v\n%v", err, r)
	}
	return &st
}

// serving returns the serving generation's id and its workers' pids by
// WORKER_ID.
func (s *liveSetup) serving() (int, map[int]int) {
	s.t.Helper()
	for _, g := range s.st().Generations {
		if g.State == "serving" {
			pids := map[int]int{}
			for _, w := range g.Workers {
				pids[w.ID] = w.PID
			}
			return g.ID, pids
		}
	}
	return 0, nil
}

// expectWorkers checks that the serving generation has n workers with
// WORKER_ID 0..n-1, each seeing GREETING and SECRET, and returns their pids.
func (s *liveSetup) expectWorkers(n int, greeting, secret string) map[int]int {
	s.t.Helper()
	gen, pids := s.serving()
	if len(pids) != n {
		s.t.Fatalf("generation %d has %d workers %v, want %d", gen, len(pids), pids, n)
	}
	var ids []string
	for id, pid := range pids {
		env := procEnv(s.t, pid)
		ids = append(ids, env["WORKER_ID"])
		if env["WORKER_ID"] != fmt.Sprint(id) || env["GREETING"] != greeting || env["SECRET"] != secret {
			s.t.Errorf("generation %d worker %d (pid %d): WORKER_ID=%q GREETING=%q, SECRET the expected one: %v; want GREETING=%q",
				gen, id, pid, env["WORKER_ID"], env["GREETING"], env["SECRET"] == secret, greeting)
		}
	}
	sort.Strings(ids)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprint(i))
	}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		s.t.Errorf("WORKER_IDs %v, want 0..%d", ids, n-1)
	}
	return pids
}

func procEnv(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("environ of worker %d: %v", pid, err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

func samePids(t *testing.T, what string, before, after map[int]int) {
	t.Helper()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("%s: workers changed: %v -> %v", what, before, after)
	}
	for _, pid := range before {
		if !alive(pid) {
			t.Errorf("%s: worker %d is gone", what, pid)
		}
	}
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func newSecret(t *testing.T) string {
	b := make([]byte, 12)
	rand.Read(b)
	return "pw-" + hex.EncodeToString(b)
}

// reloadJSON runs `agent reload --json` with args and returns its result.
func (s *liveSetup) reloadJSON(args ...string) (control.Message, cliResult) {
	s.t.Helper()
	r := cli(s.t, nil, append([]string{"reload", "--json"}, args...)...)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var res control.Message
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil || res.Type != control.TypeResult {
		s.t.Fatalf("reload --json: no result line (%v): %v", err, r)
	}
	for _, l := range lines[:len(lines)-1] {
		var m control.Message
		if json.Unmarshal([]byte(l), &m) == nil && m.Type == control.TypeEvent && !control.Known(m.Stage, m.Kind) {
			s.t.Errorf("--json event outside control.Events: %s", l)
		}
	}
	return res, r
}

// TestE2E_configLive: `agent reload` and SIGHUP re-read deploy.toml and
// apply [app] env and workers through a zero-downtime reload; a typo or a
// [[listen]] change is refused with nothing changed; a rotated secret in an
// env file reaches the new workers and appears nowhere the agent writes.
// All of it under keep-alive and new-connection load, with no failed
// request.
func TestE2E_configLive(t *testing.T) {
	t.Parallel()
	s := &liveSetup{setup: newSetup(t, "")}
	s.envFile = filepath.Join(s.root, "shared", "app.env")
	if err := os.MkdirAll(filepath.Dir(s.envFile), 0o755); err != nil {
		t.Fatal(err)
	}
	secret1, secret2 := newSecret(t), newSecret(t)
	s.writeEnv("# database\nexport SECRET='"+secret1+"'\n", 0o600)
	s.write(2, "one", "", "127.0.0.1:0")
	app := strings.Replace(nodeServer(t), "res.end(`hello from ${release}\\n`);",
		"res.end(`${process.env.GREETING} ${process.env.WORKER_ID} ${release}\\n`);", 1)
	if app == nodeServer(t) {
		t.Fatal("the example app's answer line moved: update this test")
	}
	v1 := s.art.add(t, "v1", map[string]file{"server.js": {body: app}})
	v2 := s.art.add(t, "v2", map[string]file{"server.js": {body: app}})
	s.p = s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	s.expectWorkers(2, "one", secret1)
	addr := s.appAddr()
	keep := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: true, Timeout: 10 * time.Second, Duration: 5 * time.Minute})
	fresh := startLoadOpts(t, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: false, Timeout: 10 * time.Second, Duration: 5 * time.Minute})
	waitServed(t, keep, 20)
	waitServed(t, fresh, 20)

	// agent reload: new env and worker count.
	s.write(3, "two", "", "127.0.0.1:0")
	r := s.mustDo("reload")
	if !strings.Contains(r.stdout, "changed app.env.GREETING, app.workers") || strings.Contains(r.stdout, secret1) {
		t.Errorf("reload output: %v", r)
	}
	s.expectWorkers(3, "two", secret1)
	if st := s.st(); st.Config == nil || st.Config.Digest != fileDigest(t, s.cfg) || len(st.Config.EnvFiles) != 1 ||
		strings.Join(st.Config.EnvFiles[0].Keys, ",") != "SECRET" || st.Config.EnvFiles[0].Digest != fileDigest(t, s.envFile) {
		t.Errorf("status config: %+v", st.Config)
	}
	waitServed(t, keep, 20)
	waitServed(t, fresh, 20)

	// SIGHUP does the same.
	s.write(2, "three", "", "127.0.0.1:0")
	gen, _ := s.serving()
	s.p.cmd.Process.Signal(syscall.SIGHUP)
	proctest.WaitFor(t, 60*time.Second, "the SIGHUP reload to serve", func() bool {
		g, pids := s.serving()
		return g > gen && len(pids) == 2 && s.st().Running == nil
	})
	before := s.expectWorkers(2, "three", secret1)
	if st := s.st(); st.Config.Digest != fileDigest(t, s.cfg) {
		t.Errorf("after SIGHUP status digest %s, want the file's %s", st.Config.Digest, fileDigest(t, s.cfg))
	}

	// A typo: refused with its line and column by the CLI, by the agent and
	// on SIGHUP; the workers are never signalled.
	goodDigest := fileDigest(t, s.cfg)
	s.write(2, "typo", "wrokers = 3", "127.0.0.1:0")
	const where = `deploy.toml:9:1: unknown key "app.wrokers"`
	if r := s.do("reload"); r.code != 2 || !strings.Contains(r.stderr, where) {
		t.Errorf("reload of a typo (CLI reads it first): want exit 2 and %q: %v", where, r)
	}
	res, r := s.reloadJSON("--socket", s.sock)
	if r.code != 2 || res.Code != control.CodeConfig || !strings.Contains(res.Error, where) || res.Config == nil ||
		res.Config.Before != goodDigest || res.Config.After != goodDigest || res.Config.Applied {
		t.Errorf("reload of a typo (the agent reads it): %+v\n%v", res, r)
	}
	if r := cli(t, nil, "reload", "--socket", s.sock); r.code != 2 || !strings.Contains(r.stderr, where) || !strings.Contains(r.stderr, "nothing changed") {
		t.Errorf("reload of a typo, human output: %v", r)
	}
	s.p.cmd.Process.Signal(syscall.SIGHUP)
	proctest.WaitFor(t, 30*time.Second, "the SIGHUP refusal in the log", func() bool {
		return regexp.MustCompile(`level=ERROR msg="Config refused[^\n]*` + regexp.QuoteMeta(strings.ReplaceAll(where, `"`, `\"`))).MatchString(s.p.log())
	})
	_, after := s.serving()
	samePids(t, "typo", before, after)
	if st := s.st(); st.Config.Digest != goodDigest || st.Running != nil {
		t.Errorf("after the typo: config %s (want %s), running %+v", st.Config.Digest, goodDigest, st.Running)
	}

	// A changed [[listen]] address: refused, a restart is needed.
	s.write(2, "listen", "", "127.0.0.1:1")
	if r := s.do("reload"); r.code != 2 || !strings.Contains(r.stderr, `listen.address: "http" changed`) || !strings.Contains(r.stderr, "restarted") {
		t.Errorf("reload of a new listen address: %v", r)
	}
	_, after = s.serving()
	samePids(t, "listen address", before, after)

	// The next good edit applies.
	s.write(2, "four", "", "127.0.0.1:0")
	s.mustDo("reload")
	before = s.expectWorkers(2, "four", secret1)

	// A valid config whose generation fails: the old workers go on and the
	// previous config is in force again.
	goodDigest = fileDigest(t, s.cfg)
	s.script = "missing.js"
	s.write(2, "five", "", "127.0.0.1:0")
	res, r = s.reloadJSON("-c", s.cfg)
	if r.code != 1 || res.Config == nil || res.Config.Applied || res.Config.Before != goodDigest || res.Config.After != goodDigest ||
		res.Config.Read != fileDigest(t, s.cfg) || !strings.Contains(r.stdout, "previous config") {
		t.Errorf("reload of a config whose workers fail: %+v\n%v", res.Config, r)
	}
	if st := s.st(); st.Config.Digest != goodDigest {
		t.Errorf("after the failed generation the config in force is %s, want %s", st.Config.Digest, goodDigest)
	}
	_, after = s.serving()
	samePids(t, "failed generation", before, after)
	s.script = ""
	s.write(2, "four", "", "127.0.0.1:0")

	// A bad line in the env file: the reload fails with path:line, the
	// workers go on; then the secret is rotated (the file world-readable
	// for a moment: a warning).
	s.writeEnv("SECRET='"+secret2+"'\nnot a line\n", 0o600)
	if r := s.do("reload"); r.code != 1 || !strings.Contains(r.stderr, s.envFile+":2: ") {
		t.Errorf("reload with a bad env file: %v", r)
	}
	_, after = s.serving()
	samePids(t, "bad env file", before, after)
	s.writeEnv("SECRET='"+secret2+"'\n", 0o644)
	res, r = s.reloadJSON("-c", s.cfg)
	if r.code != 0 || res.Config == nil || res.Config.Before != res.Config.After || res.Config.After != fileDigest(t, s.cfg) || !strings.Contains(r.stdout, "readable by every user") {
		t.Errorf("reload after rotating the secret: %+v\n%v", res.Config, r)
	}
	s.writeEnv("SECRET='"+secret2+"'\n", 0o600)
	s.expectWorkers(2, "four", secret2)
	proctest.WaitFor(t, 30*time.Second, "the old workers to be drained", func() bool {
		for _, pid := range before {
			if alive(pid) {
				return false
			}
		}
		return true
	})

	// A deploy after the re-read uses the config in force.
	s.mustDo("deploy", "--id", "v2", v2)
	s.expectWorkers(2, "four", secret2)
	waitServed(t, keep, 20)
	waitServed(t, fresh, 20)

	for name, run := range map[string]*loadgen.Run{"keep-alive": keep, "new connections": fresh} {
		end := run.Stop()
		t.Logf("%s load: %s", name, end)
		if end.FailedTotal != 0 || end.StaleKeepAlive != 0 {
			t.Errorf("%s load: %d failed, %d stale keep-alive: %v %q", name, end.FailedTotal, end.StaleKeepAlive, end.Failed, end.Errors)
		}
	}

	// The secrets appear nowhere the agent writes.
	places := map[string]string{
		"agent log":      s.p.log(),
		"status --json":  s.mustDo("status", "--json").stdout,
		"history --json": s.mustDo("history", "--json").stdout,
		"status":         s.mustDo("status").stdout,
	}
	state, err := os.ReadFile(filepath.Join(s.root, ".agent", "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	places["state.json"] = string(state)
	for where, text := range places {
		for _, secret := range []string{secret1, secret2} {
			if strings.Contains(text, secret) {
				t.Errorf("a secret value appears in the %s", where)
			}
		}
	}
	if !strings.Contains(places["status"], "env file") || !strings.Contains(places["status"], "SECRET") {
		t.Errorf("status does not show the env file's keys:\n%s", places["status"])
	}
}
