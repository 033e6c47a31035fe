package proctest

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Proc is a child process a test started: its output captured, in a process
// group of its own (so whatever it forks can be killed with it), waited for
// by exactly one goroutine, and, when the test ends, killed with its whole
// group and reaped. Its output goes to the test log if the test failed.
type Proc struct {
	Cmd  *exec.Cmd
	Out  *SyncBuffer
	done chan struct{}
	err  error
}

// Start starts cmd (Stdout, Stderr, Setpgid and WaitDelay are set here);
// name labels its output in the test log.
func Start(t testing.TB, name string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Cmd: cmd, Out: &SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.Out
	cmd.Stderr = p.Out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", cmd.Args, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.Out.String())
		}
	})
	return p
}

// Done is closed once the process has been waited for.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Output is what the process has written so far, stdout and stderr mixed.
func (p *Proc) Output() string { return p.Out.String() }

// ExpectExit0 waits up to within for the process to end, and wants status 0.
func (p *Proc) ExpectExit0(t testing.TB, within time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("%v still running after %v", p.Cmd.Args, within)
	}
	if p.err != nil {
		t.Fatalf("%v exited: %v; want status 0", p.Cmd.Args, p.err)
	}
}
