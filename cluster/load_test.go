package cluster

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/loadgen"
)

// loadBound caps every load a test starts; a test stops its load long before.
const loadBound = 2 * time.Minute

// startLoad starts a keep-alive load on addr with loadgen, which counts every
// failure at the TCP level and a stale keep-alive (an error on a reused
// connection before any response byte, retried once) apart. It is stopped at
// the end of the test if the test did not stop it.
func startLoad(t testing.TB, addr string, conns int) *loadgen.Run {
	t.Helper()
	return startLoadOpts(t, addr, conns, true)
}

// startFreshLoad is a load whose every request opens a new connection: a
// moment when the port refused connections would show.
func startFreshLoad(t testing.TB, addr string, conns int) *loadgen.Run {
	t.Helper()
	return startLoadOpts(t, addr, conns, false)
}

func startLoadOpts(t testing.TB, addr string, conns int, keepAlive bool) *loadgen.Run {
	t.Helper()
	run, err := loadgen.Start(context.Background(), loadgen.Options{
		Addr: addr, Conns: conns, KeepAlive: keepAlive, Duration: loadBound,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Stop() })
	return run
}

// getOnce sends one request on a fresh connection and returns the body.
func getOnce(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
