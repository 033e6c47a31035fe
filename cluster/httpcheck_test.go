package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperStart is when the helper process started (for HELPER_UP=after=…).
var helperStart = time.Now()

var upOnce sync.Once

// answerUp answers GET /up the way HELPER_UP says: "" like any other path
// (reports false), "500" a 500, "hang" never, "reset" a TCP reset,
// "after=3s" 503 until the process is 3s old, then 200.
func answerUp(w http.ResponseWriter, r *http.Request) bool {
	mode := os.Getenv("HELPER_UP")
	say := func(line string) { upOnce.Do(func() { fmt.Println(line) }) }
	switch {
	case mode == "":
		return false
	case mode == "500":
		say("health: database unreachable")
		http.Error(w, "database unreachable", http.StatusInternalServerError)
	case mode == "hang":
		say("health: waiting for the database")
		<-r.Context().Done()
	case mode == "reset":
		say("health: resetting")
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		}
	case strings.HasPrefix(mode, "after="):
		d, _ := time.ParseDuration(strings.TrimPrefix(mode, "after="))
		if time.Since(helperStart) < d {
			say("health: warming up")
			http.Error(w, "warming up", http.StatusServiceUnavailable)
			return true
		}
		fmt.Fprint(w, "up")
	}
	return true
}

func httpReadiness(timeout time.Duration) Readiness {
	return Readiness{Timeout: timeout, HTTP: HTTPCheck{Path: "/up", Timeout: 500 * time.Millisecond}}
}

// probeCounts returns, per worker of the serving generation, the probes
// counted for it (its own and credited by a sibling's checker) and how many
// of its own another worker accepted; and the connections opened.
func probeCounts(m *Master) (probes, other []int, conns int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.serving.slots {
		s.proc.mu.Lock()
		probes = append(probes, s.proc.probes)
		other = append(other, s.proc.probesOther)
		conns += s.proc.probes - s.proc.probesCredited
		s.proc.mu.Unlock()
	}
	return probes, other, conns
}

// A release that is ready by its mode but fails its HTTP check never takes
// over: the reload fails naming what each worker answered, the old
// generation was never signalled and keeps serving, no request fails. The
// old workers answer /up with 200: a probe they accepted must not count.
func TestHTTPCheck_BadReleaseFails(t *testing.T) {
	cases := []struct {
		name, up, verdict, lines string
		deferAccept              bool
	}{
		{name: "500", up: "500", verdict: VerdictHTTPStatus + ": GET /up: HTTP/1.1 500 Internal Server Error", lines: "health: database unreachable"},
		{name: "hang", up: "hang", verdict: VerdictHTTPTimeout + ": GET /up: no answer within 500ms", lines: "health: waiting for the database"},
		{name: "reset", up: "reset", verdict: VerdictHTTPDropped + ": GET /up: connection reset", lines: "health: resetting"},
		// The request goes before attribution; old workers answer 200.
		{name: "500-defer-accept", up: "500", verdict: VerdictHTTPStatus + ": GET /up: HTTP/1.1 500 Internal Server Error", lines: "health: database unreachable", deferAccept: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, Config{Workers: 2, Readiness: httpReadiness(6 * time.Second)})
			if tc.deferAccept {
				if err := unix.SetsockoptInt(int(h.socks.files[0].Fd()), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 5); err != nil {
					t.Fatal(err)
				}
			}
			h.mustReload(h.release("good"))
			old := h.pids()
			run := h.load(2)
			waitOK(t, run, 20)
			_, err := h.reload(h.release("bad", "HELPER_UP="+tc.up))
			waitOK(t, run, 20)
			re := reloadErr(t, err)
			t.Logf("error: %v", err)
			if !errors.Is(err, ErrReadinessTimeout) {
				t.Errorf("cause %v, want %v", re.Cause, ErrReadinessTimeout)
			}
			if len(re.Workers) != 2 {
				t.Fatalf("failed workers %+v, want both", re.Workers)
			}
			for _, w := range re.Workers {
				if w.Verdict != tc.verdict {
					t.Errorf("worker %d verdict %q, want %q", w.Worker, w.Verdict, tc.verdict)
				}
				if !strings.Contains(strings.Join(w.LastLines, "\n"), tc.lines) {
					t.Errorf("worker %d last lines %q lack %q", w.Worker, w.LastLines, tc.lines)
				}
			}
			st := h.m.Status()
			if len(st.Generations) != 1 || st.Generations[0].ReleaseID != "good" || st.Generations[0].State != GenServing {
				t.Fatalf("status after failure: %+v", st)
			}
			// The helper stops serving and exits on SIGTERM: alive with the
			// same pids and still serving means never signalled.
			for i, pid := range h.pids() {
				if pid != old[i] || !pidAlive(pid) {
					t.Errorf("old worker %d: pid %d -> %d (alive %v)", i, old[i], pid, pidAlive(pid))
				}
			}
			r := assertClean(t, run, false)
			if r.Bodies["good"] == 0 || len(r.Bodies) != 1 {
				t.Errorf("bodies %v, want only the old release", r.Bodies)
			}
			h.mustReload(h.release("good2"))
		})
	}
}

