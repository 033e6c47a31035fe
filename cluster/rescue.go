//go:build linux

package cluster

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Connection rescue: while a generation stops and another one serves, the
// master holds a copy (pidfd_getfd) of every client connection the stopping
// processes hold on a rescued listening socket. A socket closes only with its
// last reference, so a worker's close(2) then sends neither FIN nor RST: the
// connection stays open for the client, and the master decides its end once
// no process of the stopping generation holds it any more (rescueConn).
//
// Polling is the only way to learn that a process let go of a descriptor; it
// starts at rescuePollMin and backs off to rescuePollMax, and the process
// list is refreshed every rescueMembersEvery polls. It runs only while a
// generation stops: steady state costs nothing.
const (
	rescuePollMin = time.Millisecond
	rescuePollMax = 10 * time.Millisecond
	// rescueFastFor keeps polling at rescuePollMin after the stop signal:
	// servers close what they accepted meanwhile within the first tenths
	// of a second (uvicorn accepts for up to 100 ms after SIGTERM).
	rescueFastFor      = 500 * time.Millisecond
	rescueMembersEvery = 4
	// rescueNice is the priority of the polling thread while it runs.
	rescueNice = -10
	// DefaultRescueLinger is how long a released connection with nothing to
	// read is held for a request that may be on its way (Config.RescueLinger).
	// A keep-alive client that is slow to send its next request (a loaded
	// box, a client that does work between requests) still gets it answered
	// within this; an HTTP/1.0 client that waits for the close to end its
	// response waits up to this much longer during a stop.
	DefaultRescueLinger = time.Second
)

// RescueStats counts what connection rescue did while one generation
// stopped. Held counts connections copied from its processes; each of them
// ends in exactly one of the other counters, or in none when the client
// closed it first (Gone).
type RescueStats struct {
	Held      int64  `json:"held"`            // connections copied from the stopping processes
	Forwarded int64  `json:"forwarded"`       // connections whose waiting request(s) went to the serving generation
	Requests  int64  `json:"requests"`        // requests forwarded (pipelining: several a connection)
	Replayed  int64  `json:"replayed"`        // of those, requests a stopping worker had read and dropped unanswered, sent again
	Idle      int64  `json:"idle"`            // closed after the linger with nothing to read, as the worker meant to
	Gone      int64  `json:"gone"`            // the client had closed, or the worker had shut the connection down: closed at once
	Abandoned int64  `json:"abandoned"`       // the worker read a request and never answered it: closed at once
	Refused   int64  `json:"refused"`         // bytes that are not an HTTP/1.x request (TLS, other protocols) or an upgrade: closed untouched
	Failed    int64  `json:"failed"`          // a forward that got no response: 502 sent
	Error     string `json:"error,omitempty"` // why rescue could not run, if it could not
}

// add sums o into s.
func (s *RescueStats) add(o RescueStats) {
	s.Held += o.Held
	s.Forwarded += o.Forwarded
	s.Requests += o.Requests
	s.Replayed += o.Replayed
	s.Idle += o.Idle
	s.Gone += o.Gone
	s.Abandoned += o.Abandoned
	s.Refused += o.Refused
	s.Failed += o.Failed
	if o.Error != "" {
		s.Error = o.Error
	}
}

// rescueTarget is one rescued listening socket, by port: where an accepted
// connection of it comes from and where its requests are forwarded.
type rescueTarget struct {
	ip      netip.Addr // the listener's address; unspecified matches any
	forward string     // host:port to dial: the listening socket itself
}

// rescueTargets returns the rescued TCP sockets by port.
func (s *Sockets) rescueTargets() map[uint16]rescueTarget {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[uint16]rescueTarget{}
	for i, a := range s.addrs {
		if !s.rescue[i] {
			continue
		}
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			continue
		}
		ip := ap.Addr().Unmap()
		dial := ip
		if ip.IsUnspecified() {
			dial = netip.MustParseAddr("127.0.0.1")
			if ip.Is6() {
				dial = netip.IPv6Loopback()
			}
		}
		out[ap.Port()] = rescueTarget{ip: ip, forward: netip.AddrPortFrom(dial, ap.Port()).String()}
	}
	return out
}

