package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrNotLoopback is returned by Start for a target outside the loopback range.
var ErrNotLoopback = errors.New("target is not a loopback address")

// Failure kinds, the keys of Result.Failed.
const (
	KindRefused = "refused" // connect refused: nobody listening, or the accept queue overflowed
	KindReset   = "reset"   // connection reset by the peer
	KindEOF     = "eof"     // the peer closed before a complete response
	KindTimeout = "timeout" // no complete response within Options.Timeout
	KindNon2xx  = "non2xx"  // a complete response whose status is not 2xx
	KindOther   = "other"
)

// Options configures a Run. Zero values take the defaults named beside each field.
type Options struct {
	Addr        string        // host:port on loopback, or a unix socket path with Network "unix"
	Network     string        // "tcp" (default) or "unix"
	Conns       int           // concurrent connections; default 8
	KeepAlive   bool          // reuse a connection for many requests; false sends Connection: close
	Duration    time.Duration // stop after this long; 0 = until MaxRequests, Stop or ctx
	MaxRequests int64         // stop after this many requests; 0 = unbounded
	Path        string        // request path; default "/"
	Timeout     time.Duration // per request; default 5s
}

// Result holds the totals of a Run.
type Result struct {
	Requests       int64            `json:"requests"` // completed attempts, ok or failed (a stale keep-alive retry counts once)
	OK             int64            `json:"ok"`
	Failed         map[string]int64 `json:"failed"` // by kind
	FailedTotal    int64            `json:"failed_total"`
	StaleKeepAlive int64            `json:"stale_keepalive"`
	Bodies         map[string]int64 `json:"bodies"`     // first 64 bytes of each 2xx body, trimmed
	PerSecond      []int64          `json:"per_second"` // ok responses in each whole second since start
	Elapsed        time.Duration    `json:"elapsed_ns"`
	P50            time.Duration    `json:"p50_ns"`
	P99            time.Duration    `json:"p99_ns"`
	Max            time.Duration    `json:"max_ns"`
	// Errors keeps the first few failure messages, for a test's failure report.
	Errors []string `json:"errors,omitempty"`
}

// RPS is OK responses per second over the whole run.
func (r *Result) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// MedianSecond and WorstSecond summarise PerSecond, leaving out the last
// (partial) second.
func (r *Result) MedianSecond() int64 { return r.secondStat(false) }

func (r *Result) WorstSecond() int64 { return r.secondStat(true) }

