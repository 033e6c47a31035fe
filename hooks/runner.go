//go:build linux

package hooks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Stages are the hook stages the agent runs, in no particular order.
var Stages = []string{"pre-activate", "post-deploy", "post-rollback", "on-failure"}

// ErrTimeout is wrapped by the error of a command that ran past Runner.Timeout.
var ErrTimeout = errors.New("timed out")

// DefaultTimeout is the per-command timeout when Runner.Timeout is zero.
const DefaultTimeout = 5 * time.Minute

// DefaultGrace is how long a process group has between SIGTERM and SIGKILL
// when Runner.Grace is zero.
const DefaultGrace = 5 * time.Second

const maxLine = 64 << 10

// Runner runs hook stages. The zero value is ready to use.
type Runner struct {
	Timeout time.Duration // per command; 0 means DefaultTimeout
	Grace   time.Duration // SIGTERM to SIGKILL on timeout or ctx end; 0 means DefaultGrace
	Logger  *slog.Logger  // nil discards
}

// Run is one stage to run.
type Run struct {
	Stage    string            // "pre-activate", "post-deploy", "post-rollback", "on-failure"
	Dir      string            // working directory: the release directory
	Commands [][]string        // from config; then executables at Dir/.deploy/hooks/<Stage>
	Env      []string          // DEPLOY_* variables, appended to os.Environ()
	Output   func(line string) // each output line; may be nil
}

// Error is the error of one hook command.
type Error struct {
	Stage   string
	Command []string
	Err     error // *exec.ExitError, ErrTimeout (wrapped), ctx.Err(), or a start error
}

func (e *Error) Error() string {
	return fmt.Sprintf("hook %s [%s]: %v", e.Stage, strings.Join(e.Command, " "), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Run runs the stage's configured commands and then the release's own hook
// executables, stopping at the first failure. A stage with no commands at all
// succeeds.
func (r *Runner) Run(ctx context.Context, run Run) error {
	found, err := Find(run.Dir, run.Stage)
	if err != nil {
		return &Error{Stage: run.Stage, Command: []string{".deploy/hooks/" + run.Stage}, Err: err}
	}
	cmds := append(append([][]string(nil), run.Commands...), found...)
	for _, argv := range cmds {
		if len(argv) == 0 || argv[0] == "" {
			return &Error{Stage: run.Stage, Command: argv, Err: errors.New("empty command")}
		}
		if err := r.runOne(ctx, run, argv); err != nil {
			return &Error{Stage: run.Stage, Command: argv, Err: err}
		}
	}
	return nil
}

// Find lists the executables a release carries for stage at
// dir/.deploy/hooks/<stage>: nil when there is none, the file itself when it
// is a file, or the executable entries of the directory in lexical order.
// A non-executable file, or a path that resolves outside dir, is an error.
func Find(dir, stage string) ([][]string, error) {
	if stage == "" || strings.ContainsAny(stage, `/\`) || stage == "." || stage == ".." {
		return nil, fmt.Errorf("invalid stage %q", stage)
	}
	rel := ".deploy/hooks/" + stage
	p := dir + "/" + rel
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := inside(dir, p); err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		if err := executable(p, fi); err != nil {
			return nil, err
		}
		return [][]string{{"./" + rel}}, nil
	}
	entries, err := os.ReadDir(p) // sorted by name
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		ep := p + "/" + e.Name()
		efi, err := os.Stat(ep)
		if err != nil {
			return nil, err
		}
		if efi.IsDir() {
			continue
		}
		if err := inside(dir, ep); err != nil {
			return nil, err
		}
		if err := executable(ep, efi); err != nil {
			return nil, err
		}
		out = append(out, []string{"./" + rel + "/" + e.Name()})
	}
	return out, nil
}

func executable(p string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", p)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s: not executable", p)
	}
	return nil
}

// inside reports an error when p resolves to a path outside dir.
func inside(dir, p string) error {
	rd, err := evalAbs(dir)
	if err != nil {
		return err
	}
	rp, err := evalAbs(p)
	if err != nil {
		return err
	}
	if rp != rd && !strings.HasPrefix(rp, rd+"/") {
		return fmt.Errorf("%s: resolves outside the release (%s)", p, rp)
	}
	return nil
}

func (r *Runner) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// limits are the timeout and grace in effect.
func (r *Runner) limits() (timeout, grace time.Duration) {
	timeout, grace = r.Timeout, r.Grace
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if grace <= 0 {
		grace = DefaultGrace
	}
	return timeout, grace
}

func (r *Runner) runOne(ctx context.Context, run Run, argv []string) error {
	timeout, grace := r.limits()
	log := r.logger().With("stage", run.Stage, "command", strings.Join(argv, " "))
	if err := ctx.Err(); err != nil {
		return err
	}
	tctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("%w after %s", ErrTimeout, timeout))
	defer cancel()
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("pipe: %w", err)
	}
	cmd := exec.CommandContext(tctx, argv[0], argv[1:]...)
	cmd.Dir = run.Dir
	cmd.Env = append(append(os.Environ(), run.Env...), "DEPLOY_STAGE="+run.Stage)
	// Output goes to a pipe of ours, an *os.File: Wait does not wait for
	// it, so a descendant holding it open cannot hold Wait.
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// On timeout or when ctx ends, the whole group gets SIGTERM; a leader
	// still there after grace gets SIGKILL from Wait, and the rest of the
	// group below.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = grace
	start := time.Now()
	err = cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return err
	}
	pgid := cmd.Process.Pid
	log.Info("Running hook", "pid", pgid)
	lines := make(chan struct{})
	go func() { // owned by runOne: it waits on lines before returning
		defer close(lines)
		readLines(pr, func(line string) {
			log.Info("Hook output", "line", line)
			if run.Output != nil {
				run.Output(line)
			}
		})
	}()
	werr := cmd.Wait()
	// Nothing the hook started outlives it; this also frees the output pipe.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-lines:
	case <-time.After(grace):
		// A descendant left the group (setsid) and still holds the pipe.
		log.Warn("Hook descendant still holds its output open; not waiting for it")
	}
	pr.Close()
	<-lines
	return hookResult(ctx, tctx, log, werr, start)
}

// hookResult is the outcome of a hook: ctx's error when it ended, the
// timeout when that fired, else Wait's error.
func hookResult(ctx, tctx context.Context, log *slog.Logger, werr error, start time.Time) error {
	var cause error
	if ctx.Err() != nil {
		cause = ctx.Err()
	} else if tctx.Err() != nil {
		cause = context.Cause(tctx)
	}
	switch {
	case cause != nil:
		log.Warn("Hook stopped", "reason", cause, "elapsed", time.Since(start))
		return cause
	case werr != nil:
		log.Warn("Hook failed", "err", werr, "elapsed", time.Since(start))
		return werr
	}
	log.Info("Hook done", "elapsed", time.Since(start))
	return nil
}

// readLines calls f for each line of r, splitting lines longer than maxLine.
func readLines(r io.Reader, f func(string)) {
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			f(strings.TrimRight(string(line), "\r\n"))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func evalAbs(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(a)
}
