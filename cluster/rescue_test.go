package cluster

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff/handoff/loadgen"
)

// Workers at their own default stop, four reloads under a keep-alive and
// a new-connection load each: a stop that finishes what it read but closes
// idle keep-alive connections at once (close-idle, Node's server.close()),
// net/http's Shutdown (which also drops a request it reads once its stop
// began), and a server with no handler that dies mid-request. Their
// figures are logged: what a worker read and dropped is lost with it, and
// the race-enabled workers here widen every such window. The assertion on
// what rescue saves is TestRescue_SavesWhatTheWorkerDrops; the end-to-end
// suite with real servers asserts 0.
func TestRescue_DefaultStopUnderLoad(t *testing.T) {
	for _, mode := range []string{modeCloseIdle, modeShutdownNow, modeDieOnTerm} {
		for _, keepAlive := range []bool{true, false} {
			name := mode + "/new-conn"
			if keepAlive {
				name = mode + "/keep-alive"
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, Config{Workers: 2})
				h.mustReload(h.release("v0", "HELPER_MODE="+mode))
				run := startLoadOpts(t, h.addr, 16, keepAlive)
				waitOK(t, run, 50)
				total := h.reloadsOf(mode, 4, run)
				t.Logf("rescue: %s", total)
				if st := h.m.Status().Rescued; st.Held != total.Held {
					t.Errorf("status totals %+v, want those of the reloads %+v", st, total)
				}
				if keepAlive && total.Forwarded == 0 {
					t.Errorf("no request was rescued under keep-alive load: %s", total)
				}
				// Rescue saves what a worker let go of unread. What a worker
				// read and then dropped (abandoned) is lost with it: those
				// and no more.
				res := run.Stop()
				t.Logf("figures %s: %s (abandoned by the worker: %d)", name, res, total.Abandoned)
				if res.OK == 0 {
					t.Error("no request succeeded")
				}
			})
		}
	}
}

// The same reloads of a server that closes idle keep-alive connections at
// once, with rescue off and then on, under the same keep-alive load: off,
// the clients see the closes (stale keep-alive, counted as failures here);
// on, at most a tenth of that, and only what a worker read and dropped.
func TestRescue_SavesWhatTheWorkerDrops(t *testing.T) {
	lost := func(noRescue bool) (int64, RescueStats) {
		h := newHarnessOn(t, Config{Workers: 2}, []ListenSpec{{Name: "http", Address: "127.0.0.1:0", NoRescue: noRescue}})
		h.mustReload(h.release("v0", "HELPER_MODE="+modeCloseIdle))
		run := h.load(16)
		waitOK(t, run, 50)
		total := h.reloadsOf(modeCloseIdle, 4, run)
		r := run.Stop()
		t.Logf("rescue off=%v: %s; %s", noRescue, r, total)
		if noRescue && total.Held != 0 {
			t.Errorf("rescue off, but %d connections held", total.Held)
		}
		return r.FailedTotal + r.StaleKeepAlive, total
	}
	off, _ := lost(true)
	on, st := lost(false)
	if off < 16 {
		t.Fatalf("without rescue only %d requests were lost over 4 reloads of 16 busy keep-alive connections: the test no longer shows what rescue saves", off)
	}
	if on*10 > off || on > st.Abandoned+st.Idle {
		t.Errorf("with rescue %d lost (%s), without %d", on, st, off)
	}
}

// A worker that never stops (it ignores the signal, or keeps serving a
// connection its stop never saw) is killed at the drain deadline; its
// keep-alive connections are held back from it before that, so it is
// killed with no request in hand and what its clients send next is served
// by the new generation.
func TestRescue_KilledAtTheDeadlineWithNothingInHand(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, DrainTimeout: 1500 * time.Millisecond})
	h.mustReload(h.release("v0", "HELPER_MODE="+modeServeOnTerm))
	run := h.load(16)
	waitOK(t, run, 50)
	total := h.reloadsOf(modeServeOnTerm, 3, run)
	r := run.Stop()
	h.mustReload(h.release("v4")) // one that stops, for the clean-up's Shutdown
	t.Logf("figures: %s; rescue: %s", r, total)
	if st := h.m.Status().Exits; st.Stopped < 6 {
		t.Errorf("exits %+v: the workers were not all stopped", st)
	}
	if total.Forwarded == 0 {
		t.Errorf("nothing forwarded from the killed workers: %s", total)
	}
	if n := r.FailedTotal + r.StaleKeepAlive; n != 0 {
		t.Errorf("%d requests lost to the kills (%s; %s)", n, r, total)
	}
}

