// Command go is the Go server of handoff's compatibility suite, at Go's own
// default stop: on SIGTERM, http.Server.Shutdown (stop accepting, close idle
// connections, wait for the active ones). It takes its listener the systemd
// way (LISTEN_FDS: fd 3) and nothing else of handoff.
//
// COMPAT_PROTO picks what it serves on that socket:
//   - "http" (default): GET / answers "hello from $DEPLOY_RELEASE_ID\n", any
//     other path "hello from $DEPLOY_RELEASE_ID PATH\n" (so a client can tell
//     responses apart, as pipelining needs);
//   - "tls": the same over TLS, with cert.pem and key.pem from the working
//     directory;
//   - "line": a line protocol on raw TCP: each line is answered with
//     "$DEPLOY_RELEASE_ID: LINE\n"; on SIGTERM it stops accepting, closes
//     idle connections, and closes each busy one after its current answer
//     (as Shutdown does for HTTP).
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
)

func main() {
	l, err := inherited()
	if err != nil {
		log.Fatal(err)
	}
	release := os.Getenv("DEPLOY_RELEASE_ID")
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	switch proto := os.Getenv("COMPAT_PROTO"); proto {
	case "", "http", "tls":
		serveHTTP(l, release, proto == "tls", stop)
	case "line":
		serveLines(l, release, stop)
	default:
		log.Fatalf("COMPAT_PROTO %q: want http, tls or line", proto)
	}
}

// inherited returns the listening socket passed as fd 3 (LISTEN_FDS=1,
// LISTEN_PID = our pid).
func inherited() (net.Listener, error) {
	if pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID")); pid != os.Getpid() || os.Getenv("LISTEN_FDS") != "1" {
		return nil, errors.New("listen: no socket passed (LISTEN_FDS=1, LISTEN_PID=our pid)")
	}
	f := os.NewFile(3, "listen")
	l, err := net.FileListener(f)
	f.Close()
	return l, err
}

func serveHTTP(l net.Listener, release string, tls bool, stop <-chan os.Signal) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == "/" {
			fmt.Fprintf(w, "hello from %s\n", release)
			return
		}
		fmt.Fprintf(w, "hello from %s %s\n", release, r.URL.Path)
	})}
	done := make(chan error, 1)
	go func() {
		if tls {
			done <- srv.ServeTLS(l, "cert.pem", "key.pem")
		} else {
			done <- srv.Serve(l)
		}
	}()
	select {
	case err := <-done:
		log.Fatal(err)
	case <-stop:
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
	<-done
}

// lineServer tracks its connections so that a stop closes the idle ones.
type lineServer struct {
	release  string
	wg       sync.WaitGroup // one per connection handler
	mu       sync.Mutex     // guards stopping and idle
	stopping bool
	idle     map[net.Conn]bool // every open connection: true while it waits for its next line
}

func serveLines(l net.Listener, release string, stop <-chan os.Signal) {
	s := &lineServer{release: release, idle: map[net.Conn]bool{}}
	go func() {
		<-stop
		l.Close()
		s.mu.Lock()
		s.stopping = true
		for c, idle := range s.idle {
			if idle {
				c.Close()
			}
		}
		s.mu.Unlock()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		// A new connection is not idle until its first answer (as
		// Shutdown treats StateNew): one accepted as the stop began gets
		// that answer, then is closed.
		s.mu.Lock()
		s.idle[c] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
	s.wg.Wait()
}

func (s *lineServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.idle, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		s.mu.Lock()
		s.idle[c] = false
		s.mu.Unlock()
		if _, err := fmt.Fprintf(c, "%s: %s", s.release, line); err != nil {
			return
		}
		s.mu.Lock()
		stopping := s.stopping
		s.idle[c] = !stopping
		s.mu.Unlock()
		if stopping {
			return
		}
	}
}