func (r *Result) secondStat(worst bool) int64 {
	full := r.PerSecond
	if len(full) > 1 {
		full = full[:len(full)-1]
	}
	if len(full) == 0 {
		return 0
	}
	s := append([]int64(nil), full...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if worst {
		return s[0]
	}
	return s[len(s)/2]
}

// String is a one-line summary for logs and test failures.
func (r *Result) String() string {
	return fmt.Sprintf("requests=%d ok=%d failed=%d %v stale_keepalive=%d rps=%.0f p50=%v p99=%v max=%v errors=%q",
		r.Requests, r.OK, r.FailedTotal, r.Failed, r.StaleKeepAlive, r.RPS(), r.P50, r.P99, r.Max, r.Errors)
}

// Run is a load in progress. Its methods are safe for concurrent use.
type Run struct {
	opts    Options
	start   time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sent    atomic.Int64
	workers []*worker
	once    sync.Once
	final   *Result
}

// Start validates o and starts the load. The Run stops at o's bounds or when
// ctx ends; call Stop in every case to wait for it and read the totals.
func Start(ctx context.Context, o Options) (*Run, error) {
	if o.Network == "" {
		o.Network = "tcp"
	}
	if o.Conns <= 0 {
		o.Conns = 8
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if err := checkLoopback(o.Network, o.Addr); err != nil {
		return nil, fmt.Errorf("loadgen %s: %w", o.Addr, err)
	}
	if o.Duration <= 0 && o.MaxRequests <= 0 && ctx.Done() == nil {
		return nil, fmt.Errorf("loadgen %s: unbounded: set Duration, MaxRequests or a cancellable context", o.Addr)
	}
	ctx, cancel := context.WithCancel(ctx)
	if o.Duration > 0 {
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
	}
	r := &Run{opts: o, start: time.Now(), cancel: cancel}
	for i := 0; i < o.Conns; i++ {
		w := &worker{run: r, stats: newStats()}
		r.workers = append(r.workers, w)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			w.loop(ctx)
		}()
	}
	return r, nil
}

func checkLoopback(network, addr string) error {
	switch network {
	case "unix":
		return nil
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("network %q not supported", network)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return ErrNotLoopback
	}
	return nil
}

// Stop ends the load, waits for every connection to close and returns the totals.
func (r *Run) Stop() *Result {
	r.once.Do(func() {
		r.cancel()
		r.wg.Wait()
		r.final = r.Snapshot()
	})
	return r.final
}

// Wait blocks until the Run reaches its own bound (Duration, MaxRequests or
// its context), then returns the totals.
func (r *Run) Wait() *Result {
	r.wg.Wait()
	return r.Stop()
}

// Snapshot returns the totals so far without stopping.
func (r *Run) Snapshot() *Result {
	res := &Result{Failed: map[string]int64{}, Bodies: map[string]int64{}, Elapsed: time.Since(r.start)}
	var h histogram
	for _, w := range r.workers {
		w.mu.Lock()
		s := w.stats
		res.Requests += s.requests
		res.OK += s.ok
		res.StaleKeepAlive += s.stale
		for k, v := range s.failed {
			res.Failed[k] += v
			res.FailedTotal += v
		}
		for k, v := range s.bodies {
			res.Bodies[k] += v
		}
		for i, v := range s.perSecond {
			for len(res.PerSecond) <= i {
				res.PerSecond = append(res.PerSecond, 0)
			}
			res.PerSecond[i] += v
		}
		if len(res.Errors) < 10 {
			res.Errors = append(res.Errors, s.errors...)
		}
		h.merge(&s.hist)
		w.mu.Unlock()
	}
	if r.final != nil {
		res.Elapsed = r.final.Elapsed
	}
	res.P50, res.P99, res.Max = h.quantile(0.50), h.quantile(0.99), h.max
	return res
}

type stats struct {
	requests, ok, stale int64
	failed              map[string]int64
	bodies              map[string]int64
	perSecond           []int64
	errors              []string
	hist                histogram
}

func newStats() stats {
	return stats{failed: map[string]int64{}, bodies: map[string]int64{}}
}

type worker struct {
	run   *Run
	mu    sync.Mutex
	stats stats

	conn   net.Conn
	br     *bufio.Reader
	cr     *countingReader
	served int // responses read on conn
}

func (w *worker) loop(ctx context.Context) {
	defer w.closeConn()
	o := w.run.opts
	for ctx.Err() == nil {
		if o.MaxRequests > 0 && w.run.sent.Add(1) > o.MaxRequests {
			return
		}
		begin := time.Now()
		body, err := w.do(ctx)
		if errors.Is(err, errCanceled) {
			return // cut short by our own stop, not by the server
		}
		elapsed := time.Since(begin)
		w.mu.Lock()
		w.stats.requests++
		if err == nil {
			w.stats.ok++
			w.stats.hist.record(elapsed)
			sec := int(time.Since(w.run.start) / time.Second)
			for len(w.stats.perSecond) <= sec {
				w.stats.perSecond = append(w.stats.perSecond, 0)
			}
			w.stats.perSecond[sec]++
			w.stats.bodies[body]++
		} else {
			w.stats.failed[classify(err)]++
			if len(w.stats.errors) < 3 {
				w.stats.errors = append(w.stats.errors, err.Error())
			}
		}
		w.mu.Unlock()
	}
}

var errCanceled = errors.New("canceled by the load's own stop")

// do sends one request and reads its response, retrying once on a fresh
// connection when a reused one fails before any response byte.
func (w *worker) do(ctx context.Context) (string, error) {
	reused := w.conn != nil && w.served > 0
	body, got, err := w.attempt(ctx)
	if err == nil || !reused || got > 0 || errors.Is(err, errCanceled) {
		return body, err
	}
	w.mu.Lock()
	w.stats.stale++
	w.mu.Unlock()
	body, _, err = w.attempt(ctx)
	return body, err
}

// attempt returns the body, how many response bytes arrived, and the error.
func (w *worker) attempt(ctx context.Context) (string, int64, error) {
	o := w.run.opts
	if w.conn == nil {
		d := net.Dialer{Timeout: o.Timeout}
		c, err := d.DialContext(ctx, o.Network, o.Addr)
		if err != nil {
			return "", 0, w.canceled(ctx, err)
		}
		w.conn, w.served = c, 0
		w.cr = &countingReader{r: c}
		w.br = bufio.NewReader(w.cr)
	}
	// The connection's deadline also honours our own stop, so a request in
	// flight when the run ends is not counted as the server's failure.
	c := w.conn // the stop callback must not read w.conn, which this goroutine may clear
	c.SetDeadline(time.Now().Add(o.Timeout))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	req := "GET " + o.Path + " HTTP/1.1\r\nHost: loadgen\r\nUser-Agent: handoff-loadgen\r\n"
	if !o.KeepAlive {
		req += "Connection: close\r\n"
	}
	req += "\r\n"
	w.cr.n = 0
	if _, err := io.WriteString(w.conn, req); err != nil {
		w.closeConn()
		return "", 0, w.canceled(ctx, err)
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		got := w.cr.n
		w.closeConn()
		return "", got, w.canceled(ctx, err)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	got := w.cr.n
	if err != nil {
		w.closeConn()
		return "", got, w.canceled(ctx, err)
	}
	w.served++
	if resp.Close || !o.KeepAlive {
		w.closeConn()
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", got, &statusError{code: resp.StatusCode}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return strings.TrimSpace(string(b)), got, nil
}

// canceled marks err as caused by the run's own end. The run's deadline
// counts as soon as it passes: a dial or read whose deadline was the run's
// fails a moment before the context's timer sets ctx.Err, and that failure
// is not the server's.
func (w *worker) canceled(ctx context.Context, err error) error {
	if stopped(ctx) {
		return fmt.Errorf("%w: %v", errCanceled, err)
	}
	return err
}

func stopped(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

func (w *worker) closeConn() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.code) }

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func classify(err error) string {
	var se *statusError
	var ne net.Error
	switch {
	case errors.As(err, &se):
		return KindNon2xx
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ENOENT):
		return KindRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return KindReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return KindEOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return KindTimeout
	}
	return KindOther
}
