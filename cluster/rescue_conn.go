//go:build linux

package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// What happens to a connection once no process of the stopping generation
// holds it (release). The worker has let go of it, so the master's copy is
// the last reference and the client still sees it open:
//
//   - not established any more (the client closed, or the worker shut it
//     down with shutdown(2) and the client has its FIN): closed at once;
//   - nothing to read, and the worker read exactly what the last snapshot
//     saw waiting and sent nothing since: it dropped that request
//     unanswered; sent again when it has no body and an idempotent method,
//     closed otherwise;
//   - nothing to read and the last thing on it was a request the worker read
//     (the worker died or gave up mid-request): closed at once, nothing can
//     be rescued and the client must not wait for the linger;
//   - nothing to read: held up to the linger for a request on its way, then
//     closed, as the worker meant to;
//   - bytes to read that are not an HTTP/1.x request line (TLS, another
//     protocol): closed untouched, as the worker would have;
//   - an HTTP/1.x request: served through the serving generation on a fresh
//     connection to the listening socket, with the response written back
//     and "Connection: close"; requests pipelined behind it and already
//     sent are served the same way first, the last one closing.

// tcpEstablished is Linux's TCP_ESTABLISHED, the state TCP_INFO reports.
const tcpEstablished = 1

// maxRequestLine bounds how much is peeked at to recognise a request line.
const maxRequestLine = 8 << 10

func (r *rescuer) release(h *heldConn) {
	h.unhold()
	ti, err := unix.GetsockoptTCPInfo(h.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || ti.State != tcpEstablished {
		if err == nil {
			r.m.log.Debug("Rescue release", "peer", h.peer, "state", ti.State, "rcvd", ti.Bytes_received, "sent", ti.Bytes_sent)
		}
		r.end(h, &r.stats.gone)
		return
	}
	inq, _ := unix.IoctlGetInt(h.fd, unix.SIOCINQ)
	r.m.log.Debug("Rescue release", "peer", h.peer, "state", ti.State, "inq", inq, "last_recv", ti.Last_data_recv, "last_sent", ti.Last_data_sent, "rcvd", ti.Bytes_received, "sent", ti.Bytes_sent, "acked", ti.Bytes_acked)
	if inq == 0 {
		if h.internal {
			// The server side of one of the master's own forwards, its
			// request read. A stopping worker that read it and sent
			// nothing dropped it: the forward may send it again.
			if ti.Bytes_sent == 0 {
				if fs, ok := r.m.forwards.Load(h.peer); ok {
					fs.(*forwardState).dropped.Store(true)
				}
			}
			r.end(h, nil)
			return
		}
		// The worker read exactly what the last snapshot saw waiting and
		// sent nothing since: it dropped that unanswered, and it is known.
		if s := h.snap; len(s.data) > 0 && s.rcvd == ti.Bytes_received && s.sent == ti.Bytes_sent {
			if replayableBytes(s.data) {
				r.stats.replayed.Add(1)
				r.serve(h, s.data)
			} else {
				r.end(h, &r.stats.abandoned)
			}
			return
		}
		// A request read and nothing sent since: the worker dropped it
		// (it died, or it gave up on what it read while stopping). The
		// times are in milliseconds since the last data each way.
		droppedRead := ti.Bytes_sent == h.sent && ti.Bytes_received > h.rcvdAtSend
		if droppedRead || (ti.Bytes_sent == 0 && ti.Bytes_received > 0) || ti.Last_data_recv < ti.Last_data_sent {
			r.end(h, &r.stats.abandoned)
			return
		}
		linger := r.linger
		if r.otherProto.Load() {
			linger = 0
		}
		readable, hup := waitReadable(h.fd, linger)
		switch {
		case !readable:
			r.end(h, &r.stats.idle)
			return
		case hup:
			if n, _ := unix.IoctlGetInt(h.fd, unix.SIOCINQ); n == 0 {
				r.end(h, &r.stats.gone)
				return
			}
		}
	}
	if !peekRequestLine(h.fd, r.linger) {
		r.otherProto.Store(true)
		r.end(h, &r.stats.refused)
		return
	}
	r.serve(h, nil)
}

// replayableBytes reports whether b starts with a whole request that may be
// sent again (replayable).
func replayableBytes(b []byte) bool {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	return err == nil && replayable(req) && req.Header.Get("Upgrade") == ""
}

// end closes the master's copy, counting the outcome in c (if not nil).
func (r *rescuer) end(h *heldConn, c interface{ Add(int64) int64 }) {
	if c != nil && !h.internal {
		c.Add(1)
	}
	unix.Close(h.fd)
}

// waitReadable waits up to d for fd to have bytes or a hang-up.
func waitReadable(fd int, d time.Duration) (readable, hup bool) {
	deadline := time.Now().Add(d)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms < 0 {
			return false, false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		n, err := unix.Poll(pfd, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return false, false
		}
		re := pfd[0].Revents
		return true, re&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR) != 0
	}
}

