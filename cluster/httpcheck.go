//go:build linux

package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// HTTPCheck is the HTTP part of readiness: with Path set, a worker that is
// ready by Readiness.Mode counts as ready only once it has itself answered
// GET Path, on the first listening socket, with an accepted status.
//
// Every generation accepts from the same socket, so a probe may be accepted
// by any worker. Each probe is attributed before its request is sent: the
// master connects, asks the kernel (sock_diag) for the inode of the socket
// accept(2) returned on the server side, and looks for that inode in the fd
// tables of the checked worker's process tree. A probe accepted by any other
// process is closed unanswered (no request reaches it) and the next one is
// sent at once; only the checked worker's own answers count.
type HTTPCheck struct {
	// Path turns the check on when not empty; it must start with "/".
	Path string
	// Host is the Host header of the probes. Default "localhost".
	Host string
	// Status lists the accepted status codes. Default 200–299.
	Status []StatusRange
	// Timeout bounds one probe: connect, accept, answer. Default 2s.
	Timeout time.Duration
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Min, Max int }

// Probe pacing: after a failed answer the next probe of the same worker
// waits probeBackoffMin, doubling to probeBackoffMax. A probe taken by
// another worker is followed by the next at once, and after 1ms more per
// hundred in a row up to probeOtherMax (a worker that never accepts).
const (
	probeBackoffMin = 50 * time.Millisecond
	probeBackoffMax = 500 * time.Millisecond
	probeOtherMax   = 20 * time.Millisecond
)

func (c HTTPCheck) withDefaults() (HTTPCheck, error) {
	if c.Path == "" {
		return c, nil
	}
	if !strings.HasPrefix(c.Path, "/") || strings.ContainsAny(c.Path, " \r\n") {
		return c, fmt.Errorf("%w: readiness http path %q (want /path)", ErrInvalidConfig, c.Path)
	}
	if c.Host == "" {
		c.Host = "localhost"
	}
	if strings.ContainsAny(c.Host, " \r\n") {
		return c, fmt.Errorf("%w: readiness http host %q", ErrInvalidConfig, c.Host)
	}
	if len(c.Status) == 0 {
		c.Status = []StatusRange{{200, 299}}
	}
	for _, r := range c.Status {
		if r.Min < 100 || r.Max > 599 || r.Min > r.Max {
			return c, fmt.Errorf("%w: readiness http status %d-%d", ErrInvalidConfig, r.Min, r.Max)
		}
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Timeout < 0 {
		return c, fmt.Errorf("%w: negative readiness http timeout", ErrInvalidConfig)
	}
	return c, nil
}

func (c HTTPCheck) accepts(code int) bool {
	for _, r := range c.Status {
		if code >= r.Min && code <= r.Max {
			return true
		}
	}
	return false
}

// Verdicts of the HTTP check, for a worker ready by its mode that did not
// pass it; detail follows ": " (the request and the status line or error).
const (
	VerdictHTTPStatus       = "answered the HTTP check with a status not accepted"
	VerdictHTTPTimeout      = "accepted the HTTP check but did not answer"
	VerdictHTTPDropped      = "dropped the HTTP check"
	VerdictHTTPUnreached    = "never took an HTTP check"
	VerdictHTTPUnattributed = "HTTP check could not attribute probes"
)

// probeKind is what one probe found.
type probeKind int

const (
	probeOK    probeKind = iota // the worker answered with an accepted status
	probeOther                  // another process accepted the connection
	probeFail                   // the worker's answer, or its silence, failed the check
)

// probeResult is one probe; verdict is set for probeFail.
type probeResult struct {
	kind    probeKind
	verdict string
}

// modeReady is called when the worker is ready by its mode: ready, or with
// an HTTP check, the start of the check.
func (p *proc) modeReady(how string) {
	if p.cfg.Readiness.HTTP.Path == "" {
		p.markReady(how)
		return
	}
	p.httpOnce.Do(func() {
		p.mu.Lock()
		p.modeHow = how
		p.mu.Unlock()
		p.bg.Add(1)
		go p.checkHTTP()
	})
}

// checkHTTP probes the worker until it answers with an accepted status or
// exits. It is owned by the process's bg group.
func (p *proc) checkHTTP() {
	defer p.bg.Done()
	c := p.cfg.Readiness.HTTP
	d, err := newSockDiag()
	if err != nil {
		p.recordProbe(probeResult{kind: probeFail, verdict: VerdictHTTPUnattributed + ": " + err.Error()})
		return
	}
	defer d.Close()
	backoff, others := probeBackoffMin, 0
	tree := &treeCache{root: p.pid}
	for !chanClosed(p.exited) && !p.isReady() { // a sibling's probe may have passed it
		r := p.probe(d, c, tree)
		if chanClosed(p.exited) {
			return // the probe saw the exit, not the worker's answer
		}
		last := p.recordProbe(r)
		var wait time.Duration
		switch r.kind {
		case probeOK:
			p.passHTTP()
			return
		case probeOther:
			others++
			wait = min(time.Duration(others/100)*time.Millisecond, probeOtherMax)
		case probeFail:
			others = 0
			if r.verdict != last {
				p.log.Info("Worker failed the HTTP check", "verdict", r.verdict)
			}
			wait = backoff
			backoff = min(backoff*2, probeBackoffMax)
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-p.exited:
				t.Stop()
			}
		}
	}
}