// A release healthy only after 3s takes over once its health turns 2xx.
func TestHTTPCheck_SlowHealthy(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, Readiness: httpReadiness(20 * time.Second)})
	h.mustReload(h.release("v1"))
	run := h.load(2)
	waitOK(t, run, 20)
	res := h.mustReload(h.release("slow", "HELPER_UP=after=3s"))
	if res.ReadyAfter < 3*time.Second {
		t.Errorf("ready after %s, before its health turned 2xx", res.ReadyAfter)
	}
	if body, err := getOnce("tcp", h.addr); err != nil || body != "slow" {
		t.Errorf("after the reload: %q, %v", body, err)
	}
	waitOK(t, run, 20)
	assertClean(t, run, false)
	t.Logf("ready after %s, retired after %s", res.ReadyAfter, res.RetiredAfter)
}

// A unix socket: the probe's peer is found the same way.
func TestHTTPCheck_Unix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	h := newHarnessOn(t, Config{Workers: 2, Readiness: httpReadiness(6 * time.Second)}, []ListenSpec{{Name: "http", Address: "unix:" + path}})
	h.mustReload(h.release("good"))
	old := h.pids()
	_, err := h.reload(h.release("bad", "HELPER_UP=500"))
	reloadErr(t, err)
	if !strings.Contains(err.Error(), VerdictHTTPStatus) {
		t.Errorf("error %v lacks %q", err, VerdictHTTPStatus)
	}
	for i, pid := range h.pids() {
		if pid != old[i] || !pidAlive(pid) {
			t.Errorf("old worker %d: pid %d -> %d", i, old[i], pid)
		}
	}
	h.mustReload(h.release("good2"))
	if body, err := getOnce("unix", path); err != nil || body != "good2" {
		t.Errorf("after the reload: %q, %v", body, err)
	}
}

// How many probes it takes until each new worker took one of its own, with
// N old and N new workers, epoll servers (Go) and servers blocked in
// accept(2). Logged, not judged: a measurement.
func TestHTTPCheck_ProbeCounts(t *testing.T) {
	for _, n := range []int{2, 4} {
		for _, mode := range []string{modeServe, modeAcceptRaw} {
			t.Run(fmt.Sprintf("%d+%d-%s", n, n, mode), func(t *testing.T) {
				h := newHarness(t, Config{Workers: n, Readiness: httpReadiness(20 * time.Second)})
				h.mustReload(h.release("v0", "HELPER_MODE="+mode))
				var all []int
				for i := 1; i <= 3; i++ {
					res := h.mustReload(h.release("v"+itoa(i), "HELPER_MODE="+mode))
					probes, other, conns := probeCounts(h.m)
					for w := range probes {
						if probes[w]-other[w] < 1 {
							t.Errorf("worker %d ready with no probe of its own: %d probes, %d other", w, probes[w], other[w])
						}
					}
					all = append(all, conns)
					t.Logf("reload %d: probes per new worker %v (taken by another worker %v), %d connections, ready after %s", i, probes, other, conns, res.ReadyAfter.Round(time.Millisecond))
				}
				t.Logf("MEASURE %d+%d %s: probe connections per reload %v", n, n, mode, all)
			})
		}
	}
}
