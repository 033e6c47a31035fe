//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The listen watch. Every generation shares one open file description per
// listening socket, so a worker that calls shutdown(2) on its copy stops the
// socket for everyone, and one that unlinks a unix socket's path leaves the
// socket unreachable. The master checks its own sockets, restores a lost
// one and tells its caller, who starts a generation on it.
//
// What a check reads, measured on Linux 6.18: after shutdown(SHUT_RD or
// SHUT_RDWR) of a listening TCP socket, SO_ACCEPTCONN reads 0, the socket
// leaves /proc/net/tcp and poll(2) reports POLLHUP (state CLOSE); listen(2)
// again binds a new ephemeral port, not the old one. A unix listening socket
// shut down the same way keeps SO_ACCEPTCONN at 1 but refuses every connect;
// poll reports POLLRDHUP. SHUT_WR changes nothing on either. So one
// poll(2) with a zero timeout over every socket, plus a stat(2) of each unix
// path, is the whole check.

// Why a socket was lost.
const (
	LostShutdown = "shut down"     // it no longer takes connections: shutdown(2) by some holder
	LostUnlinked = "path removed"  // unix: its path is gone
	LostReplaced = "path replaced" // unix: another file took its path
)

// How a lost socket was restored.
const (
	// RestoredRebound: a fresh socket on the same address or path. Every
	// worker running holds the dead one: a Reload must start a generation
	// on the new one (Status: the serving generation is Stale).
	RestoredRebound = "rebound"
	// RestoredRelinked: the unix path names the same, live socket again
	// (from a second hard link the master keeps); nothing else to do.
	RestoredRelinked = "relinked"
)

// DefaultListenCheck is the period of the listen watch in steady state.
// While a generation is being stopped the watch checks every
// stoppingListenCheck, and once right before and right after the stop.
const (
	DefaultListenCheck  = 50 * time.Millisecond
	stoppingListenCheck = 5 * time.Millisecond
	// restoreRetry spaces the attempts to restore a socket that could not
	// be: the address is taken by someone else, the directory is gone.
	restoreRetry = time.Second
	// keepSuffix names the second hard link of a unix socket file the
	// master bound: "<dir>/.<name>.handoff-keep".
	keepSuffix = ".handoff-keep"
)

// SocketLost reports a listening socket that stopped taking connections
// and how the master restored it. The socket was lost between LastSeen and
// Detected; connections were refused (or found no path) from then until
// Restored.
type SocketLost struct {
	Name    string
	Address string
	Reason  string // LostShutdown, LostUnlinked, LostReplaced
	How     string // RestoredRebound, RestoredRelinked
	// Adopted: the lost socket came from systemd (a socket unit); the new
	// one is the master's own, and systemd's stays dead until the unit is
	// restarted.
	Adopted bool
	// Stopping is the generation that was being stopped (retired, or failed
	// and stopped) when the loss was seen; 0 when none was.
	Stopping int
	LastSeen time.Time // last check that found the socket whole
	Detected time.Time
	Restored time.Time
}

// NeedsReload reports whether the serving generation holds the dead socket.
func (l SocketLost) NeedsReload() bool { return l.How == RestoredRebound }

// watchRef is what the listen watch knows of one socket.
type watchRef struct {
	fd      int    // read once: Fd on a File may change the socket's flags
	sockIno uint64 // the socket's inode (sockfs)
	adopted bool   // from systemd
	// unix only: the socket file at its path, and a second hard link to it
	// ("" when the master did not bind it or could not link), from which
	// the path is put back.
	path     string
	dev, ino uint64
	keep     string
}