// A worker that dies mid-request has read the request: nothing can be
// rescued, and the client is not kept waiting for the linger.
func TestRescue_AbandonedRequestClosedAtOnce(t *testing.T) {
	h := newHarness(t, Config{Workers: 1, RescueLinger: 5 * time.Second})
	h.mustReload(h.release("v0", "HELPER_MODE="+modeDieOnTerm, "HELPER_SLEEP=30s"))
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
	// The request must be read by v0 before it is retired.
	if !waitFor(5*time.Second, func() bool { return h.inFlight() }) {
		t.Fatal("v0 never read the request")
	}
	res := h.mustReload(h.release("v1", "HELPER_MODE="+modeDieOnTerm))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	n, err := c.Read(make([]byte, 1))
	took := time.Since(start)
	t.Logf("client: %d bytes, %v after %s; rescue: %s", n, err, took, res.Rescued)
	if n != 0 || err == nil {
		t.Errorf("the abandoned client got %d bytes, %v; want the connection closed", n, err)
	}
	if res.Rescued.Abandoned != 1 {
		t.Errorf("rescue %s; want 1 abandoned", res.Rescued)
	}
	// Reload returns once the rescued connections ended: the linger (5s)
	// did not hold this one.
	if res.RetiredAfter > 4*time.Second {
		t.Errorf("retiring took %s: the abandoned connection waited for the linger", res.RetiredAfter)
	}
}

// inFlight reports whether a worker is in the /slow handler (it says so
// with STATUS=).
func (h *harness) inFlight() bool {
	for _, g := range h.m.Status().Generations {
		for _, w := range g.Workers {
			if w.Status == "in /slow" {
				return true
			}
		}
	}
	return false
}

// An HTTP/1.0 client reads its response until the server closes. When the
// worker closes with close(2) alone, rescue holds the connection open for
// the linger: every response is complete, and the added wait is bounded by
// the linger.
func TestRescue_HTTP10WaitsAtMostTheLinger(t *testing.T) {
	const linger = 200 * time.Millisecond
	// Waiting in poll(2) leaves no trace that mode listen reads.
	h := newHarness(t, Config{Workers: 2, RescueLinger: linger, Readiness: Readiness{Mode: ModeDelay, Delay: 300 * time.Millisecond}})
	h.mustReload(h.release("v0", "HELPER_MODE="+modeCloseOnly))
	var mu sync.Mutex // guards worst, bad, n
	var worst time.Duration
	var bad []string
	n := 0
	total := h.reloadsUnder(4, 4, func(id string) GenerationSpec { return h.release(id, "HELPER_MODE="+modeCloseOnly) }, func(_ int, stop *atomic.Bool) {
		for !stop.Load() {
			start := time.Now()
			body, err := http10Get(h.addr)
			took := time.Since(start)
			mu.Lock()
			n++
			worst = max(worst, took)
			if err != nil || !strings.HasPrefix(body, "v") {
				bad = append(bad, fmt.Sprintf("%q %v", body, err))
			}
			mu.Unlock()
		}
	})
	t.Logf("%d HTTP/1.0 requests, slowest %s, rescue %s", n, worst, total)
	if len(bad) > 0 {
		t.Errorf("%d of %d HTTP/1.0 requests failed: %v", len(bad), n, bad[:min(len(bad), 5)])
	}
	// A response held for the linger is done within it plus the time to
	// get scheduled on a loaded box.
	if worst > linger+3*time.Second {
		t.Errorf("slowest HTTP/1.0 request took %s with a %s linger", worst, linger)
	}
}

