package hooks

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(s string) { l.mu.Lock(); l.l = append(l.l, s); l.mu.Unlock() }
func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.l...)
}

func writeExec(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// gone waits until pid no longer runs (absent or a zombie).
func gone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:]); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d still running", pid)
}

func TestRunner_Run_orderEnvDir(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(t.TempDir(), "log")
	writeExec(t, filepath.Join(dir, "step.sh"), "#!/bin/sh\necho \"config2 $DEPLOY_STAGE $DEPLOY_RELEASE_ID $(pwd)\" >> "+log+"\n")
	writeExec(t, filepath.Join(dir, ".deploy/hooks/post-deploy/20-b"), "#!/bin/sh\necho file-b >> "+log+"\necho to-stderr >&2\n")
	writeExec(t, filepath.Join(dir, ".deploy/hooks/post-deploy/10-a"), "#!/bin/sh\necho file-a >> "+log+"\necho hello\n")
	writeExec(t, filepath.Join(dir, ".deploy/hooks/post-deploy/.hidden"), "#!/bin/sh\necho hidden >> "+log+"\n")
	if err := os.Mkdir(filepath.Join(dir, ".deploy/hooks/post-deploy/subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out lines
	r := &Runner{}
	err := r.Run(context.Background(), Run{
		Stage:    "post-deploy",
		Dir:      dir,
		Commands: [][]string{{"sh", "-c", "echo config1 >> " + log}, {"./step.sh"}},
		Env:      []string{"DEPLOY_RELEASE_ID=r42"},
		Output:   out.add,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	realDir, _ := filepath.EvalSymlinks(dir)
	want := "config1\nconfig2 post-deploy r42 " + realDir + "\nfile-a\nfile-b\n"
	if string(b) != want {
		t.Errorf("ran:\n%s\nwant:\n%s", b, want)
	}
	if got := strings.Join(out.all(), ","); got != "hello,to-stderr" {
		t.Errorf("output = %q, want hello,to-stderr", got)
	}
}

func TestRunner_Run_stopsAtFirstFailure(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "second-ran")
	var out lines
	err := (&Runner{}).Run(context.Background(), Run{
		Stage:    "pre-activate",
		Dir:      dir,
		Commands: [][]string{{"sh", "-c", "echo boom; exit 3"}, {"touch", marker}},
		Output:   out.add,
	})
	if err == nil {
		t.Fatal("Run succeeded, want exit status 3")
	}
	if got, want := err.Error(), "hook pre-activate [sh -c echo boom; exit 3]: exit status 3"; got != want {
		t.Errorf("err = %q, want %q", got, want)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("err %v does not wrap *exec.ExitError with code 3", err)
	}
	var he *Error
	if !errors.As(err, &he) || he.Stage != "pre-activate" {
		t.Errorf("err %v is not a *Error for pre-activate", err)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("second command ran after the first failed")
	}
	if got := out.all(); len(got) != 1 || got[0] != "boom" {
		t.Errorf("output = %q", got)
	}
}

func TestRunner_Run_timeoutKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pids := make(chan int, 4)
	r := &Runner{Timeout: 300 * time.Millisecond, Grace: 200 * time.Millisecond}
	start := time.Now()
	err := r.Run(context.Background(), Run{
		Stage: "post-deploy",
		Dir:   dir,
		// The child ignores SIGTERM, so only the SIGKILL after Grace stops it.
		Commands: [][]string{{"sh", "-c", `trap "" TERM; sleep 30 & echo $!; echo $$; wait`}},
		Output: func(l string) {
			if n, err := strconv.Atoi(l); err == nil {
				pids <- n
			}
		},
	})
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if got, want := err.Error(), `hook post-deploy [sh -c trap "" TERM; sleep 30 & echo $!; echo $$; wait]: timed out after 300ms`; got != want {
		t.Errorf("err = %q, want %q", got, want)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Run took %v", el)
	}
	close(pids)
	n := 0
	for pid := range pids {
		gone(t, pid)
		n++
	}
	if n != 2 {
		t.Fatalf("saw %d pids, want 2", n)
	}
}

func TestRunner_Run_leftoverChildrenKilled(t *testing.T) {
	dir := t.TempDir()
	pids := make(chan int, 1)
	start := time.Now()
	err := (&Runner{}).Run(context.Background(), Run{
		Stage:    "post-deploy",
		Dir:      dir,
		Commands: [][]string{{"sh", "-c", "sleep 30 & echo $!"}},
		Output: func(l string) {
			if n, err := strconv.Atoi(l); err == nil {
				pids <- n
			}
		},
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Run waited %v for a background child", el)
	}
	gone(t, <-pids)
}

func TestRunner_Run_ctxCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- (&Runner{}).Run(ctx, Run{
			Stage:    "on-failure",
			Dir:      t.TempDir(),
			Commands: [][]string{{"sh", "-c", "echo up; sleep 30"}},
			Output:   func(string) { close(started) },
		})
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if err := (&Runner{}).Run(ctx, Run{Stage: "on-failure", Dir: t.TempDir(), Commands: [][]string{{"true"}}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Run with a done ctx = %v, want context.Canceled", err)
	}
}

func TestRunner_Run_startErrors(t *testing.T) {
	tests := []struct {
		name string
		cmd  []string
		want string
	}{
		{name: "missing", cmd: []string{"./no-such-hook"}, want: "hook post-rollback [./no-such-hook]: "},
		{name: "empty", cmd: []string{}, want: "hook post-rollback []: empty command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := (&Runner{}).Run(context.Background(), Run{Stage: "post-rollback", Dir: t.TempDir(), Commands: [][]string{tt.cmd}})
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestRunner_Run_longLineSplit(t *testing.T) {
	var out lines
	err := (&Runner{}).Run(context.Background(), Run{
		Stage: "post-deploy", Dir: t.TempDir(),
		Commands: [][]string{{"sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo; echo end"}},
		Output:   out.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := out.all()
	total := 0
	for _, l := range got[:len(got)-1] {
		if len(l) > maxLine {
			t.Errorf("line of %d bytes", len(l))
		}
		total += len(l)
	}
	if total != 100000 || got[len(got)-1] != "end" {
		t.Errorf("got %d lines, %d x-bytes, last %q", len(got), total, got[len(got)-1])
	}
}

func TestFind(t *testing.T) {
	t.Run("none", func(t *testing.T) {
		got, err := Find(t.TempDir(), "post-deploy")
		if err != nil || got != nil {
			t.Fatalf("Find = %v, %v", got, err)
		}
	})
	t.Run("file", func(t *testing.T) {
		dir := t.TempDir()
		writeExec(t, filepath.Join(dir, ".deploy/hooks/pre-activate"), "#!/bin/sh\n")
		got, err := Find(dir, "pre-activate")
		if err != nil || len(got) != 1 || got[0][0] != "./.deploy/hooks/pre-activate" {
			t.Fatalf("Find = %v, %v", got, err)
		}
	})
	t.Run("not executable", func(t *testing.T) {
		dir := t.TempDir()
		writeExec(t, filepath.Join(dir, ".deploy/hooks/pre-activate/01"), "#!/bin/sh\n")
		if err := os.Chmod(filepath.Join(dir, ".deploy/hooks/pre-activate/01"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Find(dir, "pre-activate")
		if err == nil || !strings.Contains(err.Error(), "not executable") {
			t.Fatalf("err = %v, want not executable", err)
		}
		rerr := (&Runner{}).Run(context.Background(), Run{Stage: "pre-activate", Dir: dir})
		if rerr == nil || !strings.HasPrefix(rerr.Error(), "hook pre-activate [.deploy/hooks/pre-activate]: ") {
			t.Fatalf("Run err = %v", rerr)
		}
	})
	t.Run("symlink outside", func(t *testing.T) {
		dir := t.TempDir()
		outside := filepath.Join(t.TempDir(), "evil")
		writeExec(t, outside, "#!/bin/sh\n")
		if err := os.MkdirAll(filepath.Join(dir, ".deploy/hooks"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, filepath.Join(dir, ".deploy/hooks/post-deploy")); err != nil {
			t.Fatal(err)
		}
		_, err := Find(dir, "post-deploy")
		if err == nil || !strings.Contains(err.Error(), "outside the release") {
			t.Fatalf("err = %v, want outside the release", err)
		}
	})
	t.Run("bad stage", func(t *testing.T) {
		if _, err := Find(t.TempDir(), "../x"); err == nil {
			t.Fatal("Find accepted ../x")
		}
	})
}
