package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
)

// gunicornApp answers "hello from <release>" on every path; its file "mode"
// changes /up ("500", "hang", "after=3") or breaks the import
// ("import-error").
const gunicornApp = `import os, sys, time
RELEASE = os.environ.get("DEPLOY_RELEASE_ID", "?")
MODE = open("mode").read().strip() if os.path.exists("mode") else ""
if MODE == "import-error":
    raise RuntimeError("settings: DATABASE_URL is not set")
STARTED = time.monotonic()

def app(environ, start_response):
    if environ.get("PATH_INFO") == "/up":
        if MODE == "500":
            print("health: database unreachable", file=sys.stderr, flush=True)
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return [b""]
        if MODE == "hang":
            print("health: waiting for the database", file=sys.stderr, flush=True)
            time.sleep(3600)
        if MODE.startswith("after=") and time.monotonic() - STARTED < float(MODE[6:]):
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
    body = ("hello from " + RELEASE).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// Plain gunicorn (sync workers, no --preload) with readiness notify and
// http_path: its arbiter sends READY=1 before its workers load the app, so
// only the HTTP check tells a release that cannot serve. Each bad release:
// exit 1, current points back, the old arbiter and its workers keep their
// pids and serve; no request fails under load. A release healthy after 3s
// deploys once /up turns 2xx.
func TestE2E_readinessHTTPGunicorn(t *testing.T) {
	if _, err := exec.LookPath("gunicorn"); err != nil {
		t.Fatalf("gunicorn not installed (scripts/install-examples-deps.sh): %v", err)
	}
	s := newSetup(t, "")
	s.writeConfig(fmt.Sprintf(`root = %q
[app]
command = ["gunicorn", "--workers", "2", "--graceful-timeout", "5", "wsgi:app"]
workers = 1
drain_timeout = "10s"

[[listen]]
name = "http"
address = "127.0.0.1:0"

[readiness]
mode = "notify"
timeout = "15s"
http_path = "/up"
http_timeout = "1s"
`, s.root))
	release := func(name, mode string) string {
		return s.art.add(t, name, map[string]file{"wsgi.py": {body: gunicornApp}, "mode": {body: mode}})
	}
	s.start(nil)
	s.mustDo("deploy", "--id", "good", release("good", ""))
	addr := s.appAddr()
	if got := proctest.Get(t, addr); got != "hello from good" {
		t.Fatalf("good serves %q", got)
	}
	oldPids := func() []int {
		var out []int
		for _, pid := range workerPIDs(s.status()) {
			out = append(out, groupMembers(pid)...) // the arbiter and its workers
		}
		slices.Sort(out)
		return out
	}
	// The arbiter may fork its second worker after the first answered.
	proctest.WaitFor(t, 10*time.Second, "an arbiter and 2 workers", func() bool { return len(oldPids()) == 3 })
	old := oldPids()
	load := startLoad(t, addr)
	proctest.WaitFor(t, 10*time.Second, "load to get answers", func() bool { return load.Snapshot().OK > 20 })
	snap := checkLoad(t, "before", load, nil)

	for _, tc := range []struct{ name, mode, want, lines string }{
		{"import-error", "import-error", "HTTP check", "DATABASE_URL is not set"},
		{"500", "500", "GET /up: HTTP/1.1 500 Internal Server Error", ""},
		{"hang", "hang", "GET /up: no answer within 1s", ""},
	} {
		start := time.Now()
		r := s.do("deploy", "--id", tc.name, release(tc.name, tc.mode))
		t.Logf("%s: deploy exit %d after %s:\n%s", tc.name, r.code, time.Since(start).Round(time.Millisecond), r.stderr)
		if r.code != 1 || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "restored: current is good again") {
			t.Errorf("%s: deploy %v", tc.name, r)
		}
		if tc.lines != "" && !strings.Contains(r.stderr, tc.lines) {
			t.Errorf("%s: output lacks the worker's last lines %q", tc.name, tc.lines)
		}
		if link, _ := os.Readlink(filepath.Join(s.root, "current")); link != "releases/good" {
			t.Errorf("%s: current -> %q", tc.name, link)
		}
		if now := oldPids(); !slices.Equal(now, old) {
			t.Errorf("%s: old generation processes %v, were %v", tc.name, now, old)
		}
		for _, pid := range old {
			if !alive(pid) {
				t.Errorf("%s: old process %d gone", tc.name, pid)
			}
		}
		if got := proctest.Get(t, addr); got != "hello from good" {
			t.Errorf("%s: after the failed deploy: %q", tc.name, got)
		}
		snap = checkLoad(t, tc.name, load, snap)
	}

	start := time.Now()
	r := s.mustDo("deploy", "--id", "slow", release("slow", "after=3"))
	took := time.Since(start)
	t.Logf("slow: %s in %s", strings.TrimSpace(r.stdout), took.Round(time.Millisecond))
	if took < 3*time.Second {
		t.Errorf("slow release deployed in %s, before its /up turned 2xx", took)
	}
	if got := proctest.Get(t, addr); got != "hello from slow" {
		t.Errorf("after the slow deploy: %q", got)
	}
	checkLoad(t, "slow", load, snap)
}
