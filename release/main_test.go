package release

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Helper roles: the test binary re-executed as a child process.
const (
	roleEnv  = "RELEASE_TEST_ROLE"
	rootEnv  = "RELEASE_TEST_ROOT"
	urlEnv   = "RELEASE_TEST_URL"
	idEnv    = "RELEASE_TEST_ID"
	stepEnv  = "RELEASE_TEST_STEP"
	roleLock = "hold-lock"
	roleRun  = "deploy"
)

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "":
		os.Exit(m.Run())
	case roleLock:
		helperHoldLock()
	case roleRun:
		helperDeploy()
	default:
		fmt.Fprintln(os.Stderr, "unknown role", os.Getenv(roleEnv))
		os.Exit(2)
	}
}

func helperFail(err error) {
	fmt.Println("ERROR", err)
	os.Exit(1)
}

// helperHoldLock takes the root's lock, says so, and holds it until its
// stdin closes.
func helperHoldLock() {
	s, err := Open(os.Getenv(rootEnv), Options{})
	if err != nil {
		helperFail(err)
	}
	l, err := s.Lock("deploy", "abc")
	if err != nil {
		helperFail(err)
	}
	fmt.Println("LOCKED")
	io.Copy(io.Discard, os.Stdin)
	l.Release()
	os.Exit(0)
}

// helperDeploy runs fetch → unpack → rename → activate → state write, and
// at the step named by stepEnv announces "STEP <name>" and blocks, so the
// test can SIGKILL it exactly there.
func helperDeploy() {
	want := os.Getenv(stepEnv)
	stepHook = func(name string) {
		if name == want {
			fmt.Println("STEP " + name)
			select {}
		}
	}
	s, err := Open(os.Getenv(rootEnv), Options{})
	if err != nil {
		helperFail(err)
	}
	l, err := s.Lock("deploy", os.Getenv(idEnv))
	if err != nil {
		helperFail(err)
	}
	from, _ := s.Current()
	id, err := s.Fetch(context.Background(), FetchRequest{URL: os.Getenv(urlEnv), ID: os.Getenv(idEnv)})
	if err != nil {
		helperFail(err)
	}
	if err := s.Activate(id); err != nil {
		helperFail(err)
	}
	if err := s.Record(Event{Op: "deploy", ID: id, From: from, Result: "ok"}); err != nil {
		helperFail(err)
	}
	l.Release()
	fmt.Println("DONE")
	os.Exit(0)
}

// helper is a running child process of the test binary.
type helper struct {
	cmd   *exec.Cmd
	lines chan string
	stdin io.WriteCloser
	done  chan error
}

func startHelper(t *testing.T, role string, env ...string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{roleEnv + "=" + role}, env...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, lines: make(chan string, 16), stdin: stdin, done: make(chan error, 1)}
	go func() { // owned by h: ends when the child's stdout closes
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
		h.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-h.done
	})
	return h
}

// expect waits for the child's next line and checks its prefix.
func (h *helper) expect(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			t.Fatalf("helper exited before printing %q", prefix)
		}
		if !strings.HasPrefix(l, prefix) {
			t.Fatalf("helper printed %q, want %q", l, prefix)
		}
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("helper did not print %q within 30s", prefix)
	}
	return ""
}

// kill SIGKILLs the child and waits until it is reaped.
func (h *helper) kill(t *testing.T) {
	t.Helper()
	h.cmd.Process.Kill()
	for range h.lines {
	}
	<-h.done
	h.done <- nil // for the cleanup
}
