//go:build linux

package release

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const lockFile = "lock"

// Lock is a held lock on a release root (flock(2) on root/.agent/lock).
// The kernel drops it when the process dies, so a crash never leaves the
// root locked.
type Lock struct {
	f    *os.File
	once sync.Once
	err  error
}

// Lock takes the root's lock without blocking, for one mutation (op, id are
// written into the lock file for whoever finds it taken). If another holder
// has it (another process, or another Lock in this one), the error wraps
// ErrLocked and reads
//
//	lock /x: release root /x is locked by pid 4242 (deploy abc, since 12:00:01)
func (s *Store) Lock(op, id string) (*Lock, error) {
	path := filepath.Join(s.root, agentDir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, &Error{Op: "lock", Subject: s.root, Err: err}
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &Error{Op: "lock", Subject: s.root, Err: reason(ErrLocked, "release root "+s.root+" is locked by "+readHolder(path))}
		}
		return nil, &Error{Op: "lock", Subject: s.root, Err: err}
	}
	info := fmt.Sprintf("pid=%d op=%s id=%s since=%s\n", os.Getpid(), op, id, time.Now().UTC().Format(time.RFC3339))
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(info), 0)
	}
	return &Lock{f: f}, nil
}

// Release drops the lock. It is idempotent; later calls return the first
// call's result.
func (l *Lock) Release() error {
	l.once.Do(func() {
		_ = l.f.Truncate(0)
		l.err = l.f.Close() // closing the last fd drops the flock
	})
	return l.err
}

// readHolder renders the holder line of a lock file:
// "pid 4242 (deploy abc, since 12:00:01)".
func readHolder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "another process (holder not yet recorded)"
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	pid, err := strconv.Atoi(kv["pid"])
	if err != nil {
		return "another process (holder unreadable)"
	}
	what := kv["op"]
	if kv["id"] != "" {
		what += " " + kv["id"]
	}
	since := kv["since"]
	if t, err := time.Parse(time.RFC3339, since); err == nil {
		since = t.Local().Format("15:04:05")
	}
	return fmt.Sprintf("pid %d (%s, since %s)", pid, what, since)
}
