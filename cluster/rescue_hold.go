//go:build linux

package cluster

import (
	"time"

	"golang.org/x/sys/unix"
)

// Holding back the next request. A server that closes its idle keep-alive
// connections when it stops races the requests arriving on them: one that
// reads a request just before it closes the connection (Go's
// Server.Shutdown does: the connection is still idle when its bytes have
// been read) drops it, read and gone, and rescue can only close it. So the
// connections copied while the generation is frozen, whose worker reads
// them through readiness (O_NONBLOCK: an event loop), get SO_RCVLOWAT
// raised on the socket, which every holder shares: poll and epoll stop
// reporting a request smaller than that as readable, and the worker never
// wakes for it. The worker then closes the connection as idle, the request
// waits unread in the socket, and the master serves it once the worker lets
// go (release).
//
// A held-back connection is let go (its SO_RCVLOWAT put back, which wakes
// a reader for what waits) as soon as what arrives on it is not the start
// of an HTTP/1.x request (a request body, TLS, another protocol: the worker
// may be waiting for exactly that), and in any case holdFor after the stop
// signal (the linger if shorter), for a worker that keeps its idle
// connections through its stop and will serve the request itself. A
// blocking reader (no O_NONBLOCK) is never held back: a read(2) already
// asked for more than the request would take it in and wait for the rest.
const holdLowat = 64 << 10

// hold raises h's SO_RCVLOWAT if its worker reads it through readiness.
func (r *rescuer) hold(h *heldConn) {
	fl, err := unix.FcntlInt(uintptr(h.fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		return
	}
	lowat, err := unix.GetsockoptInt(h.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT)
	if err != nil || lowat >= holdLowat {
		return
	}
	if unix.SetsockoptInt(h.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, holdLowat) != nil {
		return
	}
	h.heldBack, h.lowat = true, lowat
}

// unhold puts h's SO_RCVLOWAT back.
func (h *heldConn) unhold() {
	if h.heldBack {
		unix.SetsockoptInt(h.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, h.lowat)
		h.heldBack = false
	}
}

// checkHold lets h go when the hold has lasted its time or what waits on it
// is not a request the worker would race.
func (r *rescuer) checkHold(h *heldConn, now time.Time) {
	if !h.heldBack {
		return
	}
	if until := r.holdUntil.Load(); !r.final && until != 0 && now.UnixNano() >= until {
		h.unhold()
		return
	}
	inq, err := unix.IoctlGetInt(h.fd, unix.SIOCINQ)
	if err != nil || inq == 0 {
		return
	}
	n, _, err := unix.Recvfrom(h.fd, r.peekBuf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err == nil && n > 0 && requestLine(r.peekBuf[:n]) == lineOther {
		h.unhold()
	}
}

// holdFor bounds the hold from the stop signal. A server that closes idle
// connections at its stop does so within it (Go's Shutdown looks again
// after 1, 2, 4 … 64 ms for the connections busy at first); one that keeps
// them through its stop (the examples' graceful stop) serves the request
// itself once let go, this much later at most.
const holdFor = 150 * time.Millisecond

// holdBeforeKill is how long before the drain deadline every held
// connection is held back again, for good: a worker still running then
// (one that ignores the stop signal, or keeps serving a connection its
// stop never saw, as uvicorn does with one accepted as it stops) finishes
// the requests it has read, sees no new one, and is killed with none in
// hand; what waits is served by the master once the kill let go of it.
const holdBeforeKill = 500 * time.Millisecond

// holdAll holds back every connection held, from now until it is let go
// (release), except one whose bytes show it is not HTTP/1.x.
func (r *rescuer) holdAll() {
	r.final = true
	for _, h := range r.held {
		if !h.internal && !h.heldBack {
			r.hold(h)
		}
	}
}

// holdFrom starts the hold's time: called at the stop signal.
func (r *rescuer) holdFrom(t time.Time) {
	r.holdUntil.Store(t.Add(min(r.linger, holdFor)).UnixNano())
}