// http10Get sends one HTTP/1.0 request and reads until the server closes.
func http10Get(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	_, body, ok := strings.Cut(string(b), "\r\n\r\n")
	if !ok {
		return "", fmt.Errorf("no complete response: %q", b)
	}
	return body, nil
}

// Bytes that are not HTTP/1.x are never answered by rescue: a line
// protocol's client only ever reads its server's own lines, whatever the
// stop does to its connections.
func TestRescue_NeverAnswersOtherProtocols(t *testing.T) {
	h := newHarness(t, Config{Workers: 2, Readiness: Readiness{Mode: ModeDelay, Delay: 300 * time.Millisecond}})
	h.mustReload(h.release("v0", "HELPER_MODE="+modeLine))
	var mu sync.Mutex // guards foreign, pongs
	var foreign []string
	pongs := 0
	total := h.reloadsUnder(4, 3, func(id string) GenerationSpec { return h.release(id, "HELPER_MODE="+modeLine) }, func(_ int, stop *atomic.Bool) {
		for !stop.Load() {
			c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			for !stop.Load() {
				if _, err := io.WriteString(c, "ping\n"); err != nil {
					break
				}
				line, err := br.ReadString('\n')
				if err != nil {
					if line != "" {
						mu.Lock()
						foreign = append(foreign, line)
						mu.Unlock()
					}
					break
				}
				mu.Lock()
				if line == "pong\n" {
					pongs++
				} else {
					foreign = append(foreign, line)
				}
				mu.Unlock()
			}
			c.Close()
		}
	})
	t.Logf("%d pongs; rescue %s", pongs, total)
	if len(foreign) > 0 {
		t.Errorf("the line client read what its server never wrote: %q", foreign[:min(len(foreign), 5)])
	}
	if total.Forwarded != 0 {
		t.Errorf("rescue forwarded a line protocol: %s", total)
	}
	if pongs == 0 {
		t.Error("no pong at all")
	}
}

// A TLS server on the inherited socket: rescue sees TLS records, not a
// request line, and leaves them alone; it never writes plain HTTP into a
// TLS connection (the client would report a malformed record).
func TestRescue_LeavesTLSAlone(t *testing.T) {
	h := newHarness(t, Config{Workers: 2})
	cert, key := writeTestCert(t, t.TempDir())
	rel := func(id string) GenerationSpec {
		return h.release(id, "HELPER_MODE="+modeTLS, "HELPER_CERT="+cert, "HELPER_KEY="+key)
	}
	h.mustReload(rel("v0"))
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 4, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var mu sync.Mutex // guards malformed, ok, errs
	var malformed []string
	ok, errs := 0, 0
	total := h.reloadsUnder(4, 3, rel, func(_ int, stop *atomic.Bool) {
		for !stop.Load() {
			resp, err := client.Get("https://" + h.addr + "/")
			mu.Lock()
			if err != nil {
				errs++
				if s := err.Error(); strings.Contains(s, "record") || strings.Contains(s, "HTTP") {
					malformed = append(malformed, s)
				}
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				ok++
			}
			mu.Unlock()
		}
	})
	t.Logf("TLS: %d ok, %d errors (the server's own stop); rescue %s", ok, errs, total)
	if len(malformed) > 0 {
		t.Errorf("rescue wrote into TLS connections: %q", malformed[:min(len(malformed), 5)])
	}
	if total.Forwarded != 0 {
		t.Errorf("rescue forwarded TLS bytes: %s", total)
	}
	if ok == 0 {
		t.Error("no TLS request succeeded")
	}
}

