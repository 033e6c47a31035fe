package cluster

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/loadgen"
)

// lostCh collects what the watch reports.
func lostCh(cfg *Config) chan SocketLost {
	ch := make(chan SocketLost, 16)
	cfg.OnSocketLost = func(l SocketLost) { ch <- l }
	return ch
}

func nextLost(t *testing.T, ch chan SocketLost) SocketLost {
	t.Helper()
	select {
	case l := <-ch:
		t.Logf("lost: %+v (refused for at most %s)", l, l.Restored.Sub(l.LastSeen))
		return l
	case <-time.After(30 * time.Second):
		t.Fatal("no socket loss reported")
		return SocketLost{}
	}
}

// allLost returns what was reported so far: a Reload returns only after the
// watch checked once more after its retirement, so a loss its retiring
// workers caused is reported by then. One worker exiting after the other
// may cause one loss each.
func allLost(t *testing.T, ch chan SocketLost) []SocketLost {
	t.Helper()
	var out []SocketLost
	for {
		select {
		case l := <-ch:
			t.Logf("lost: %+v (refused for at most %s)", l, l.Restored.Sub(l.LastSeen))
			out = append(out, l)
		default:
			if len(out) == 0 {
				t.Fatal("no socket loss reported")
			}
			return out
		}
	}
}

func noLost(t *testing.T, ch chan SocketLost) {
	t.Helper()
	select {
	case l := <-ch:
		t.Errorf("unexpected loss: %+v", l)
	default:
	}
}

// waitBody waits until a fresh connection to addr is answered with want and
// returns when.
func waitBody(t *testing.T, network, addr, want string) time.Time {
	t.Helper()
	var last string
	var lastErr error
	if !waitFor(30*time.Second, func() bool {
		last, lastErr = getOnce(network, addr)
		return lastErr == nil && last == want
	}) {
		t.Fatalf("%s %s never answered %q: %q %v", network, addr, want, last, lastErr)
	}
	return time.Now()
}

// A retiring worker shuts the shared TCP socket down on SIGTERM: the watch
// sees it, binds the same port again, and the next generation serves on it.
// A later reload loses nothing.
func TestMaster_ListenWatchRebindsShutDownSocket(t *testing.T) {
	cfg := Config{Workers: 2}
	lost := lostCh(&cfg)
	h := newHarness(t, cfg)
	h.mustReload(h.release("bad", "HELPER_ON_TERM=shutdown"))
	run := startFreshLoad(t, h.addr, 4)
	waitOK(t, run, 20)
	oldIno := h.socks.watch[0].sockIno

	h.mustReload(h.release("v2")) // retires "bad", whose workers shut the socket down
	l := nextLost(t, lost)
	if l.Reason != LostShutdown || l.How != RestoredRebound || l.Stopping != 1 || l.Name != "http" || l.Address != h.addr || l.Adopted {
		t.Errorf("report: %+v", l)
	}
	if !h.m.Stale() || !h.m.Status().Generations[0].Stale {
		t.Errorf("generation 2 holds the dead socket but is not stale: %+v", h.m.Status())
	}
	if h.socks.isOurs(oldIno) || !h.socks.isOurs(h.socks.watch[0].sockIno) {
		t.Errorf("inode map not updated")
	}
	if got := h.socks.Addrs()[0]; got != h.addr {
		t.Errorf("address %s, want %s", got, h.addr)
	}

	// What the caller does: a new generation on the new socket.
	h.mustReload(h.release("v3"))
	served := waitBody(t, "tcp", h.addr, "v3")
	if h.m.Stale() {
		t.Errorf("still stale after the reload")
	}
	t.Logf("outage: refused for at most %s (shutdown to rebind), served again after at most %s (shutdown to first answer)",
		l.Restored.Sub(l.LastSeen).Round(time.Millisecond), served.Sub(l.LastSeen).Round(time.Millisecond))
	mid := run.Snapshot()

	h.mustReload(h.release("v4"))
	waitOK(t, run, 20)
	noLost(t, lost)
	res := run.Stop()
	t.Logf("load: %s", res)
	t.Logf("failed while the port was down (expected): %d %v", mid.FailedTotal, mid.Failed)
	if res.FailedTotal != mid.FailedTotal {
		t.Errorf("%d requests failed after the recovery: %v %q", res.FailedTotal-mid.FailedTotal, res.Failed, res.Errors)
	}
	if res.Bodies["v4"] == 0 {
		t.Errorf("v4 never served: %v", res.Bodies)
	}
}

