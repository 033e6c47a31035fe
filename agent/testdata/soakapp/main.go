// Command soakapp is the soak test's worker: as small and as fast to start
// and to stop as a real server gets. It serves "hello from
// $DEPLOY_RELEASE_ID" on the listening socket inherited as fd 3. On SIGTERM
// it stops accepting, answers every further request with Connection: close,
// closes a connection once it has been idle for idleGrace with nothing
// waiting to be read (so a client about to reuse it is answered, not reset),
// and exits as soon as no connection is left (at most after drainCap). A
// connection that has not yet shown its first request is never closed
// early: on a loaded machine the server may take longer than idleGrace to
// read a request that has already arrived, and closing a socket with unread
// bytes sends a reset.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	idleGrace = 50 * time.Millisecond
	drainCap  = 5 * time.Second
)

type connInfo struct {
	state http.ConnState
	since time.Time
}

func main() {
	l, err := net.FileListener(os.NewFile(3, "listen"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "soakapp: no listening socket on fd 3:", err)
		os.Exit(1)
	}
	id := os.Getenv("DEPLOY_RELEASE_ID")
	var (
		mu       sync.Mutex
		conns    = map[net.Conn]connInfo{}
		stopping bool
	)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			s := stopping
			mu.Unlock()
			if s {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprintf(w, "hello from %s\n", id)
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			if st == http.StateClosed || st == http.StateHijacked {
				delete(conns, c)
				return
			}
			conns[c] = connInfo{st, time.Now()}
		},
	}
	served := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		mu.Lock()
		stopping = true
		mu.Unlock()
		l.Close()
		// Serve registers each connection it accepts (StateNew) before it
		// calls Accept again: once it has returned, conns holds every
		// connection there will ever be. Counting earlier could exit under
		// a connection just accepted, with its request unread: a reset.
		<-served
		deadline := time.Now().Add(drainCap)
		for time.Now().Before(deadline) {
			mu.Lock()
			for c, ci := range conns {
				if ci.state == http.StateIdle && time.Since(ci.since) >= idleGrace && unread(c) == 0 {
					c.Close()
				}
			}
			n := len(conns)
			mu.Unlock()
			if n == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		os.Exit(0)
	}()
	srv.Serve(l)
	close(served)
	select {} // the stop goroutine exits
}

// unread is how many bytes wait in c's receive queue (SIOCINQ); -1 when it
// cannot be told, which keeps the connection open.
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
