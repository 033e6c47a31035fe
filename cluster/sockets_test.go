package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestOpenSockets_TCPAndUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	socks, err := OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}, {Name: "admin", Address: "unix:" + path}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addrs := socks.Addrs()
	if len(addrs) != 2 || strings.HasSuffix(addrs[0], ":0") || addrs[1] != "unix:"+path {
		t.Fatalf("addrs %v", addrs)
	}
	if n := socks.Names(); n[0] != "http" || n[1] != "admin" {
		t.Errorf("names %v", n)
	}
	// The master never accepts, but the kernel queues connections.
	for _, a := range []struct{ network, addr string }{{"tcp", addrs[0]}, {"unix", path}} {
		c, err := net.Dial(a.network, a.addr)
		if err != nil {
			t.Fatalf("dial %s: %v", a.addr, err)
		}
		c.Close()
	}
	// Blocking mode, as systemd passes sockets.
	fl, _, _ := syscall.Syscall(syscall.SYS_FCNTL, socks.files[0].Fd(), syscall.F_GETFL, 0)
	if fl&syscall.O_NONBLOCK != 0 {
		t.Errorf("socket is non-blocking")
	}
	if err := socks.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unix socket file left: %v", err)
	}
	if _, err := net.Dial("tcp", addrs[0]); err == nil {
		t.Errorf("tcp socket still open after Close")
	}
}

func TestOpenSockets_StaleUnix(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	socks, err := OpenSockets([]ListenSpec{{Name: "a", Address: "unix:" + stale}}, nil)
	if err != nil {
		t.Fatalf("stale socket file not replaced: %v", err)
	}
	socks.Close()

	live := filepath.Join(dir, "live.sock")
	l2, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, err := OpenSockets([]ListenSpec{{Name: "a", Address: "unix:" + live}}, nil); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("live socket: %v, want EADDRINUSE", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := OpenSockets([]ListenSpec{{Name: "a", Address: "unix:" + file}}, nil); err == nil {
		t.Errorf("regular file replaced")
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("regular file touched: %v", err)
	}
}

func TestOpenSockets_Invalid(t *testing.T) {
	for _, specs := range [][]ListenSpec{
		{{Name: "a:b", Address: "127.0.0.1:0"}},
		{{Name: "a", Address: "127.0.0.1:0"}, {Name: "a", Address: "127.0.0.1:0"}},
		{{Name: "a", Address: "unix:"}},
	} {
		if _, err := OpenSockets(specs, nil); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("%v: %v, want ErrInvalidSpec", specs, err)
		}
	}
	if _, err := OpenSockets([]ListenSpec{{Name: "a", Address: "256.0.0.1:1"}}, nil); err == nil {
		t.Errorf("bad address accepted")
	}
	if _, err := OpenSockets(nil, nil); !errors.Is(err, ErrNoSockets) {
		t.Errorf("no specs, no systemd sockets: %v", err)
	}
}

// Sockets passed the systemd way (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID set
// by the shim) are adopted by name; unmatched specs are bound.
func TestOpenSockets_AdoptSystemd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, _ := l.(*net.TCPListener).File()
	defer f.Close()
	run := func(specs string) map[string][]string {
		self := selfPath(t)
		cmd := exec.Command(self, self)
		cmd.Env = append(os.Environ(), shimEnv+"="+shimExec, "CLUSTER_TEST_ROLE=adopt", "ADOPT_SPECS="+specs,
			"LISTEN_FDS=1", "LISTEN_FDNAMES=web")
		cmd.ExtraFiles = []*os.File{f}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		var res map[string][]string
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return res
	}
	res := run("web=127.0.0.1:1,other=127.0.0.1:0")
	if res["addrs"][0] != l.Addr().String() || res["names"][0] != "web" {
		t.Errorf("web not adopted: %v", res)
	}
	if res["addrs"][1] == "127.0.0.1:0" || res["names"][1] != "other" {
		t.Errorf("other not bound: %v", res)
	}
	res = run("")
	if len(res["addrs"]) != 1 || res["addrs"][0] != l.Addr().String() || res["names"][0] != "web" {
		t.Errorf("no specs: not all adopted: %v", res)
	}
}

// Workers serve a unix socket and a TCP socket inherited together, in order.
func TestMaster_UnixAndTCPSockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	socks, err := OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}, {Name: "local", Address: "unix:" + path}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer socks.Close()
	m, err := NewMaster(Config{Command: []string{selfPath(t)}, Workers: 1, Env: []string{"CLUSTER_TEST_ROLE=worker"}}, socks)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	dir := t.TempDir()
	if _, err := m.Reload(context.Background(), GenerationSpec{Dir: dir, ReleaseID: "u1"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, a := range [][2]string{{"tcp", socks.Addrs()[0]}, {"unix", path}} {
		if body, err := getOnce(a[0], a[1]); err != nil || body != "u1" {
			t.Errorf("%s %s: %q %v", a[0], a[1], body, err)
		}
	}
}