// newWatchRef describes the socket fd at addr for the watch. A unix socket
// file this process created gets its keep link (an upgraded program finds
// the one its predecessor made).
func (s *Sockets) newWatchRef(fd int, sockIno uint64, addr string) watchRef {
	w := watchRef{fd: fd, sockIno: sockIno}
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok || path == "" || path[0] == '@' {
		return w // TCP, or an abstract unix socket: no path to lose
	}
	w.path = path
	var st unix.Stat_t
	if !slices.Contains(s.unlinks, path) {
		if unix.Stat(path, &st) == nil {
			w.dev, w.ino = uint64(st.Dev), st.Ino
		}
		return w
	}
	keep := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+keepSuffix)
	var kst unix.Stat_t
	pathErr := unix.Stat(path, &st)
	keepErr := unix.Stat(keep, &kst)
	switch {
	case keepErr == nil && (pathErr != nil || (st.Dev == kst.Dev && st.Ino == kst.Ino)):
		// Made by the program this one replaced: it names our socket.
		st = kst
	case pathErr != nil:
		return w
	default:
		os.Remove(keep)
		if err := os.Link(path, keep); err != nil {
			s.log.Warn("No keep link for a unix socket: a removed path will be rebound, not relinked", "path", path, "err", err)
			keep = ""
		}
	}
	w.dev, w.ino, w.keep = uint64(st.Dev), st.Ino, keep
	return w
}

// removeKeepLinksLocked removes the keep links; s.mu is held.
func (s *Sockets) removeKeepLinksLocked() error {
	var errs []error
	for _, w := range s.watch {
		if w.keep == "" {
			continue
		}
		if err := os.Remove(w.keep); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Epoch counts the sockets replaced so far; a generation whose workers
// started before the last replacement holds a dead socket.
func (s *Sockets) Epoch() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.epoch
}

// replacedCh returns a channel closed at the next replacement.
func (s *Sockets) replacedCh() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.replaced == nil {
		s.replaced = make(chan struct{})
	}
	return s.replaced
}

// lostSocket is one finding of check.
type lostSocket struct {
	i      int
	reason string
}

// check looks at every socket once: one poll(2) and a stat(2) per unix
// path. buf is the caller's, reused from check to check.
func (s *Sockets) check(buf []unix.PollFd) ([]lostSocket, []unix.PollFd) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, buf
	}
	buf = buf[:0]
	for _, w := range s.watch {
		buf = append(buf, unix.PollFd{Fd: int32(w.fd), Events: unix.POLLRDHUP})
	}
	for {
		_, err := unix.Poll(buf, 0)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	var lost []lostSocket
	for i, w := range s.watch {
		if buf[i].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLNVAL) != 0 {
			lost = append(lost, lostSocket{i, LostShutdown})
			continue
		}
		if w.path == "" || w.ino == 0 {
			continue
		}
		var st unix.Stat_t
		switch err := unix.Stat(w.path, &st); {
		case errors.Is(err, unix.ENOENT):
			lost = append(lost, lostSocket{i, LostUnlinked})
		case err != nil:
			// EACCES and the like: not proof of a loss.
		case uint64(st.Dev) != w.dev || st.Ino != w.ino:
			lost = append(lost, lostSocket{i, LostReplaced})
		}
	}
	return lost, buf
}

// restore brings socket i back: a unix path that lost its file gets it back
// from the keep link; otherwise a fresh socket is bound on the same address
// with the same spec (blocking, like every socket here) and replaces the
// dead one in the set, its inode and the epoch. Only the watch calls it.
func (s *Sockets) restore(i int, reason string) (string, error) {
	s.mu.RLock()
	w, name, addr := s.watch[i], s.names[i], s.addrs[i]
	sp, ok := s.specs[name]
	s.mu.RUnlock()
	if reason != LostShutdown && w.keep != "" {
		err := relink(w)
		if err == nil {
			return RestoredRelinked, nil
		}
		s.log.Warn("Cannot relink the unix socket path: binding a new socket", "name", name, "path", w.path, "err", err)
	}
	if !ok {
		sp = ListenSpec{Name: name}
	}
	sp.Address = addr // a port once 0 is the port workers and clients know
	if w.path != "" && reason == LostShutdown {
		// Our own dead socket's file: removeStaleUnix would remove it too,
		// after a connect; be exact instead.
		var st unix.Stat_t
		if unix.Stat(w.path, &st) == nil && uint64(st.Dev) == w.dev && st.Ino == w.ino {
			os.Remove(w.path)
		}
	}
	fresh, err := bindWatchable(s.log, sp)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		fresh.Close()
		return "", ErrClosed
	}
	old := s.files[i]
	delete(s.inodes, w.sockIno)
	s.files[i], s.watch[i] = fresh.files[0], fresh.watch[0]
	s.inodes[fresh.watch[0].sockIno] = i
	for _, p := range fresh.unlinks {
		if !slices.Contains(s.unlinks, p) {
			s.unlinks = append(s.unlinks, p)
		}
	}
	s.epoch++
	if s.replaced != nil {
		close(s.replaced)
		s.replaced = nil
	}
	// Spawns hold mu for reading across their fork: none uses old now.
	old.Close()
	s.mu.Unlock()
	return RestoredRebound, nil
}

