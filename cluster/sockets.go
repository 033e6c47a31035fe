//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/coreos/go-systemd/v22/activation"
)

// ListenSpec names one listening socket. Address is "host:port" (TCP) or
// "unix:/path" (a unix stream socket). Name is what workers see in
// LISTEN_FDNAMES and what a systemd socket unit's FileDescriptorName= must say
// for the socket to be adopted instead of bound.
//
// Zero values are the defaults: TCP_NODELAY is set on a TCP socket, and
// connection rescue (see Config.RescueLinger) covers it.
type ListenSpec struct {
	Name    string
	Address string
	// KeepNagle leaves TCP_NODELAY as it is. Linux copies the flag from a
	// listening socket to every connection accept(2) returns, so setting it
	// here gives every worker's connections no Nagle delay, including those
	// of servers that never set it themselves because they take the
	// inherited fd for a unix socket.
	KeepNagle bool
	// NoRescue leaves the connections accepted on this socket alone when a
	// generation stops: what the worker drops is dropped.
	NoRescue bool
}

// Sockets holds the listening sockets of one master for its whole life.
// Workers inherit them as fds 3, 4, … in spec order; the master itself never
// accepts on them. Sockets are plain file descriptors in blocking mode, as
// systemd passes them.
type Sockets struct {
	log *slog.Logger
	// mu guards files, addrs, inodes, rescue, unlinks, watch, epoch and replaced, which change
	// when the listen watch replaces a lost socket (listenwatch.go). It is
	// held for reading across a spawn's fork, so no worker inherits a closed
	// descriptor, and by every reader of those fields outside the watch.
	// It comes last in Master's lock order (it may be taken with Master.mu
	// held, never the reverse) and takes no other lock.
	mu       sync.RWMutex
	files    []*os.File
	names    []string
	addrs    []string
	inodes   map[uint64]int        // socket inode -> index
	rescue   []bool                // per socket: connection rescue covers it
	unlinks  []string              // unix socket paths this process created
	watch    []watchRef            // per socket: what the listen watch compares
	epoch    int                   // replacements so far
	replaced chan struct{}         // closed (and renewed) at each replacement
	specs    map[string]ListenSpec // by name, as given: a rebind repeats the spec's options
	closed   bool
}

// OpenSockets opens one listening socket per spec, in order. A spec whose
// name matches a socket inherited through systemd socket activation
// (LISTEN_FDS/LISTEN_FDNAMES addressed to this process) adopts that socket;
// otherwise the address is bound. With no specs, every inherited socket is
// adopted. A stale unix socket file (no listener behind it) is removed before
// binding; a live one, or a non-socket file, is an error. SO_REUSEPORT is never
// set: one shared accept queue is what keeps connections alive across worker
// restarts. On error every socket opened so far is closed.
func OpenSockets(specs []ListenSpec, logger *slog.Logger) (*Sockets, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Sockets{log: logger, inodes: map[uint64]int{}}
	inherited := activation.Files(true)
	used := make([]bool, len(inherited))

	if len(specs) == 0 {
		if len(inherited) == 0 {
			return nil, fmt.Errorf("open sockets: %w", ErrNoSockets)
		}
		for i, f := range inherited {
			used[i] = true
			if err := s.adopt(ListenSpec{Name: f.Name()}, f); err != nil {
				s.Close()
				closeUnused(inherited, used)
				return nil, err
			}
		}
		return s, nil
	}

	seen := map[string]bool{}
	s.specs = map[string]ListenSpec{}
	for _, sp := range specs {
		s.specs[sp.Name] = sp
		if strings.ContainsAny(sp.Name, ":\n") {
			s.Close()
			closeUnused(inherited, used)
			return nil, fmt.Errorf("open socket %q: %w: name must not contain ':'", sp.Name, ErrInvalidSpec)
		}
		if sp.Name != "" && seen[sp.Name] {
			s.Close()
			closeUnused(inherited, used)
			return nil, fmt.Errorf("open socket %q: %w: duplicate name", sp.Name, ErrInvalidSpec)
		}
		seen[sp.Name] = true
		adopted := false
		if sp.Name != "" {
			for i, f := range inherited {
				if !used[i] && f.Name() == sp.Name {
					used[i] = true
					if err := s.adopt(sp, f); err != nil {
						s.Close()
						closeUnused(inherited, used)
						return nil, err
					}
					adopted = true
					break
				}
			}
		}
		if adopted {
			continue
		}
		if err := s.bind(sp); err != nil {
			s.Close()
			closeUnused(inherited, used)
			return nil, err
		}
	}
	for i, f := range inherited {
		if !used[i] {
			logger.Warn("Ignoring inherited socket", "name", f.Name())
		}
	}
	closeUnused(inherited, used)
	return s, nil
}

func closeUnused(files []*os.File, used []bool) {
	for i, f := range files {
		if !used[i] {
			f.Close()
			used[i] = true
		}
	}
}

