// Package proctest holds what the end-to-end tests of several packages need
// when they run real processes and servers: an output buffer safe for the
// copying goroutines of exec.Cmd, a bounded wait on a condition, a one-off
// HTTP request on a fresh connection, a free port, and who holds a socket
// (read from /proc). Only _test.go files import it, so it
// never reaches the agent binary.
package proctest

import (
	"bytes"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// SyncBuffer is an io.Writer safe for the two copying goroutines of exec.Cmd
// and for readers in the test. The zero value is ready to use.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor polls cond every 10 ms until it holds, and fails the test naming
// what it waited for when within passes first.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Get fetches / from addr on a fresh connection (no keep-alive, so no
// silent retry on a reused one) and returns the trimmed body.
func Get(t testing.TB, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return strings.TrimSpace(b.String())
}

// LookPath returns the path of tool, or fails the test with how to install
// it: a missing tool is a machine to fix, never a test to skip.
func LookPath(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: run scripts/install-deps.sh (as root) to install it", tool)
	}
	return p
}