// A client that pipelines three requests at a time: every response it gets
// is complete and answers its own request, in order, across reloads of a
// server that closes idle connections at once (close-idle). Requests left unanswered
// after a "Connection: close" response are the client's to resend and are
// counted apart.
func TestRescue_Pipelining(t *testing.T) {
	h := newHarness(t, Config{Workers: 2})
	h.mustReload(h.release("v0", "HELPER_MODE="+modeCloseIdle))
	var mu sync.Mutex // guards answered, unanswered, wrong
	answered, unanswered := 0, 0
	var wrong []string
	total := h.reloadsUnder(4, 4, func(id string) GenerationSpec { return h.release(id, "HELPER_MODE="+modeCloseIdle) }, func(w int, stop *atomic.Bool) {
		for seq := 0; !stop.Load(); {
			c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			for !stop.Load() {
				var paths []string
				var req strings.Builder
				for range 3 {
					seq++
					p := fmt.Sprintf("/w%d-%d", w, seq)
					paths = append(paths, p)
					fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", p)
				}
				if _, err := io.WriteString(c, req.String()); err != nil {
					break
				}
				closed := false
				for i, p := range paths {
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						mu.Lock()
						unanswered += len(paths) - i
						mu.Unlock()
						closed = true
						break
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					mu.Lock()
					if err != nil || !strings.HasSuffix(string(b), " "+p) {
						wrong = append(wrong, fmt.Sprintf("%s got %q %v", p, b, err))
					} else {
						answered++
					}
					mu.Unlock()
					if resp.Close {
						mu.Lock()
						unanswered += len(paths) - i - 1
						mu.Unlock()
						closed = true
						break
					}
				}
				if closed {
					break
				}
			}
			c.Close()
		}
	})
	t.Logf("pipelining: %d answered in order, %d left for the client to resend; rescue %s", answered, unanswered, total)
	if len(wrong) > 0 {
		t.Errorf("%d responses incomplete or out of order: %q", len(wrong), wrong[:min(len(wrong), 5)])
	}
	if answered == 0 {
		t.Error("nothing answered")
	}
}

func TestRequestLine(t *testing.T) {
	tests := []struct {
		in   string
		want lineKind
	}{
		{in: "GET / HTTP/1.1\r\nHost: x\r\n", want: lineHTTP},
		{in: "POST /a?b=c HTTP/1.0\r\n", want: lineHTTP},
		{in: "GET / HTTP/1.1\n", want: lineHTTP},
		{in: "GE", want: linePartial},
		{in: "GET /long/path/without/end", want: linePartial},
		{in: "\x16\x03\x01\x02\x00", want: lineOther},
		{in: "PRI * HTTP/2.0\r\n", want: lineOther},
		{in: "ping\n", want: lineOther},
		{in: "get / HTTP/1.1\r\n", want: lineOther},
		{in: " GET / HTTP/1.1\r\n", want: lineOther},
		{in: "GET /\r\n", want: lineOther},
		{in: "VERYLONGMETHODNAMEXX / HTTP/1.1\r\n", want: lineOther},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			if got := requestLine([]byte(tc.in)); got != tc.want {
				t.Errorf("requestLine(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// reloadsUnder runs n clients (client(i, stop) returns once stop is set)
// through reloads to releases v1..vK (rel makes each) and returns what rescue
// did; the clients are stopped and waited for before it returns.
// reloadsOf reloads k times to releases v1…vk of the helper in mode, each
// answering run's load before the next, and adds up what rescue did.
func (h *harness) reloadsOf(mode string, k int, run *loadgen.Run) RescueStats {
	var total RescueStats
	for i := 1; i <= k; i++ {
		res := h.mustReload(h.release("v"+itoa(i), "HELPER_MODE="+mode))
		total.add(res.Rescued)
		waitOK(h.t, run, 50)
	}
	return total
}

func (h *harness) reloadsUnder(n, k int, rel func(id string) GenerationSpec, client func(i int, stop *atomic.Bool)) RescueStats {
	var stop atomic.Bool
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client(i, &stop)
		}()
	}
	var total RescueStats
	for i := 1; i <= k; i++ {
		res := h.mustReload(rel("v" + itoa(i)))
		total.add(res.Rescued)
	}
	stop.Store(true)
	wg.Wait()
	return total
}
