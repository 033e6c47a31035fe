//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

var (
	// ErrBusy: Reload was called while another Reload of the same Master runs.
	// The call is refused, not queued: queueing is the caller's policy.
	ErrBusy = errors.New("reload already in progress")
	// ErrClosed: the Master was shut down.
	ErrClosed = errors.New("master is shut down")
	// ErrReloadFailed: the new generation did not take over; the previous one
	// (if any) was never stopped and keeps serving. Returned as *ReloadError.
	ErrReloadFailed = errors.New("reload failed")
	// ErrReadinessTimeout: the quorum was not ready within Readiness.Timeout.
	ErrReadinessTimeout = errors.New("readiness timeout")
	// ErrQuorumLost: so many new workers exited that the quorum cannot be met.
	ErrQuorumLost = errors.New("too many workers exited for the quorum")
	// ErrProbationFailed: a new worker died during the probation window.
	ErrProbationFailed = errors.New("worker died during probation")
	// ErrInvalidConfig: NewMaster was given a config it cannot run.
	ErrInvalidConfig = errors.New("invalid cluster config")
	// ErrInvalidSpec: a ListenSpec or GenerationSpec is unusable.
	ErrInvalidSpec = errors.New("invalid spec")
	// ErrNoSockets: OpenSockets got no specs and inherited no sockets.
	ErrNoSockets = errors.New("no sockets configured or inherited")
)

// SocketError is a listening socket that could not be bound: which one (the
// ListenSpec's name) and why, so a caller can point at its configuration.
type SocketError struct {
	Name string
	Err  error
}

func (e *SocketError) Error() string { return fmt.Sprintf("open socket %q: %v", e.Name, e.Err) }

func (e *SocketError) Unwrap() error { return e.Err }

// Verdicts: the one-line reason a worker failed, where the master can tell.
const (
	VerdictOwnPort      = "bound its own port instead of using LISTEN_FDS"
	VerdictExitedAtOnce = "exited at once"
	VerdictExitedEarly  = "exited before becoming ready"
	VerdictExitedReady  = "exited after becoming ready"
	VerdictNeverTouched = "never touched the inherited socket"
	VerdictNeverNotify  = "never sent READY=1"
	VerdictNotReady     = "not ready when the reload was abandoned"
	VerdictStartFailed  = "could not be started"
	VerdictNotFound     = "command could not be executed"
)

// WorkerFailure describes one worker of a failed generation.
type WorkerFailure struct {
	Worker     int      `json:"worker"`
	PID        int      `json:"pid"`
	ExitStatus string   `json:"exit_status"` // "exit status 1", "signal: killed", or "running" when it was stopped by the master
	Verdict    string   `json:"verdict"`     // one line: a Verdict* constant, possibly with detail after ": "
	LastLines  []string `json:"last_lines,omitempty"`
}

// ReloadError is the error of a failed Reload. errors.Is(err, ErrReloadFailed)
// holds, and so does errors.Is(err, Cause) (ErrReadinessTimeout,
// ErrQuorumLost, ErrProbationFailed, ErrClosed, or the ctx error).
type ReloadError struct {
	Generation int
	ReleaseID  string
	Cause      error
	After      time.Duration
	Workers    []WorkerFailure // failed workers, by worker id
}

func (e *ReloadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "reload generation %d", e.Generation)
	if e.ReleaseID != "" {
		fmt.Fprintf(&b, " (release %s)", e.ReleaseID)
	}
	fmt.Fprintf(&b, ": %v after %s", e.Cause, e.After.Round(time.Millisecond))
	for _, w := range e.Workers {
		fmt.Fprintf(&b, "; worker %d (pid %d, %s): %s", w.Worker, w.PID, w.ExitStatus, w.Verdict)
	}
	return b.String()
}

// Unwrap returns ErrReloadFailed and the cause.
func (e *ReloadError) Unwrap() []error { return []error{ErrReloadFailed, e.Cause} }