// A worker that unlinks the unix socket's path on exit: the watch puts the
// path back on the same socket (no new generation needed). Without its
// keep link, it binds a new socket there, and the next generation serves.
func TestMaster_ListenWatchRestoresUnixPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	cfg := Config{Workers: 2}
	lost := lostCh(&cfg)
	h := newHarnessOn(t, cfg, []ListenSpec{{Name: "http", Address: "127.0.0.1:0"}, {Name: "local", Address: "unix:" + path}})
	h.mustReload(h.release("bad", "HELPER_ON_EXIT=unlink"))
	run, err := loadgen.Start(context.Background(), loadgen.Options{Addr: path, Network: "unix", Conns: 4, Duration: loadBound})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Stop() })
	waitOK(t, run, 20)

	h.mustReload(h.release("v2"))
	for _, l := range allLost(t, lost) {
		if l.Reason != LostUnlinked || l.How != RestoredRelinked || l.Stopping != 1 || l.Name != "local" || l.NeedsReload() {
			t.Errorf("report: %+v", l)
		}
	}
	if h.m.Stale() {
		t.Errorf("stale after a relink")
	}
	waitBody(t, "unix", path, "v2")
	mid := run.Snapshot()
	t.Logf("failed while the path was gone (expected): %d %v", mid.FailedTotal, mid.Failed)

	// The keep link gone as well: a new socket at the path (which the
	// second worker to exit may remove again: relinked, as it has a keep
	// link).
	keep := filepath.Join(filepath.Dir(path), ".app.sock"+keepSuffix)
	if err := os.Remove(keep); err != nil {
		t.Fatal(err)
	}
	h.mustReload(h.release("bad2", "HELPER_ON_EXIT=unlink"))
	h.mustReload(h.release("v3")) // retires bad2
	// Reload may return while bad2 still drains (its socket was replaced):
	// its second worker's unlink comes when it exits.
	if !waitFor(10*time.Second, func() bool { return len(h.m.Status().Generations) == 1 }) {
		t.Fatalf("bad2 never finished retiring: %+v", h.m.Status().Generations)
	}
	ls := allLost(t, lost)
	for i, l := range ls {
		want := RestoredRelinked
		if i == 0 {
			want = RestoredRebound
		}
		if l.Reason != LostUnlinked || l.How != want || l.Stopping != 3 {
			t.Errorf("report %d: %+v", i, l)
		}
	}
	if !h.m.Stale() {
		t.Errorf("not stale after a rebind")
	}
	h.mustReload(h.release("v4"))
	served := waitBody(t, "unix", path, "v4")
	t.Logf("outage without the keep link: served again after at most %s", served.Sub(ls[0].LastSeen).Round(time.Millisecond))
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("the new socket has no keep link: %v", err)
	}
	res := run.Stop()
	t.Logf("load: %s", res)
	noLost(t, lost)

	// Close removes the path and the keep link.
	h.m.Shutdown(context.Background())
	if err := h.socks.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, keep} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
}

// Workers that close only their own copy, as every well-behaved app does:
// nothing is lost and no request fails.
func TestMaster_ListenWatchIgnoresOwnCopyClose(t *testing.T) {
	cfg := Config{Workers: 2}
	lost := lostCh(&cfg)
	h := newHarness(t, cfg)
	h.mustReload(h.release("v1"))
	run := startFreshLoad(t, h.addr, 4)
	for _, id := range []string{"v2", "v3", "v4"} {
		h.mustReload(h.release(id))
		waitOK(t, run, 20)
	}
	assertClean(t, run, false)
	noLost(t, lost)
	if h.m.Stale() {
		t.Error("stale")
	}
}

// The steady-state detection latency: the test shuts the socket down itself
// (no generation stopping) and reads when the watch saw it.
func TestMaster_ListenWatchDetectionLatency(t *testing.T) {
	cfg := Config{Workers: 1}
	lost := lostCh(&cfg)
	h := newHarness(t, cfg)
	h.mustReload(h.release("v1"))
	var lat []time.Duration
	for i := range 10 {
		h.socks.mu.RLock()
		fd, err := syscall.Dup(h.socks.watch[0].fd)
		h.socks.mu.RUnlock()
		if err != nil {
			t.Fatal(err)
		}
		at := time.Now()
		syscall.Shutdown(fd, syscall.SHUT_RDWR)
		syscall.Close(fd)
		l := nextLost(t, lost)
		lat = append(lat, l.Detected.Sub(at))
		h.mustReload(h.release("v" + itoa(i+2)))
		waitBody(t, "tcp", h.addr, "v"+itoa(i+2))
	}
	slices.Sort(lat)
	t.Logf("detection latency (period %s): min %s median %s max %s", DefaultListenCheck, lat[0], lat[len(lat)/2], lat[len(lat)-1])
}