// peekRequestLine looks, without consuming anything, for an HTTP/1.x
// request line at the start of what fd has to read, waiting up to d for the
// rest of a line that has begun.
func peekRequestLine(fd int, d time.Duration) bool {
	buf := make([]byte, maxRequestLine)
	deadline := time.Now().Add(d)
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			return false
		}
		if n > 0 {
			switch requestLine(buf[:n]) {
			case lineHTTP:
				return true
			case lineOther:
				return false
			}
			if n == len(buf) {
				return false
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		// Wait for more than the n bytes already there: poll reports a
		// socket readable from SO_RCVLOWAT bytes on.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, n+1)
		readable, _ := waitReadable(fd, time.Until(deadline))
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
		if !readable {
			return false
		}
	}
}

type lineKind int

const (
	lineHTTP lineKind = iota
	lineOther
	linePartial
)

// requestLine classifies the start of a stream: "METHOD SP target SP
// HTTP/1.x CRLF", a prefix of one, or anything else.
func requestLine(b []byte) lineKind {
	line, complete := b, false
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		line, complete = bytes.TrimSuffix(b[:i], []byte("\r")), true
	}
	sp := bytes.IndexByte(line, ' ')
	method := line
	if sp >= 0 {
		method = line[:sp]
	}
	for _, c := range method {
		if c < 'A' || c > 'Z' {
			return lineOther
		}
	}
	if len(method) > 16 || (sp == 0) {
		return lineOther
	}
	if !complete {
		if sp < 0 && len(line) > 16 {
			return lineOther
		}
		return linePartial
	}
	rest := line[sp+1:]
	sp2 := bytes.LastIndexByte(rest, ' ')
	if sp < 0 || sp2 <= 0 {
		return lineOther
	}
	switch string(rest[sp2+1:]) {
	case "HTTP/1.0", "HTTP/1.1":
		return lineHTTP
	}
	return lineOther
}

// serve answers the requests waiting on h through the serving generation,
// reading prefix (what a worker read and dropped) before the socket.
func (r *rescuer) serve(h *heldConn, prefix []byte) {
	f := os.NewFile(uintptr(h.fd), "rescued")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		r.stats.failed.Add(1)
		return
	}
	defer c.Close()
	ends := r.ends
	if floor := time.Now().Add(r.linger + 5*time.Second); ends.Before(floor) {
		ends = floor
	}
	c.SetDeadline(ends)
	var src io.Reader = c
	if len(prefix) > 0 {
		src = io.MultiReader(bytes.NewReader(prefix), c)
	}
	br := bufio.NewReader(src)
	first := true
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if first {
				r.stats.refused.Add(1)
			}
			return
		}
		if req.Header.Get("Upgrade") != "" {
			// An upgraded connection would keep the master in the data
			// path; the client sees the close the worker meant.
			if first {
				r.stats.refused.Add(1)
			}
			return
		}
		if first {
			r.stats.forwarded.Add(1)
			first = false
		}
		r.stats.requests.Add(1)
		more, ok := r.forward(c, br, req, h, ends)
		if !ok || !more {
			return
		}
	}
}

// forwardState is what the master knows of one of its own forward
// connections, by its local address.
type forwardState struct {
	// dropped: a stopping worker accepted it, read the request and let go
	// of it without sending a byte.
	dropped atomic.Bool
}

