package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawServer accepts on 127.0.0.1:0 and hands each connection to handle; it
// stops and waits for its goroutines at test cleanup.
func rawServer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readRequest reads one request head; false at EOF.
func readRequest(br *bufio.Reader) bool {
	req, err := http.ReadRequest(br)
	if err != nil {
		return false
	}
	req.Body.Close()
	return true
}

func TestStart_countsOKByBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from v1")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, keepAlive := range []bool{true, false} {
		t.Run(fmt.Sprintf("keepalive=%v", keepAlive), func(t *testing.T) {
			run, err := Start(context.Background(), Options{Addr: addr, Conns: 4, KeepAlive: keepAlive, MaxRequests: 400})
			if err != nil {
				t.Fatal(err)
			}
			res := run.Wait()
			if res.OK != 400 || res.FailedTotal != 0 || res.Requests != 400 {
				t.Fatalf("want 400 ok and no failure, got %v", res)
			}
			if res.Bodies["hello from v1"] != 400 {
				t.Fatalf("bodies = %v", res.Bodies)
			}
			if res.P50 <= 0 || res.Max < res.P99 || res.P99 < res.P50 {
				t.Fatalf("latency p50=%v p99=%v max=%v", res.P50, res.P99, res.Max)
			}
		})
	}
}

func TestStart_refusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:80", "192.168.1.1:8080", "8.8.8.8:53", "example.com:80"} {
		_, err := Start(context.Background(), Options{Addr: addr, Duration: time.Second})
		if !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: want ErrNotLoopback, got %v", addr, err)
		}
	}
	if _, err := Start(context.Background(), Options{Addr: "127.0.0.1:1"}); err == nil {
		t.Error("an unbounded run was accepted")
	}
}

func TestStart_countsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	run, err := Start(context.Background(), Options{Addr: addr, Conns: 2, MaxRequests: 10})
	if err != nil {
		t.Fatal(err)
	}
	res := run.Wait()
	if res.Failed[KindRefused] != 10 || res.OK != 0 {
		t.Fatalf("want 10 refused, got %v", res)
	}
}

func TestStart_countsResetAndEOFAndNon2xx(t *testing.T) {
	cases := []struct {
		name   string
		handle func(c net.Conn)
		kind   string
	}{
		{name: "reset", kind: KindReset, handle: func(c net.Conn) {
			readRequest(bufio.NewReader(c))
			c.(*net.TCPConn).SetLinger(0) // close with RST
		}},
		{name: "eof mid-response", kind: KindEOF, handle: func(c net.Conn) {
			readRequest(bufio.NewReader(c))
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal"))
		}},
		{name: "non2xx", kind: KindNon2xx, handle: func(c net.Conn) {
			br := bufio.NewReader(c)
			for readRequest(br) {
				c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"))
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := rawServer(t, tc.handle)
			run, err := Start(context.Background(), Options{Addr: addr, Conns: 1, KeepAlive: true, MaxRequests: 5})
			if err != nil {
				t.Fatal(err)
			}
			res := run.Wait()
			if res.Failed[tc.kind] != 5 || res.FailedTotal != 5 {
				t.Fatalf("want 5 %s failures, got %v", tc.kind, res)
			}
		})
	}
}

// A server that closes every keep-alive connection after one response, without
// saying Connection: close, makes each reuse fail before any response byte:
// that is a stale keep-alive, retried once and not a failure.
func TestStart_staleKeepAliveRetriedAndCountedApart(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		if readRequest(bufio.NewReader(c)) {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
		}
	})
	run, err := Start(context.Background(), Options{Addr: addr, Conns: 1, KeepAlive: true, MaxRequests: 20})
	if err != nil {
		t.Fatal(err)
	}
	res := run.Wait()
	if res.OK != 20 || res.FailedTotal != 0 {
		t.Fatalf("want 20 ok, got %v", res)
	}
	if res.StaleKeepAlive < 15 {
		t.Fatalf("want about 19 stale keep-alive retries, got %v", res)
	}
}

// A request cut short by the run's own Stop is not the server's failure.
func TestRun_stopDuringSlowRequestIsNotAFailure(t *testing.T) {
	release := make(chan struct{})
	inFlight := make(chan struct{}, 2)
	addr := rawServer(t, func(c net.Conn) {
		readRequest(bufio.NewReader(c))
		inFlight <- struct{}{}
		<-release
	})
	defer close(release)
	run, err := Start(context.Background(), Options{Addr: addr, Conns: 2, KeepAlive: true, Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	<-inFlight
	<-inFlight
	res := run.Stop()
	if res.FailedTotal != 0 || res.Requests != 0 {
		t.Fatalf("want nothing counted, got %v", res)
	}
}

func TestHistogram_quantileWithinTwoPercent(t *testing.T) {
	var h histogram
	for i := 1; i <= 100000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := time.Duration(q*100000) * time.Microsecond
		got := h.quantile(q)
		if diff := float64(want-got) / float64(want); diff < 0 || diff > 0.02 {
			t.Errorf("q%.2f: want about %v, got %v", q, want, got)
		}
	}
	if h.max != 100*time.Millisecond {
		t.Errorf("max = %v", h.max)
	}
}

// Stopping a run whose requests keep failing (and closing their connections)
// must not race with the stop callback on the connection.
func TestRun_stopWhileConnectionsChurn(t *testing.T) {
	addr := rawServer(t, func(c net.Conn) {
		readRequest(bufio.NewReader(c))
	})
	for i := 0; i < 20; i++ {
		run, err := Start(context.Background(), Options{Addr: addr, Conns: 4, KeepAlive: true, Duration: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		for run.Snapshot().Requests == 0 {
			runtime.Gosched()
		}
		run.Stop()
	}
}

// A run bounded by Duration ends with its dials and reads cut at the
// deadline: none of that may be counted as the server's failure.
func TestRun_durationEndIsNotAFailure(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, keepAlive := range []bool{false, true} {
		run, err := Start(context.Background(), Options{Addr: addr, Conns: 8, KeepAlive: keepAlive, Duration: 500 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		res := run.Wait()
		if res.FailedTotal != 0 || res.OK == 0 {
			t.Fatalf("keepalive=%v: want only ok requests, got %v", keepAlive, res)
		}
	}
}