// adopt takes over an inherited listening socket. TCP_NODELAY is set on it
// as on a bound one unless sp.KeepNagle: a socket unit that wants Nagle says
// so in the config too.
func (s *Sockets) adopt(sp ListenSpec, f *os.File) error {
	name := sp.Name
	l, err := net.FileListener(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("adopt socket %q: %w", name, err)
	}
	addr := l.Addr()
	l.Close() // a dup; f stays open
	a := addr.String()
	if addr.Network() == "unix" {
		a = "unix:" + a
	} else if !sp.KeepNagle {
		if err := setNoDelay(f); err != nil {
			f.Close()
			return fmt.Errorf("adopt socket %q: %w", name, err)
		}
	}
	if err := s.add(name, a, f, !sp.NoRescue); err != nil {
		return err
	}
	s.watch[len(s.watch)-1].adopted = true
	s.log.Info("Adopted socket", "name", name, "address", a)
	return nil
}

// bind creates a listening socket for sp.
func (s *Sockets) bind(sp ListenSpec) error {
	network, addr := "tcp", sp.Address
	if p, ok := strings.CutPrefix(sp.Address, "unix:"); ok {
		network, addr = "unix", p
		if addr == "" {
			return fmt.Errorf("open socket %q: %w: empty unix path", sp.Name, ErrInvalidSpec)
		}
		if err := removeStaleUnix(addr); err != nil {
			return &SocketError{Name: sp.Name, Err: err}
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return &SocketError{Name: sp.Name, Err: err}
	}
	var f *os.File
	var a string
	switch l := l.(type) {
	case *net.TCPListener:
		f, err = l.File()
		a = l.Addr().String()
		if err == nil && !sp.KeepNagle {
			err = setNoDelay(f)
		}
	case *net.UnixListener:
		l.SetUnlinkOnClose(false)
		f, err = l.File()
		a = "unix:" + addr
		s.unlinks = append(s.unlinks, addr)
	}
	l.Close()
	if err == nil {
		f, err = plainFile(f, sp.Name)
	}
	if err != nil {
		return &SocketError{Name: sp.Name, Err: err}
	}
	if err := s.add(sp.Name, a, f, network == "tcp" && !sp.NoRescue); err != nil {
		return err
	}
	s.log.Info("Listening", "name", sp.Name, "address", a, "nodelay", network == "tcp" && !sp.KeepNagle, "rescue", network == "tcp" && !sp.NoRescue)
	return nil
}

func (s *Sockets) add(name, addr string, f *os.File, rescue bool) error {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("open socket %q: fstat: %w", name, err)
	}
	if name == "" {
		name = "unknown"
	}
	s.inodes[st.Ino] = len(s.files)
	s.files = append(s.files, f)
	s.names = append(s.names, name)
	s.addrs = append(s.addrs, addr)
	s.rescue = append(s.rescue, rescue && !strings.HasPrefix(addr, "unix:"))
	s.watch = append(s.watch, s.newWatchRef(int(f.Fd()), st.Ino, addr))
	return nil
}

// setNoDelay sets TCP_NODELAY on a listening socket; accepted connections
// inherit it.
func setNoDelay(f *os.File) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := sc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set TCP_NODELAY: %w", serr)
	}
	return nil
}

// plainFile turns a listener's *os.File into one whose Fd never touches the
// socket's flags, and leaves the socket in blocking mode, as systemd passes
// sockets; each worker then sets the mode it needs.
//
// The flags live on the one open file description that the agent and every
// worker share. A File from net.Listener.File is marked to return a blocking
// descriptor: each Fd call, which os/exec makes for every ExtraFiles entry at
// every spawn, would clear O_NONBLOCK under the workers already serving. A Go
// worker then sits in accept4 where Close cannot reach it, and a Node worker
// can block its event loop in accept. os.NewFile of a blocking descriptor
// gives a File that is not pollable, whose Fd changes nothing.
func plainFile(f *os.File, name string) (*os.File, error) {
	defer f.Close()
	fd := int(f.Fd()) // the one flag change, before any worker exists
	if err := syscall.SetNonblock(fd, false); err != nil {
		return nil, fmt.Errorf("set blocking: %w", err)
	}
	dup, err := syscall.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("dup: %w", err)
	}
	syscall.CloseOnExec(dup)
	return os.NewFile(uintptr(dup), name), nil
}

// removeStaleUnix removes path if it is a unix socket nobody listens on.
func removeStaleUnix(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return &os.PathError{Op: "listen", Path: path, Err: errors.New("exists and is not a socket")}
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
		return &os.PathError{Op: "listen", Path: path, Err: syscall.EADDRINUSE}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Addrs returns the actual addresses (port 0 resolved; "unix:/path" for unix
// sockets), in spec order.
func (s *Sockets) Addrs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]string(nil), s.addrs...)
}

// Names returns the socket names as workers see them in LISTEN_FDNAMES.
func (s *Sockets) Names() []string { return append([]string(nil), s.names...) }

// Inodes returns each socket's inode, in spec order: what a worker's fstat of
// its fd 3, 4, … shows when that fd is the agent's socket.
func (s *Sockets) Inodes() []uint64 {
	out := make([]uint64, len(s.files))
	for ino, i := range s.inodes {
		out[i] = ino
	}
	return out
}

// Close closes every socket and removes the unix socket files this process
// created (adopted ones belong to systemd). Call it after Master.Shutdown.
func (s *Sockets) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, f := range s.files {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range s.unlinks {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.removeKeepLinksLocked())
	return errors.Join(errs...)
}

// isOurs reports whether inode is one of the listening sockets.
func (s *Sockets) isOurs(ino uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.inodes[ino]
	return ok
}
