//go:build linux

package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrAgentRunning means a live agent answers on the control socket path.
var ErrAgentRunning = errors.New("another agent is serving this control socket")

const writeTimeout = 30 * time.Second

// Server serves the control socket: one goroutine per connection,
// all owned by the server and waited for by Close.
type Server struct {
	ln         *net.UnixListener
	path       string
	allowMu    sync.Mutex // guards allowUIDs and allowGIDs
	allowUIDs  []int
	allowGIDs  []int
	log        *slog.Logger
	handle     func(Request) *Log // never nil result
	reqTimeout time.Duration      // how long a client may take to send its request

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed chan struct{}
	once   sync.Once
}

// Listen binds the control socket at path with mode 0660 (group set
// to gid when gid >= 0). A socket file left by a dead agent is replaced; one
// a live agent answers on is refused with ErrAgentRunning.
func Listen(path string, gid int, log *slog.Logger) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: %w", path, ErrAgentRunning)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("control socket %s: checking for a live agent: %w", path, err)
		}
		log.Warn("Replacing stale control socket", "path", path)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			log.Warn("Cannot give the control socket to the allowed group", "path", path, "gid", gid, "err", err)
		}
	}
	return ln, nil
}

func NewServer(ln *net.UnixListener, allowUIDs, allowGIDs []int, log *slog.Logger, handle func(Request) *Log) *Server {
	return &Server{
		ln: ln, path: ln.Addr().String(), allowUIDs: allowUIDs, allowGIDs: allowGIDs,
		log: log, handle: handle, reqTimeout: RequestTimeout, conns: map[net.Conn]struct{}{}, closed: make(chan struct{}),
	}
}

// SetAllowed replaces the allowed uids and gids for the connections
// accepted from now on.
func (s *Server) SetAllowed(allowUIDs, allowGIDs []int) {
	s.allowMu.Lock()
	s.allowUIDs, s.allowGIDs = allowUIDs, allowGIDs
	s.allowMu.Unlock()
}

// Serve accepts until Close. It returns nil after Close.
func (s *Server) Serve() error {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.closed:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				s.log.Error("Control socket accept", "err", err)
				select {
				case <-time.After(100 * time.Millisecond):
				case <-s.closed:
					return nil
				}
				continue
			}
			return fmt.Errorf("control socket accept: %w", err)
		}
		s.mu.Lock()
		select {
		case <-s.closed:
			s.mu.Unlock()
			c.Close()
			return nil
		default:
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// Close stops accepting, unblocks every connection and waits for their
// goroutines. Operations started by them continue.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		close(s.closed)
		for c := range s.conns {
			c.SetDeadline(time.Now())
		}
		s.mu.Unlock()
		s.ln.Close()
	})
	s.wg.Wait()
	return nil
}

// peerCred returns the connecting process's credentials.
func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, serr
}

// supplementaryGroups reads the peer's groups from /proc; empty on error.
func supplementaryGroups(pid int32) []int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var out []int
			for _, f := range strings.Fields(rest) {
				if n, err := strconv.Atoi(f); err == nil {
					out = append(out, n)
				}
			}
			return out
		}
	}
	return nil
}

// allowed decides whether a peer may use the control socket: root and the
// agent's own uid always; otherwise a uid in allowUIDs, or a primary or
// supplementary gid in allowGIDs.
func (s *Server) allowed(cred *unix.Ucred) bool {
	s.allowMu.Lock()
	uids, gids := s.allowUIDs, s.allowGIDs
	s.allowMu.Unlock()
	uid, gid := int(cred.Uid), int(cred.Gid)
	if uid == 0 || uid == os.Getuid() || slices.Contains(uids, uid) || slices.Contains(gids, gid) {
		return true
	}
	if len(gids) == 0 {
		return false
	}
	for _, g := range supplementaryGroups(cred.Pid) {
		if slices.Contains(gids, g) {
			return true
		}
	}
	return false
}

func (s *Server) serveConn(c *net.UnixConn) {
	enc := json.NewEncoder(c)
	write := func(m Message) error {
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		return enc.Encode(m)
	}
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warn("Control peer credentials", "err", err)
		write(Message{Type: TypeResult, Time: time.Now(), Code: CodeInternal, Error: "cannot read peer credentials: " + err.Error()})
		return
	}
	if !s.allowed(cred) {
		s.log.Warn("Refused control connection", "uid", cred.Uid, "gid", cred.Gid, "pid", cred.Pid)
		write(Message{Type: TypeResult, Time: time.Now(), Code: CodeForbidden,
			Error: fmt.Sprintf("uid %d (gid %d) may not use %s: not root, not the agent's uid, not in [control] allow_uids or allow_gids", cred.Uid, cred.Gid, s.path)})
		return
	}

	c.SetReadDeadline(time.Now().Add(s.reqTimeout))
	var req Request
	dec := json.NewDecoder(bufio.NewReader(io.LimitReader(c, MaxRequestBytes)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		msg := "bad request: " + err.Error()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			msg = fmt.Sprintf("bad request: no request within %s", s.reqTimeout)
		} else if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			msg = fmt.Sprintf("bad request: incomplete or larger than %d bytes", MaxRequestBytes)
		}
		s.log.Warn("Bad control request", "uid", cred.Uid, "err", err)
		write(Message{Type: TypeResult, Time: time.Now(), Code: CodeUsage, Error: msg})
		return
	}
	c.SetReadDeadline(time.Time{})
	s.log.Info("Control request", "op", req.Op, "uid", cred.Uid, "pid", cred.Pid)
	l := s.handle(req)
	if err := l.Follow(s.closed, write); err != nil {
		s.log.Info("Control client left; the operation goes on", "op", req.Op, "err", err)
	}
}
