//go:build linux

package cluster

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"time"
)

// Readiness says when a new worker counts as ready.
type Readiness struct {
	// Mode is "listen" (default): some process in the worker's process tree
	// has one of the inherited listening sockets in an epoll set or is blocked
	// in accept(2) on it; "notify": READY=1 arrived on the worker's
	// NOTIFY_SOCKET, from the worker or any descendant; "delay": the worker
	// stayed alive for Delay.
	Mode string
	// Timeout bounds the wait for the quorum. Default 60s.
	Timeout time.Duration
	// Quorum is how many new workers must be ready. 0 means all.
	Quorum int
	// Delay is the alive time of mode "delay". Default 2s.
	Delay time.Duration
	// Probation is how long the old generation keeps serving beside the new
	// one once the quorum is ready; a new worker that exits in the window
	// fails the reload. Default 0.
	Probation time.Duration
	// HTTP, with HTTP.Path set, adds to every mode: the worker itself
	// answered GET HTTP.Path with an accepted status (httpcheck.go).
	HTTP HTTPCheck
}

// Readiness modes.
const (
	ModeListen = "listen"
	ModeNotify = "notify"
	ModeDelay  = "delay"
)

// Config describes the workers of a Master. Zero values take the defaults
// given per field.
type Config struct {
	// Command is the worker's argv, run in the generation's directory.
	// Required.
	Command []string
	// Workers is the number of processes per generation. Default
	// runtime.NumCPU().
	Workers int
	// Env holds extra KEY=VALUE pairs for the workers, on top of the master's
	// own environment. LISTEN_*, NOTIFY_SOCKET, DEPLOY_RELEASE_ID,
	// DEPLOY_RELEASE_DIR, DEPLOY_ROOT and WORKER_ID are always set by the
	// master and cannot be overridden.
	Env []string
	// StopSignal is sent to each worker's process group to retire it.
	// Default SIGTERM.
	StopSignal syscall.Signal
	// DrainTimeout is how long a retiring worker's process group may take to
	// exit before it gets SIGKILL. Default 30s. It also bounds a request
	// that connection rescue forwards.
	DrainTimeout time.Duration
	// RescueLinger is how long connection rescue holds a connection that a
	// stopping worker let go of with nothing to read, for a request on its
	// way, before it closes it as the worker meant to. A client that waits
	// for the close to end a response (HTTP/1.0) waits this much longer.
	// Default DefaultRescueLinger; ListenSpec.NoRescue turns rescue off.
	RescueLinger time.Duration
	Readiness    Readiness
	// BackoffMin and BackoffMax bound the delay before a crashed worker of the
	// serving generation is restarted: it doubles per consecutive crash and
	// resets once a worker stayed up longer than BackoffMax (at least 1s).
	// Default 100ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// ShimPath is a binary whose main calls RunShimIfRequested first.
	// Default os.Executable().
	ShimPath string
	// Logger receives master events and every worker output line.
	// nil discards.
	Logger *slog.Logger
	// ListenCheck is the period of the listen watch, which notices a
	// listening socket shut down by a worker or a unix socket path removed
	// and restores it (listenwatch.go). Default DefaultListenCheck; negative
	// turns the watch off.
	ListenCheck time.Duration
	// OnSocketLost, if set, is called from the watch for each lost socket
	// once it is restored. It must not block for long; when l.NeedsReload(),
	// the caller should Reload (Stale says whether one is still needed).
	OnSocketLost func(l SocketLost)
}

// Defaults of Config (with DefaultRescueLinger and DefaultListenCheck), in
// one place: the agent's config file defaults to them.
const (
	DefaultStopSignal   = syscall.SIGTERM
	DefaultDrainTimeout = 30 * time.Second
	DefaultReadyTimeout = 60 * time.Second // Readiness.Timeout
	DefaultReadyDelay   = 2 * time.Second  // Readiness.Delay
	DefaultBackoffMin   = 100 * time.Millisecond
	DefaultBackoffMax   = 30 * time.Second
)

// DefaultWorkers is Config.Workers's default: the number of CPUs.
func DefaultWorkers() int { return runtime.NumCPU() }

func (c Config) withDefaults() (Config, error) {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return c, fmt.Errorf("%w: empty command", ErrInvalidConfig)
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers()
	}
	if c.Workers < 0 {
		return c, fmt.Errorf("%w: workers %d", ErrInvalidConfig, c.Workers)
	}
	if c.StopSignal == 0 {
		c.StopSignal = DefaultStopSignal
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.DrainTimeout < 0 {
		return c, fmt.Errorf("%w: drain timeout %s", ErrInvalidConfig, c.DrainTimeout)
	}
	if c.RescueLinger == 0 {
		c.RescueLinger = DefaultRescueLinger
	}
	if c.RescueLinger < 0 {
		return c, fmt.Errorf("%w: rescue linger %s", ErrInvalidConfig, c.RescueLinger)
	}
	r := &c.Readiness
	if r.Mode == "" {
		r.Mode = ModeListen
	}
	switch r.Mode {
	case ModeListen, ModeNotify, ModeDelay:
	default:
		return c, fmt.Errorf("%w: readiness mode %q (want listen, notify or delay)", ErrInvalidConfig, r.Mode)
	}
	if r.Timeout == 0 {
		r.Timeout = DefaultReadyTimeout
	}
	if r.Delay == 0 {
		r.Delay = DefaultReadyDelay
	}
	if r.Timeout < 0 || r.Delay < 0 || r.Probation < 0 {
		return c, fmt.Errorf("%w: negative readiness duration", ErrInvalidConfig)
	}
	h, err := r.HTTP.withDefaults()
	if err != nil {
		return c, err
	}
	r.HTTP = h
	if r.Quorum == 0 {
		r.Quorum = c.Workers
	}
	if r.Quorum < 0 || r.Quorum > c.Workers {
		return c, fmt.Errorf("%w: quorum %d with %d workers", ErrInvalidConfig, r.Quorum, c.Workers)
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMin < 0 || c.BackoffMax < c.BackoffMin {
		return c, fmt.Errorf("%w: backoff %s..%s", ErrInvalidConfig, c.BackoffMin, c.BackoffMax)
	}
	if c.ShimPath == "" {
		p, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("%w: shim path: %v", ErrInvalidConfig, err)
		}
		c.ShimPath = p
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ListenCheck == 0 {
		c.ListenCheck = DefaultListenCheck
	}
	return c, nil
}