// forward sends req to the listening socket h came from and writes the
// response to c. more reports that another request already waits on c and
// the connection stays open for it; otherwise the response says
// "Connection: close".
//
// A stopping worker may still accept the forward connection, and may read
// the request and let go of it unanswered (a server that stops drops what
// it reads after its stop began). A forward closed before a byte of answer,
// when its request has no body and an idempotent method, is sent again (up
// to maxForwardTries in all), as a proxy retries an upstream that failed
// before answering; any other gets 502.
func (r *rescuer) forward(c net.Conn, br *bufio.Reader, req *http.Request, h *heldConn, ends time.Time) (more, ok bool) {
	r.prepare(req, h)
	for try := 0; ; try++ {
		more, ok, dropped := r.forwardOnce(c, br, req, h, ends)
		if !dropped || try >= maxForwardTries-1 || !replayable(req) {
			if dropped {
				r.badGateway(c, errors.New("dropped unanswered by a stopping worker"))
			}
			return more, ok
		}
		r.m.log.Debug("Rescued request sent again", "gen", r.g.id, "peer", h.peer)
	}
}

// maxForwardTries bounds the tries of one rescued request: each lands on
// whichever worker accepts first, and stopping workers stop accepting soon.
const maxForwardTries = 3

// replayable: a request with no body whose method may be repeated.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return req.ContentLength == 0 && len(req.TransferEncoding) == 0
	}
	return false
}

// prepare turns a request read from a client into one for a forward
// connection of its own.
func (r *rescuer) prepare(req *http.Request, h *heldConn) {
	req.Header.Del("Connection")
	req.Header.Del("Keep-Alive")
	req.Header.Del("Expect") // the body is sent at once; a 100 would come too late
	if prior := req.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		req.Header.Set("X-Forwarded-For", strings.Join(prior, ", ")+", "+h.peer.Addr().String())
	} else {
		req.Header.Set("X-Forwarded-For", h.peer.Addr().String())
	}
	req.Close = true // one request per forward connection
}

// forwardOnce is one try of forward; dropped reports a try that a stopping
// worker read and let go of without a byte of response, nothing written to
// c yet.
func (r *rescuer) forwardOnce(c net.Conn, br *bufio.Reader, req *http.Request, h *heldConn, ends time.Time) (more, ok, dropped bool) {
	t := r.targets[h.port]
	bc, err := net.DialTimeout("tcp", t.forward, time.Until(ends))
	if err != nil {
		r.badGateway(c, err)
		return false, false, false
	}
	defer bc.Close()
	local := bc.LocalAddr().(*net.TCPAddr).AddrPort()
	fs := &forwardState{}
	r.m.forwards.Store(local, fs)
	defer r.m.forwards.Delete(local)
	bc.SetDeadline(ends)
	if err := req.Write(bc); err != nil {
		r.badGateway(c, err)
		return false, false, false
	}
	inq := 0
	if sc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
		sc.Control(func(fd uintptr) { inq, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	}
	more = br.Buffered() > 0 || inq > 0

	cr := &countingReader{r: bc}
	bbr := bufio.NewReader(cr)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(bbr, req)
		if err != nil {
			// Closed before a byte of answer: a stopping worker took it
			// and let it go (seen, or too fast to be seen).
			if fs.dropped.Load() || cr.n == 0 {
				return false, false, true
			}
			r.badGateway(c, err)
			return false, false, false
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Write(c) // 1xx: pass on, the final response follows
	}
	defer resp.Body.Close()
	if resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 && resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotModified && req.Method != http.MethodHead {
		more = false // delimited by the close
	}
	resp.Header.Del("Keep-Alive")
	resp.Close = !more
	if more {
		resp.Header.Del("Connection")
	} else {
		resp.Header.Set("Connection", "close")
	}
	if err := resp.Write(c); err != nil {
		return false, false, false
	}
	return more, true, false
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// badGateway answers a request whose forward got no response.
func (r *rescuer) badGateway(c net.Conn, cause error) {
	r.stats.failed.Add(1)
	r.m.log.Warn("Rescued request not forwarded", "gen", r.g.id, "err", cause)
	io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
}

func (s RescueStats) String() string {
	out := fmt.Sprintf("%d connections held: %d forwarded (%d requests), %d closed idle, %d closed by the client or the app, %d abandoned mid-request",
		s.Held, s.Forwarded, s.Requests, s.Idle, s.Gone, s.Abandoned)
	if s.Refused > 0 {
		out += fmt.Sprintf(", %d not HTTP/1.x", s.Refused)
	}
	if s.Failed > 0 {
		out += fmt.Sprintf(", %d forwards failed", s.Failed)
	}
	if s.Error != "" {
		out += " (" + s.Error + ")"
	}
	return out
}
