package cluster

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Worker modes for connection rescue: servers at their own default stop,
// with none of the care of serve.
const (
	modeCloseIdle   = "close-idle"    // net/http; SIGTERM → stop accepting, close idle keep-alive connections at once, finish the rest (Node's server.close())
	modeShutdownNow = "shutdown-now"  // net/http; SIGTERM → Server.Shutdown, which closes idle keep-alive connections at once and drops a request it reads once stopping
	modeDieOnTerm   = "die-on-term"   // net/http; no SIGTERM handler: dies on the signal, mid-request or not
	modeLine        = "line"          // a line protocol ("ping" → "pong"); SIGTERM closes every connection at once
	modeTLS         = "tls"           // net/http over TLS (HELPER_CERT, HELPER_KEY); SIGTERM → Server.Shutdown
	modeCloseOnly   = "close-only"    // accept(2) on fd 3, one response a connection, then close(2) alone (no FIN while a copy is held); SIGTERM → exit between connections
	modeServeOnTerm = "serve-on-term" // net/http; SIGTERM changes nothing: it serves keep-alive until killed
)

// serveRude runs one of the modes above on fd 3. Its HTTP handler answers
// body and the request path; path /slow sleeps HELPER_SLEEP first.
func serveRude(mode, body string) int {
	sig := make(chan os.Signal, 1)
	if mode != modeDieOnTerm {
		signal.Notify(sig, syscall.SIGTERM)
	}
	if mode == modeCloseOnly {
		return serveCloseOnly(body, sig)
	}
	ls, err := activation.Listeners()
	if err != nil || len(ls) == 0 {
		fmt.Fprintln(os.Stderr, "no inherited sockets:", err)
		return 2
	}
	ln := ls[0]
	if mode == modeLine {
		return serveLines(ln, sig)
	}
	if mode == modeTLS {
		cert, err := tls.LoadX509KeyPair(os.Getenv("HELPER_CERT"), os.Getenv("HELPER_KEY"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "tls:", err)
			return 2
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
	slow, _ := time.ParseDuration(os.Getenv("HELPER_SLEEP"))
	var open sync.WaitGroup // connections not closed yet
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			daemon.SdNotify(false, "STATUS=in /slow")
			time.Sleep(slow)
		}
		fmt.Fprint(w, body+" "+r.URL.Path)
	}), ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Done()
		}
	}}
	go srv.Serve(ln)
	fmt.Println("serving", mode)
	<-sig
	if mode == modeServeOnTerm {
		select {}
	}
	if mode == modeCloseIdle {
		ln.Close()
		srv.SetKeepAlivesEnabled(false) // closes idle connections now
		open.Wait()
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	return 0
}

// serveCloseOnly answers one request a connection, as HTTP/1.0 servers do:
// the response ends with close(2), with no shutdown(2). After the signal it
// exits between connections, once none waits for it.
func serveCloseOnly(body string, sig chan os.Signal) int {
	var stopping atomic.Bool
	go func() {
		<-sig
		stopping.Store(true)
	}()
	// Every worker polls the same listener and one wins each accept; the
	// others must get EAGAIN, not block in accept(2) past the signal.
	// Accepted sockets do not inherit O_NONBLOCK, so reads still block.
	syscall.SetNonblock(3, true)
	for {
		pfd := []unix.PollFd{{Fd: 3, Events: unix.POLLIN}}
		if n, _ := unix.Poll(pfd, 50); n <= 0 {
			if stopping.Load() {
				return 0
			}
			continue
		}
		nfd, _, err := syscall.Accept(3)
		if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
			continue
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "accept:", err)
			return 1
		}
		buf := make([]byte, 4096)
		syscall.Read(nfd, buf)
		resp := "HTTP/1.0 200 OK\r\n\r\n" + body
		syscall.Write(nfd, []byte(resp))
		syscall.Close(nfd)
	}
}

// serveLines answers "pong\n" to every line; on the signal it closes the
// listener and every connection at once and exits.
func serveLines(ln net.Listener, sig chan os.Signal) int {
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			go func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := c.Write([]byte("pong\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	fmt.Println("serving lines")
	<-sig
	ln.Close()
	mu.Lock()
	for c := range conns {
		c.Close()
	}
	mu.Unlock()
	return 0
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// as PEM files in dir.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "handoff test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = dir+"/cert.pem", dir+"/key.pem"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