// errRescueRefused: pidfd_getfd was refused (seccomp, Yama ptrace_scope);
// rescue is then off for the master's life (Master.rescueOff), logged once.
var errRescueRefused = errors.New("pidfd_getfd refused")

// rescuer holds the connections of one stopping generation. Its run
// goroutine owns held, rejected and pidfds; conns owns one goroutine per
// released connection. finish stops the poll and waits for both.
type rescuer struct {
	m       *Master
	g       *generation
	targets map[uint16]rescueTarget
	linger  time.Duration
	ends    time.Time // no forwarded request outlives this

	held     map[uint64]*heldConn // by socket inode
	rejected map[uint64]bool      // inodes looked at that are not rescued
	pidfds   map[int]int          // pid -> pidfd
	members  []int                // processes of the stopping groups
	frozen   []int                // process groups freeze stopped
	later    []int                // processes to signal once thawed (send)
	laterSig syscall.Signal       // and the signal

	stop    chan struct{}
	done    chan struct{}
	conns   sync.WaitGroup
	refused atomic.Bool
	// otherProto: bytes that are not HTTP/1.x were seen waiting on one of
	// the connections. Such a listener (TLS, another protocol) gains
	// nothing from the linger: an idle connection is then closed at once,
	// as its worker meant, rather than held for a request rescue could not
	// serve anyway.
	otherProto atomic.Bool
	stats      rescueCounters
	// Holding back (rescue_hold.go). freezing: the first poll, with the
	// generation frozen; what it copies is held back, as is everything
	// once final (holdAll ran: the drain deadline is near). holdUntil:
	// when the first hold ends (UnixNano; 0 until the stop signal, set by
	// sent on the stopping goroutine). peekBuf: checkHold's. All but
	// holdUntil are run's own after startRescue.
	freezing  bool
	final     bool
	holdUntil atomic.Int64
	peekBuf   [256]byte
}

type rescueCounters struct {
	held, forwarded, requests, replayed, idle, gone, abandoned, refused, failed atomic.Int64
}

// heldConn is the master's copy of one client connection.
type heldConn struct {
	fd       int
	ino      uint64
	peer     netip.AddrPort
	port     uint16
	internal bool // the server side of one of the master's own forwards
	snap     connSnapshot
	// sent is tcpi_bytes_sent as last seen, rcvdAtSend tcpi_bytes_received
	// when sent was last seen to grow: bytes received past it and read with
	// nothing sent since are a request the worker dropped.
	sent, rcvdAtSend uint64
	// heldBack: SO_RCVLOWAT raised (rescue_hold.go), lowat its value before.
	heldBack bool
	lowat    int
}

// connSnapshot is what a held connection had waiting to be read at one
// moment, with the byte counts of that moment: if the worker later reads
// exactly those bytes and lets go of the connection with nothing sent, it
// dropped them unanswered, and they are still known.
type connSnapshot struct {
	data       []byte
	rcvd, sent uint64 // tcpi_bytes_received, tcpi_bytes_sent
}

// maxSnapshot bounds the bytes kept per held connection.
const maxSnapshot = 16 << 10

// snapshot refreshes h's snapshot and notes bytes of another protocol.
func (r *rescuer) snapshot(h *heldConn) {
	h.snapshot()
	if len(h.snap.data) > 0 && requestLine(h.snap.data) == lineOther {
		r.otherProto.Store(true)
	}
}

