//go:build linux

// Command go is handoff's Go example: an HTTP server on the listening socket
// the agent passes as fd 3 (systemd socket activation, read with
// activation.Listeners), with a graceful stop that never resets a keep-alive
// client.
//
// On SIGTERM or SIGINT (the agent's stop_signal) it
//  1. stops accepting: it closes its own copy of the listening socket; the
//     socket stays open in the agent, where the next generation accepts;
//  2. answers every request from then on, including the next one on a
//     keep-alive connection that was idle at the signal, with
//     `Connection: close`;
//  3. closes a connection only once it has been idle for a grace (1 s) after
//     the signal and no byte of a next request has arrived;
//  4. ends with http.Server.Shutdown under a deadline (10 s in all).
//
// Neither http.Server.Shutdown nor SetKeepAlivesEnabled(false) alone does
// this: both close idle keep-alive connections at once, so a client that
// sends its next request at that moment gets a reset or an EOF ("stale
// keep-alive"). HANDOFF_EXAMPLE_SHUTDOWN=default selects exactly that default
// (Shutdown at once), for comparison.
//
// Readiness: `listen` works unchanged (the Go runtime registers the
// listener, a dup of fd 3, in its epoll set); `notify` works too, since it
// sends READY=1 to NOTIFY_SOCKET once it serves.
//
// The body names the release that serves: "hello from $DEPLOY_RELEASE_ID\n".
// Without LISTEN_FDS it listens on 127.0.0.1:$PORT (8080), for development.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

const drainCap = 10 * time.Second // the whole stop takes at most this long

// idleGrace is how long an idle connection is kept after the stop signal:
// 1 s, or HANDOFF_IDLE_GRACE_MS.
var idleGrace = graceFromEnv()

func graceFromEnv() time.Duration {
	if ms, err := strconv.Atoi(os.Getenv("HANDOFF_IDLE_GRACE_MS")); err == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return time.Second
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("Serving failed", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger) error {
	// Catch the stop signal before serving the first request: a signal
	// that arrives before Notify would kill the process outright.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)

	ln, err := listener()
	if err != nil {
		return err
	}
	release := os.Getenv("DEPLOY_RELEASE_ID")
	if release == "" {
		release = "dev"
	}

	d := newDrainer(ln)
	srv := &http.Server{
		Handler: d.handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintf(w, "hello from %s\n", release)
		})),
		ConnState:         d.connState,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(d) }()
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("Notifying readiness failed", "err", err)
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case sig := <-sigs:
		log.Info("Stopping", "signal", sig.String())
	}

	ctx, cancel := context.WithTimeout(context.Background(), drainCap)
	defer cancel()
	if os.Getenv("HANDOFF_EXAMPLE_SHUTDOWN") != "default" {
		d.stop()
		if err := <-served; err != nil && !d.isStopped(err) {
			return fmt.Errorf("serve: %w", err)
		}
		d.drainIdle(ctx)
	}
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// listener returns the first socket passed by socket activation, or a
// listener on 127.0.0.1:$PORT when the process was not socket-activated.
func listener() (net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	for _, ln := range lns {
		if ln != nil {
			return ln, nil
		}
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return nil, fmt.Errorf("PORT %q: %w", port, err)
	}
	return net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
}

// drainer wraps the listener: it counts the bytes read on each connection and
// tracks each connection's state, so that after stop it closes a connection
// only when it has been idle past idleGrace with nothing new to read.
type drainer struct {
	net.Listener
	stopping atomic.Bool

	mu        sync.Mutex
	stoppedAt time.Time
	conns     map[net.Conn]*connInfo // keyed by the *countingConn handed to http.Server
}

type connInfo struct {
	idle      bool
	idleSince time.Time
	readMark  int64 // bytes read when it became idle
}

type countingConn struct {
	net.Conn
	read atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func newDrainer(ln net.Listener) *drainer {
	return &drainer{Listener: ln, conns: make(map[net.Conn]*connInfo)}
}

func (d *drainer) Accept() (net.Conn, error) {
	c, err := d.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c}, nil
}

func (d *drainer) handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

func (d *drainer) connState(c net.Conn, s http.ConnState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch s {
	case http.StateActive:
		d.conns[c] = &connInfo{}
	case http.StateNew, http.StateIdle:
		// A new connection counts as idle until its first byte arrives.
		var mark int64
		if cc, ok := c.(*countingConn); ok {
			mark = cc.read.Load()
		}
		d.conns[c] = &connInfo{idle: true, idleSince: time.Now(), readMark: mark}
	case http.StateHijacked, http.StateClosed:
		delete(d.conns, c)
	}
}

// stop makes every later response carry Connection: close and closes the
// listener, so that Serve returns.
func (d *drainer) stop() {
	d.mu.Lock()
	d.stoppedAt = time.Now()
	d.mu.Unlock()
	d.stopping.Store(true)
	d.Listener.Close()
}

func (d *drainer) isStopped(err error) bool {
	return d.stopping.Load() && errors.Is(err, net.ErrClosed)
}

// drainIdle closes each connection once it has been idle for idleGrace after
// the stop, and returns when none is left or ctx is done.
func (d *drainer) drainIdle(ctx context.Context) {
	tick := time.NewTicker(idleGrace / 10)
	defer tick.Stop()
	for {
		if d.closeIdle() == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// closeIdle closes the connections idle past the grace and reports how many
// connections are left open.
func (d *drainer) closeIdle() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for c, ci := range d.conns {
		if !ci.idle {
			continue
		}
		if cc, ok := c.(*countingConn); ok && (cc.read.Load() != ci.readMark || unread(cc.Conn) != 0) {
			continue // the next request is arriving (read, or waiting in the kernel)
		}
		since := ci.idleSince
		if d.stoppedAt.After(since) {
			since = d.stoppedAt
		}
		if now.Sub(since) < idleGrace {
			continue
		}
		c.Close()
		delete(d.conns, c)
	}
	return len(d.conns)
}

// unread is how many bytes wait in c's receive queue, not yet read by the
// server (SIOCINQ); -1 when it cannot be told, which keeps c open. Closing a
// socket with unread bytes sends a reset instead of a FIN.
func unread(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	n := -1
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}