// rebindTries bounds the binds restore makes while the path keeps vanishing
// under it (a stopping worker removing it again on exit).
const rebindTries = 3

// bindWatchable binds sp in a set of its own. A unix path removed before
// the watch took hold of it (its inode read and its keep link made) would
// leave a socket nobody can reach and nothing to put back: that happens
// when the worker whose exit removed the path has a sibling doing the same
// a moment later, so it binds again.
func bindWatchable(log *slog.Logger, sp ListenSpec) (*Sockets, error) {
	for try := 1; ; try++ {
		fresh := &Sockets{log: log, inodes: map[uint64]int{}}
		if err := fresh.bind(sp); err != nil {
			return nil, err
		}
		w := fresh.watch[0]
		if w.path == "" || (w.ino != 0 && w.keep != "") || try == rebindTries {
			return fresh, nil
		}
		if _, err := os.Stat(w.path); !errors.Is(err, os.ErrNotExist) {
			return fresh, nil
		}
		log.Warn("Unix socket path removed while binding it: binding again", "path", w.path, "try", try)
		fresh.Close()
	}
}

// relink puts w's socket file back at its path, atomically replacing
// whatever took it, from the keep link.
func relink(w watchRef) error {
	var st unix.Stat_t
	if err := unix.Stat(w.keep, &st); err != nil {
		return err
	}
	if uint64(st.Dev) != w.dev || st.Ino != w.ino {
		return fmt.Errorf("keep link %s: names another file", w.keep)
	}
	tmp := w.keep + ".tmp"
	os.Remove(tmp)
	if err := os.Link(w.keep, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, w.path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// listenWatch is the watch goroutine, owned by the Master (watchWG): it
// checks the sockets every Config.ListenCheck, every stoppingListenCheck
// while a generation is being stopped, and on request (checkNow), until
// the master closes.
func (m *Master) listenWatch() {
	defer m.watchWG.Done()
	var (
		buf     []unix.PollFd
		lastOK  = make([]time.Time, len(m.socks.Names())) // last check that found each socket whole
		pending = map[int]*SocketLost{}
		retry   = map[int]time.Time{}
	)
	t := time.NewTimer(m.cfg.ListenCheck)
	defer t.Stop()
	for {
		var done chan struct{}
		select {
		case <-m.closing:
			return
		case <-t.C:
		case done = <-m.watchNow:
		}
		var lost []lostSocket
		lost, buf = m.socks.check(buf)
		now := time.Now()
		for _, l := range lost {
			m.lostSocket(l, now, lastOK[l.i], pending, retry)
		}
		for i := range buf {
			if !slices.ContainsFunc(lost, func(l lostSocket) bool { return l.i == i }) {
				lastOK[i] = now
			}
		}
		if done != nil {
			close(done)
		}
		d := m.cfg.ListenCheck
		if m.stoppingGen.Load() != 0 {
			d = min(d, stoppingListenCheck)
		}
		t.Reset(d)
	}
}

// lostSocket handles one finding: the first sight logs the one error line,
// every attempt (spaced by restoreRetry) tries to restore, and a restored
// socket is reported to Config.OnSocketLost.
func (m *Master) lostSocket(l lostSocket, now, lastOK time.Time, pending map[int]*SocketLost, retry map[int]time.Time) {
	ev := pending[l.i]
	first := ev == nil
	if first {
		addrs := m.socks.Addrs()
		m.socks.mu.RLock()
		adopted := m.socks.watch[l.i].adopted
		m.socks.mu.RUnlock()
		ev = &SocketLost{Name: m.socks.Names()[l.i], Address: addrs[l.i], Reason: l.reason, Adopted: adopted,
			Stopping: int(m.stoppingGen.Load()), LastSeen: lastOK, Detected: now}
		pending[l.i] = ev
	} else if now.Before(retry[l.i]) {
		return
	}
	how, err := m.restoreSocket(l)
	attrs := []any{"name", ev.Name, "address", ev.Address, "reason", ev.Reason}
	if ev.Stopping != 0 {
		attrs = append(attrs, "stopping_gen", ev.Stopping)
	}
	if ev.Adopted {
		attrs = append(attrs, "adopted", true)
	}
	if err != nil {
		retry[l.i] = now.Add(restoreRetry)
		if first {
			m.log.Error("Listening socket lost; cannot restore it yet", append(attrs, "err", err)...)
		} else {
			m.log.Debug("Listening socket still lost", append(attrs, "err", err)...)
		}
		return
	}
	delete(pending, l.i)
	delete(retry, l.i)
	ev.How, ev.Restored = how, time.Now()
	attrs = append(attrs, "restored", how, "refused_for", ev.Restored.Sub(ev.LastSeen).Round(time.Millisecond))
	if first {
		msg := "Listening socket lost and restored"
		if how == RestoredRebound {
			msg = "Listening socket lost and rebound; the workers hold the dead one until a new generation starts"
		}
		if ev.Adopted {
			msg += "; the socket unit's socket is dead: restart the unit to give the address back to systemd"
		}
		m.log.Error(msg, attrs...)
	} else {
		m.log.Info("Listening socket restored", attrs...)
	}
	if m.cfg.OnSocketLost != nil {
		m.cfg.OnSocketLost(*ev)
	}
}

// restoreSocket restores one socket with spawning held for reading: an
// Upgrade (which holds it for writing) hands over the set before or after
// the replacement, never during it.
func (m *Master) restoreSocket(l lostSocket) (string, error) {
	m.spawnMu.RLock()
	defer m.spawnMu.RUnlock()
	return m.socks.restore(l.i, l.reason)
}

// checkNow has the watch check the sockets once and waits for it; it returns
// at once when the watch is off or the master closing.
func (m *Master) checkNow() {
	if m.cfg.ListenCheck < 0 {
		return
	}
	done := make(chan struct{})
	select {
	case m.watchNow <- done:
	case <-m.closing:
		return
	}
	select {
	case <-done:
	case <-m.closing:
	}
}

// stopWatched stops generation g like g.stop, with the listen watch
// checking right before, often during, and right after, so that a loss
// caused by g's workers is seen at once and blamed on g.
func (m *Master) stopWatched(g *generation, stop func()) {
	m.checkNow()
	m.stoppingGen.Store(int64(g.id))
	m.checkNow() // wakes the watch into its fast period
	stop()
	m.checkNow()
	m.stoppingGen.CompareAndSwap(int64(g.id), 0)
}

// startListenWatch starts the watch unless Config.ListenCheck is negative.
func (m *Master) startListenWatch() {
	m.watchNow = make(chan chan struct{})
	if m.cfg.ListenCheck < 0 {
		return
	}
	m.watchWG.Add(1)
	go m.listenWatch()
}

// Stale reports whether the serving generation holds a socket the listen
// watch replaced: its workers started before the replacement. A Reload
// fixes it. False when nothing serves.
func (m *Master) Stale() bool {
	epoch := m.socks.Epoch()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.serving != nil && m.serving.epoch < epoch
}