// snapshot records what h has waiting to be read, when that changed since
// the last snapshot; a read in between (the counts moved) leaves it as it
// was.
func (h *heldConn) snapshot() {
	if ti, err := unix.GetsockoptTCPInfo(h.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && (ti.Bytes_sent != h.sent || h.rcvdAtSend == 0) {
		h.sent, h.rcvdAtSend = ti.Bytes_sent, ti.Bytes_received
	}
	inq, err := unix.IoctlGetInt(h.fd, unix.SIOCINQ)
	if err != nil || inq == 0 || inq > maxSnapshot || inq == len(h.snap.data) {
		return
	}
	before, err := unix.GetsockoptTCPInfo(h.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return
	}
	buf := make([]byte, inq)
	n, _, err := unix.Recvfrom(h.fd, buf, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil || n != inq {
		return
	}
	after, err := unix.GetsockoptTCPInfo(h.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || after.Bytes_received != before.Bytes_received || after.Bytes_sent != before.Bytes_sent {
		return
	}
	if n2, _ := unix.IoctlGetInt(h.fd, unix.SIOCINQ); n2 != inq {
		return
	}
	h.snap = connSnapshot{data: buf, rcvd: after.Bytes_received, sent: after.Bytes_sent}
}

// startRescue freezes the process groups of g's workers (SIGSTOP), takes a
// copy of every client connection they hold with a snapshot of what waits
// in it, and starts polling for more and for the ones they let go of. The
// groups stay frozen until every worker was sent the stop signal (the
// rescuer is the stopSignaller): no worker accepts a connection or reads a
// request between the copy and the signal, and one that dies of the signal
// dies on waking, before it accepts another. It returns nil when nothing
// is to be rescued: no rescued socket, rescue refused before, or no other
// generation serving.
func (m *Master) startRescue(g *generation, deadline time.Time) *rescuer {
	if m.rescueOff.Load() {
		return nil
	}
	targets := m.socks.rescueTargets()
	if len(targets) == 0 {
		return nil
	}
	r := &rescuer{
		m: m, g: g, targets: targets,
		linger: g.cfg.RescueLinger, ends: deadline,
		held: map[uint64]*heldConn{}, rejected: map[uint64]bool{}, pidfds: map[int]int{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	r.freeze()
	r.refreshMembers()
	r.freezing = true
	r.poll()
	r.freezing = false
	go r.run()
	return r
}

// freezeWait bounds the wait for a frozen group's threads to stop: a thread
// in uninterruptible sleep stops only when it wakes.
const freezeWait = 200 * time.Millisecond

// freeze sends SIGSTOP to each live worker's process group and waits until
// their threads are stopped.
func (r *rescuer) freeze() {
	r.m.mu.Lock()
	for _, s := range r.g.slots {
		if p := s.proc; p != nil && !chanClosed(p.exited) {
			r.frozen = append(r.frozen, p.pid)
		}
	}
	r.m.mu.Unlock()
	for _, pgid := range r.frozen {
		syscall.Kill(-pgid, syscall.SIGSTOP)
	}
	deadline := time.Now().Add(freezeWait)
	for _, pgid := range r.frozen {
		for _, pid := range append([]int{pgid}, groupMembers(pgid, true)...) {
			for !threadsStopped(pid) && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
}

// send sends sig to each process of a frozen group. A stopped thread does
// not want a signal: a process-directed one sent now would go to whichever
// thread runs first on waking, not to the main thread as it would to a
// running process, and an app whose main thread waits for it (Python runs
// its handlers there) would never see it. So each process's main thread
// gets it directed to it, unless that thread blocks it (an app that waits
// for signals in a thread of its own): that process gets it, directed to
// the process, once thawed.
func (r *rescuer) send(pgid int, sig syscall.Signal) {
	for _, pid := range append([]int{pgid}, groupMembers(pgid, true)...) {
		if blocks(pid, sig) || unix.Tgkill(pid, pid, sig) != nil {
			r.later, r.laterSig = append(r.later, pid), sig
		}
	}
}

// sent thaws the frozen groups (SIGCONT), then sends the signal to the
// processes send left for later.
func (r *rescuer) sent() {
	for _, pgid := range r.frozen {
		syscall.Kill(-pgid, syscall.SIGCONT)
	}
	r.holdFrom(time.Now())
	for _, pid := range r.later {
		syscall.Kill(pid, r.laterSig)
	}
}

// blocks reports whether the main thread of pid blocks sig (SigBlk in its
// status); unreadable counts as blocked, which falls back to a plain kill.
func blocks(pid int, sig syscall.Signal) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigBlk:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return true
}

// threadsStopped reports whether every thread of pid is stopped (or pid is
// gone).
func threadsStopped(pid int) bool {
	base := "/proc/" + strconv.Itoa(pid) + "/task/"
	d, err := os.Open(base)
	if err != nil {
		return true
	}
	tids, _ := d.Readdirnames(-1)
	d.Close()
	for _, tid := range tids {
		b, err := os.ReadFile(base + tid + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) {
			continue
		}
		switch b[i+2] {
		case 'T', 't', 'Z', 'X':
		default:
			return false
		}
	}
	return true
}

// finish is called once every process of the generation is reaped: it lets
// go of what is still held (a last poll finds no holder) and waits for every
// released connection to end. It returns what rescue did.
func (r *rescuer) finish() RescueStats {
	close(r.stop)
	<-r.done
	r.conns.Wait()
	c := &r.stats
	st := RescueStats{
		Held: c.held.Load(), Forwarded: c.forwarded.Load(), Requests: c.requests.Load(), Replayed: c.replayed.Load(),
		Idle: c.idle.Load(), Gone: c.gone.Load(), Abandoned: c.abandoned.Load(),
		Refused: c.refused.Load(), Failed: c.failed.Load(),
	}
	if r.refused.Load() {
		st.Error = errRescueRefused.Error()
	}
	return st
}

func (r *rescuer) run() {
	defer close(r.done)
	defer r.closePidfds()
	// A connection a worker accepts and closes between two looks is not
	// rescued: on a busy box the looks must not wait for a CPU behind
	// everything else. The poll runs on a thread of its own, at a higher
	// priority where the agent may raise it (CAP_SYS_NICE), put back before
	// the thread returns to the runtime.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	if prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil { // the raw value: 20 - nice
		if unix.Setpriority(unix.PRIO_PROCESS, tid, rescueNice) == nil {
			defer unix.Setpriority(unix.PRIO_PROCESS, tid, 20-prio)
		}
	}
	interval := rescuePollMin
	fastUntil := time.Now().Add(rescueFastFor)
	holdAllAt := r.ends.Add(-holdBeforeKill)
	t := time.NewTimer(interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-t.C:
		case <-r.stop:
			// Every process is reaped: whatever is still held has no
			// holder left.
			r.members = nil
			r.poll()
			return
		}
		if n%rescueMembersEvery == 0 {
			r.refreshMembers()
		}
		r.poll()
		if !r.final && !time.Now().Before(holdAllAt) {
			r.holdAll()
		}
		if time.Now().After(fastUntil) {
			interval = min(interval*5/4+time.Millisecond/4, rescuePollMax)
		}
		t.Reset(interval)
	}
}

// refreshMembers lists the live processes of the stopping workers' groups.
// A group's id is its leader's pid, which is not reused before the leader is
// reaped; a reaped worker's group is left out.
func (r *rescuer) refreshMembers() {
	r.members = r.members[:0]
	r.m.mu.Lock()
	var procs []*proc
	for _, s := range r.g.slots {
		if s.proc != nil {
			procs = append(procs, s.proc)
		}
	}
	r.m.mu.Unlock()
	for _, p := range procs {
		if chanClosed(p.done) {
			continue
		}
		if st, ok := readStat(p.pid); ok && st.state != 'Z' {
			r.members = append(r.members, descendants(p.pid)...)
			continue
		}
		// The leader exited and its children were handed to init: what is
		// left of its group is found by a scan of newer processes.
		r.members = append(r.members, groupMembers(p.pid, true)...)
	}
}

// descendants returns pid and its descendants, from the kernel's children
// lists: its cost follows the size of the tree, not of the box.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < 4096; i++ {
		base := "/proc/" + strconv.Itoa(out[i]) + "/task/"
		d, err := os.Open(base)
		if err != nil {
			continue
		}
		tids, _ := d.Readdirnames(-1)
		d.Close()
		for _, tid := range tids {
			b, err := os.ReadFile(base + tid + "/children")
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// poll copies the client connections the members hold that it has not
// copied yet, and releases the held ones no member holds any more.
func (r *rescuer) poll() {
	present := map[uint64]bool{}
	for _, pid := range r.members {
		r.scan(pid, present)
	}
	now := time.Now()
	for ino, h := range r.held {
		if present[ino] {
			if !h.internal {
				r.checkHold(h, now)
				r.snapshot(h)
			}
			continue
		}
		delete(r.held, ino)
		r.conns.Add(1)
		go func() {
			defer r.conns.Done()
			r.release(h)
		}()
	}
}

// scan reads pid's fd table: each socket inode is marked present, and a
// client connection on a rescued socket not held yet is copied.
func (r *rescuer) scan(pid int, present map[uint64]bool) {
	base := "/proc/" + strconv.Itoa(pid) + "/fd/"
	d, err := os.Open(base)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		link, err := os.Readlink(base + n)
		if err != nil || !strings.HasPrefix(link, "socket:[") {
			continue
		}
		ino, err := strconv.ParseUint(strings.TrimSuffix(link[len("socket:["):], "]"), 10, 64)
		if err != nil || r.m.socks.isOurs(ino) {
			continue
		}
		present[ino] = true
		if r.held[ino] != nil || r.rejected[ino] || r.refused.Load() {
			continue
		}
		fd, _ := strconv.Atoi(n)
		r.copyConn(pid, fd, ino)
	}
}

// copyConn takes a copy of fd in pid, checks that it is still the socket
// seen (fd numbers are reused) and keeps it if it is a connection accepted
// on one of the rescued sockets.
func (r *rescuer) copyConn(pid, fd int, ino uint64) {
	pidfd, ok := r.pidfds[pid]
	if !ok {
		var err error
		pidfd, err = unix.PidfdOpen(pid, 0)
		if err != nil {
			return // exited meanwhile
		}
		r.pidfds[pid] = pidfd
	}
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EACCES) {
			r.refuse(err)
		}
		return // the fd was closed or the process is gone meanwhile
	}
	var st unix.Stat_t
	if unix.Fstat(nfd, &st) != nil || st.Ino != ino {
		unix.Close(nfd) // reused for another file: the next poll sees it
		return
	}
	h, ok := r.classify(nfd, ino)
	if !ok {
		unix.Close(nfd)
		r.rejected[ino] = true
		return
	}
	r.held[ino] = h
	if !h.internal {
		if r.freezing || r.final {
			r.hold(h)
		}
		r.snapshot(h)
		r.stats.held.Add(1)
	}
}

// classify keeps a TCP stream connection whose local end is a rescued
// listening socket's address.
func (r *rescuer) classify(fd int, ino uint64) (*heldConn, bool) {
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return nil, false
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc != 0 {
		return nil, false
	}
	local, ok := sockAddrPort(unix.Getsockname(fd))
	if !ok {
		return nil, false
	}
	t, ok := r.targets[local.Port()]
	if !ok || (!t.ip.IsUnspecified() && t.ip != local.Addr()) {
		return nil, false
	}
	peer, ok := sockAddrPort(unix.Getpeername(fd))
	if !ok {
		return nil, false
	}
	_, internal := r.m.forwards.Load(peer)
	return &heldConn{fd: fd, ino: ino, peer: peer, port: local.Port(), internal: internal}, true
}

func sockAddrPort(sa unix.Sockaddr, err error) (netip.AddrPort, bool) {
	if err != nil {
		return netip.AddrPort{}, false
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// refuse turns rescue off for the master's life, logged once: the kernel
// or a security policy does not let the master copy its workers' fds.
func (r *rescuer) refuse(err error) {
	if r.refused.Swap(true) {
		return
	}
	if !r.m.rescueOff.Swap(true) {
		r.m.log.Warn("Connection rescue unavailable", "gen", r.g.id, "err", err, "effect", "connections a stopping worker drops are dropped")
	}
}

func (r *rescuer) closePidfds() {
	for pid, fd := range r.pidfds {
		unix.Close(fd)
		delete(r.pidfds, pid)
	}
}
