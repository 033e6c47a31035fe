package release

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"testing"
)

func TestStore_Lock(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	l, err := s.Lock("deploy", "abc")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Lock("rollback", "")
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock = %v, want ErrLocked", err)
	}
	want := regexp.MustCompile(`^lock ` + regexp.QuoteMeta(s.Root()) + `: release root ` + regexp.QuoteMeta(s.Root()) +
		fmt.Sprintf(` is locked by pid %d \(deploy abc, since \d\d:\d\d:\d\d\)$`, pidSelf()))
	if !want.MatchString(err.Error()) {
		t.Errorf("Lock error %q\n does not match %s", err, want)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release = %v", err)
	}
	l2, err := s.Lock("rollback", "")
	if err != nil {
		t.Fatalf("Lock after Release: %v", err)
	}
	l2.Release()
}

func TestStore_LockAcrossProcesses(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	h := startHelper(t, roleLock, rootEnv+"="+sb.root)
	h.expect(t, "LOCKED")
	_, err := s.Lock("deploy", "mine")
	want := fmt.Sprintf("is locked by pid %d (deploy abc, since ", h.cmd.Process.Pid)
	if !errors.Is(err, ErrLocked) || !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(err.Error()) {
		t.Fatalf("Lock while a helper holds it = %v, want ErrLocked with %q", err, want)
	}
	h.kill(t) // the kernel drops the lock with the process
	l, err := s.Lock("deploy", "mine")
	if err != nil {
		t.Fatalf("Lock after the holder died: %v", err)
	}
	l.Release()
}

func pidSelf() int { return os.Getpid() }