// recordProbe counts r and keeps its verdict; it returns the verdict before.
func (p *proc) recordProbe(r probeResult) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	last := p.httpVerdict
	p.probes++
	switch r.kind {
	case probeOther:
		p.probesOther++
		if p.probesOther == p.probes {
			p.httpVerdict = fmt.Sprintf("%s: %d probes, each accepted by another worker", VerdictHTTPUnreached, p.probes)
		}
	case probeFail:
		p.httpVerdict = r.verdict
	}
	return last
}

// probe sends one probe: connect, wait until a process accepted it, and
// only when that process is in p's tree, or in the tree of a sibling that
// waits for its check (which is then credited with the answer), GET the
// path.
func (p *proc) probe(d *sockDiag, c HTTPCheck, tree *treeCache) probeResult {
	network, addr := p.m.socks.probeAddr()
	deadline := time.Now().Add(c.Timeout)
	conn, err := net.DialTimeout(network, addr, c.Timeout)
	if err != nil {
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: connect %s: %v", VerdictHTTPUnreached, addr, err)}
	}
	defer conn.Close()
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: handoff-readiness\r\nAccept: */*\r\n\r\n", c.Path, c.Host)
	// With TCP_DEFER_ACCEPT on the socket nothing is accepted before data
	// arrives: the request goes first, attributed while the keep-alive
	// connection is held after the answer.
	sendFirst := p.m.socks.deferAccept()
	if sendFirst {
		if _, err := io.WriteString(conn, req); err != nil {
			return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: %v", VerdictHTTPDropped, c.Path, err)}
		}
		resp, rerr := p.readAnswer(conn, deadline)
		if ino, err := d.serverInode(conn); err != nil || ino == 0 || !holdsSocket(tree.get(), ino) {
			return probeResult{kind: probeOther}
		}
		return p.judge(c, resp, rerr)
	}
	ino, err := p.awaitAccept(d, conn, deadline)
	if err != nil {
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: %v", VerdictHTTPUnreached, err)}
	}
	q := p
	if !holdsSocket(tree.get(), ino) {
		// A worker of the same generation still waiting for its check
		// took it: the answer is that worker's own.
		if q = p.pendingSibling(ino); q == nil {
			return probeResult{kind: probeOther}
		}
	}
	r := probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: ", VerdictHTTPDropped, c.Path)}
	if _, err := io.WriteString(conn, req); err != nil {
		r.verdict += err.Error()
	} else {
		resp, rerr := q.readAnswer(conn, deadline)
		r = q.judge(c, resp, rerr)
	}
	if q != p {
		q.recordProbe(r)
		q.mu.Lock()
		q.probesCredited++
		q.mu.Unlock()
		if r.kind == probeOK {
			q.passHTTP()
		}
		return probeResult{kind: probeOther}
	}
	return r
}

// pendingSibling returns the worker of p's generation, other than p, that is
// ready by its mode, has not passed its HTTP check and holds socket ino.
func (p *proc) pendingSibling(ino uint64) *proc {
	m := p.m
	var sibs []*proc
	m.mu.Lock()
	for _, g := range m.gens {
		if g.id != p.gen {
			continue
		}
		for _, s := range g.slots {
			if s.proc != nil && s.proc != p {
				sibs = append(sibs, s.proc)
			}
		}
	}
	m.mu.Unlock()
	for _, q := range sibs {
		if how, _ := q.httpPending(); how == "" || chanClosed(q.exited) {
			continue
		}
		if holdsSocket(processTree(q.pid, true), ino) {
			return q
		}
	}
	return nil
}

// passHTTP makes p ready: it answered its HTTP check.
func (p *proc) passHTTP() {
	p.mu.Lock()
	how, n, o := p.modeHow, p.probes, p.probesOther
	p.mu.Unlock()
	p.log.Info("Worker answered the HTTP check", "path", p.cfg.Readiness.HTTP.Path, "probes", n, "probes_taken_by_others", o)
	p.markReady(how + "+http")
}

// awaitAccept waits until some process accepted conn and returns the inode
// of the socket it got.
func (p *proc) awaitAccept(d *sockDiag, conn net.Conn, deadline time.Time) (uint64, error) {
	wait := 50 * time.Microsecond
	for {
		ino, err := d.serverInode(conn)
		if err != nil {
			if errors.Is(err, errNoSocket) {
				return 0, errors.New("connection closed before it was accepted")
			}
			return 0, err
		}
		if ino != 0 && !p.m.socks.isOurs(ino) {
			return ino, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("connection not accepted within %s", p.cfg.Readiness.HTTP.Timeout)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-p.exited:
			t.Stop()
			return 0, errors.New("worker exited")
		}
		wait = min(wait*2, 5*time.Millisecond)
	}
}

// holdsSocket reports whether a process of pids has socket inode ino in its
// fd table. accept(2) gives the socket its inode a moment before it
// installs the fd, so a miss is looked at once more. A miss that is wrong
// costs a probe, never a wrong verdict.
func holdsSocket(pids []int, ino uint64) bool {
	is := func(i uint64) bool { return i == ino }
	if scanPids(pids, is, false, false).holds {
		return true
	}
	time.Sleep(200 * time.Microsecond)
	return scanPids(pids, is, false, false).holds
}

// treeCache is a worker's process tree for the probes: read again every
// treeEvery probes (processes newer than the worker) and fully every
// fullScanEvery (pid wrap-around), as mode listen does.
type treeCache struct {
	root     int
	pids     []int
	n        int
	lastFull time.Time
}

func (t *treeCache) get() []int {
	if t.n%treeEvery == 0 {
		full := time.Since(t.lastFull) >= fullScanEvery
		if full {
			t.lastFull = time.Now()
		}
		t.pids = processTree(t.root, !full)
	}
	t.n++
	return t.pids
}

// readAnswer reads the status line and headers of the answer, until
// deadline or the worker's exit.
func (p *proc) readAnswer(conn net.Conn, deadline time.Time) (*http.Response, error) {
	r := &exitReader{conn: conn, deadline: deadline, exited: p.exited}
	resp, err := http.ReadResponse(bufio.NewReader(r), nil)
	if err == nil {
		resp.Body.Close() // not read: the connection is closed next
	}
	return resp, err
}

// judge turns an answer, or the error reading it, into a probe result.
func (p *proc) judge(c HTTPCheck, resp *http.Response, err error) probeResult {
	var ne net.Error
	switch {
	case err == nil && c.accepts(resp.StatusCode):
		return probeResult{kind: probeOK}
	case err == nil:
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: %s %s", VerdictHTTPStatus, c.Path, resp.Proto, resp.Status)}
	case errors.As(err, &ne) && ne.Timeout():
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: no answer within %s", VerdictHTTPTimeout, c.Path, c.Timeout)}
	case errors.Is(err, syscall.ECONNRESET):
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: connection reset", VerdictHTTPDropped, c.Path)}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: closed without an answer", VerdictHTTPDropped, c.Path)}
	default:
		return probeResult{kind: probeFail, verdict: fmt.Sprintf("%s: GET %s: %v", VerdictHTTPDropped, c.Path, err)}
	}
}

// exitReader reads conn until deadline, in slices, so that a worker's exit
// ends the read at once.
type exitReader struct {
	conn     net.Conn
	deadline time.Time
	exited   chan struct{}
}

func (r *exitReader) Read(b []byte) (int, error) {
	for {
		d := time.Now().Add(50 * time.Millisecond)
		if d.After(r.deadline) {
			d = r.deadline
		}
		r.conn.SetReadDeadline(d)
		n, err := r.conn.Read(b)
		var ne net.Error
		if n > 0 || err == nil || !errors.As(err, &ne) || !ne.Timeout() || !time.Now().Before(r.deadline) {
			return n, err
		}
		if chanClosed(r.exited) {
			return 0, errors.New("worker exited")
		}
	}
}

// httpPending returns the HTTP check's verdict for a worker that is ready by
// its mode but did not pass the check, "" otherwise.
func (p *proc) httpPending() (how, verdict string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.modeHow == "" || !p.readyAt.IsZero() {
		return "", ""
	}
	v := p.httpVerdict
	if v == "" {
		v = VerdictHTTPUnreached + ": not probed yet"
	}
	return p.modeHow, v
}

// probeAddr is where probes connect: the first socket, with a wildcard host
// replaced by loopback of the same family.
func (s *Sockets) probeAddr() (network, addr string) {
	a := s.addrs[0]
	if path, ok := strings.CutPrefix(a, "unix:"); ok {
		return "unix", path
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "tcp", a
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return "tcp", net.JoinHostPort(host, port)
}

// deferAccept reports whether the first socket has TCP_DEFER_ACCEPT set (by
// a worker: the option lives on the shared socket).
func (s *Sockets) deferAccept() bool {
	v, err := unix.GetsockoptInt(int(s.files[0].Fd()), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT)
	return err == nil && v > 0
}
