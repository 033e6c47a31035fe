package main

// The Node adapter's preload in real Node processes, without the agent: a
// real listening socket passed as fd 3 with the environment the agent builds
// (setupNodeAdapter). The whole deploy path, under load, is in
// ../examples/node_adapter_test.go. Every test runs under `node` from PATH
// and each binary listed in HANDOFF_TEST_NODE_BINS (colon-separated).

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/config"
	"github.com/handoff/handoff/internal/proctest"
)

func testNodes(t *testing.T) []string {
	t.Helper()
	list := []string{"node"}
	for _, b := range strings.Split(os.Getenv("HANDOFF_TEST_NODE_BINS"), ":") {
		if b != "" {
			list = append(list, b)
		}
	}
	var out []string
	for _, b := range list {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Fatalf("node binary %s: %v (the machine needs Node; see scripts/install-examples-deps.sh)", b, err)
		}
		out = append(out, p)
	}
	return out
}

func nodeVersion(t *testing.T, node string) string {
	t.Helper()
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", node, err)
	}
	return strings.TrimSpace(string(out))
}

// adapterWorld is one listening socket as the agent holds it, and the
// worker environment the adapter adds.
type adapterWorld struct {
	ln   *net.TCPListener
	file *os.File // the socket, passed as fd 3
	port int
	env  []string // the adapter's variables
}

func newAdapterWorld(t *testing.T, root string, appEnv map[string]string) *adapterWorld {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	app := config.AppConfig{StopSignal: syscall.SIGTERM, DrainTimeout: 5 * time.Second, Env: appEnv}
	addr := ln.Addr().String()
	_, env, err := setupNodeAdapter(app, root, []string{"http"}, []string{addr}, []uint64{st.Ino}, true)
	if err != nil {
		t.Fatal(err)
	}
	return &adapterWorld{ln: ln.(*net.TCPListener), file: f, port: ln.Addr().(*net.TCPAddr).Port, env: env}
}

// run starts node with script (a file written into dir) and the socket as
// fd 3; env is the whole environment.
func (w *adapterWorld) run(t *testing.T, node, dir, script string, env []string) *proctest.Proc {
	t.Helper()
	p := filepath.Join(dir, "app.js")
	if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, p)
	cmd.Dir = dir
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{w.file}
	return proctest.Start(t, "node", cmd)
}

// baseEnv is a worker's environment without the adapter.
func (w *adapterWorld) baseEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "LISTEN_FDS=1", "LISTEN_FDNAMES=http", "PORT=" + strconv.Itoa(w.port)}
}

func waitLine(t *testing.T, p *proctest.Proc, prefix string) string {
	t.Helper()
	var line string
	proctest.WaitFor(t, 20*time.Second, "a line "+prefix, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.Output()))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				line = strings.TrimPrefix(sc.Text(), prefix)
				return true
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("node exited before printing %q:\n%s", prefix, p.Output())
		default:
		}
		return false
	})
	return line
}

// TestNodeAdapter_keepsNodeWorking: with the preload, listen(PORT) serves on
// fd 3 (the socket the agent holds), while process.env, require resolution,
// execArgv, worker_threads (which load the preload too but must not be
// patched) and listen on other ports work as without it; a port the agent
// does not hold is listened on directly, with one line on stderr.
func TestNodeAdapter_keepsNodeWorking(t *testing.T) {
	const script = `
const http = require('node:http');
const net = require('node:net');
const { Worker } = require('node:worker_threads');
const patched = (fn) => Function.prototype.toString.call(fn).includes('targetOf');
const probe = {
  env: process.env,
  execArgv: process.execArgv,
  paths: module.paths,
  resolved: require.resolve('dep'),
  dep: require('dep'),
};
const server = http.createServer((req, res) => res.end('main ' + process.pid));
server.listen(process.env.PORT, '0.0.0.0', () => {
  probe.address = server.address();
  probe.mainPatched = patched(net.Server.prototype.listen);
  const w = new Worker(` + "`" + `
    const { parentPort } = require('node:worker_threads');
    const net = require('node:net');
    const http = require('node:http');
    const s = http.createServer((req, res) => res.end('thread'));
    s.listen(0, '127.0.0.1', () => parentPort.postMessage({
      patched: Function.prototype.toString.call(net.Server.prototype.listen).includes('targetOf'),
      port: s.address().port,
    }));
  ` + "`" + `, { eval: true });
  w.on('message', (m) => {
    probe.thread = m;
    const other = net.createServer().listen(Number(process.env.OTHER_PORT), '127.0.0.1', () => {
      probe.other = other.address().port;
      console.log('PROBE ' + JSON.stringify(probe));
    });
  });
});
`
	for _, node := range testNodes(t) {
		t.Run(nodeVersion(t, node), func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "node_modules", "dep"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "node_modules", "dep", "index.js"), []byte("module.exports = 'dep ok';\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			w := newAdapterWorld(t, filepath.Join(t.TempDir(), "a root"), nil)
			other := proctest.FreePort(t)
			base := append(w.baseEnv(), "OTHER_PORT="+strconv.Itoa(other))

			type probe struct {
				Env      map[string]string
				ExecArgv []string
				Paths    []string
				Resolved string
				Dep      string
				Address  struct{ Port int }
				Main     bool `json:"mainPatched"`
				Thread   struct {
					Patched bool
					Port    int
				}
				Other int
			}
			read := func(env []string) (probe, *proctest.Proc) {
				p := w.run(t, node, dir, script, env)
				var pr probe
				if err := json.Unmarshal([]byte(waitLine(t, p, "PROBE ")), &pr); err != nil {
					t.Fatal(err)
				}
				return pr, p
			}

			// Without the adapter listen(PORT) fails: the agent holds the port.
			plain := w.run(t, node, dir, script, base)
			select {
			case <-plain.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("without the adapter, listen(PORT) did not fail")
			}
			if !strings.Contains(plain.Output(), "EADDRINUSE") {
				t.Fatalf("without the adapter: want EADDRINUSE, got:\n%s", plain.Output())
			}

			withEnv := append(append([]string{}, base...), w.env...)
			pr, p := read(withEnv)
			if pr.Address.Port != w.port || !pr.Main {
				t.Errorf("main thread: listening on %d (want the agent's %d), listen patched %v", pr.Address.Port, w.port, pr.Main)
			}
			if got := proctest.Get(t, w.ln.Addr().String()); got != "main "+strconv.Itoa(p.Cmd.Process.Pid) {
				t.Errorf("the agent's socket answered %q", got)
			}
			if pr.Thread.Patched || pr.Thread.Port == 0 {
				t.Errorf("worker thread: listen patched %v, listened on port %d", pr.Thread.Patched, pr.Thread.Port)
			}
			if got := proctest.Get(t, "127.0.0.1:"+strconv.Itoa(pr.Thread.Port)); got != "thread" {
				t.Errorf("the worker thread's server answered %q", got)
			}
			if pr.Other != other {
				t.Errorf("listen on a port the agent does not hold: on %d, want %d", pr.Other, other)
			}
			want := "handoff node adapter: listen on port " + strconv.Itoa(other) + ": the agent holds no socket on it"
			if n := strings.Count(p.Output(), want); n != 1 {
				t.Errorf("%d warnings %q; want 1:\n%s", n, want, p.Output())
			}
			wantEnv := map[string]string{}
			for _, kv := range withEnv {
				k, v, _ := strings.Cut(kv, "=")
				wantEnv[k] = v
			}
			if !reflect.DeepEqual(pr.Env, wantEnv) {
				t.Errorf("process.env with the adapter:\n got %v\nwant %v", pr.Env, wantEnv)
			}

			// The rest is what it is without the adapter's listen: run the
			// probe on a port the agent does not hold.
			ref, _ := read(append(append([]string{}, base...),
				"PORT="+strconv.Itoa(proctest.FreePort(t)), "OTHER_PORT="+strconv.Itoa(proctest.FreePort(t))))
			if !reflect.DeepEqual(pr.ExecArgv, ref.ExecArgv) || !reflect.DeepEqual(pr.Paths, ref.Paths) ||
				pr.Resolved != ref.Resolved || pr.Dep != ref.Dep || pr.Dep != "dep ok" {
				t.Errorf("with the adapter: execArgv %q paths %q resolved %q dep %q\nwithout:          execArgv %q paths %q resolved %q dep %q",
					pr.ExecArgv, pr.Paths, pr.Resolved, pr.Dep, ref.ExecArgv, ref.Paths, ref.Resolved, ref.Dep)
			}
		})
	}
}

// TestNodeAdapter_cluster: an app that forks cluster workers keeps working:
// a worker's listen(PORT) goes to its primary (Node's round-robin handle),
// whose listen the preload serves on fd 3; the worker, whose fd 3 is its IPC
// channel, takes nothing itself.
func TestNodeAdapter_cluster(t *testing.T) {
	const script = `
const cluster = require('node:cluster');
const http = require('node:http');
if (cluster.isPrimary) {
  cluster.fork().on('listening', (a) => console.log('LISTENING ' + a.port));
} else {
  http.createServer((req, res) => res.end('cluster worker ' + cluster.worker.id)).listen(process.env.PORT);
}
`
	for _, node := range testNodes(t) {
		t.Run(nodeVersion(t, node), func(t *testing.T) {
			w := newAdapterWorld(t, t.TempDir(), nil)
			p := w.run(t, node, t.TempDir(), script, append(w.baseEnv(), w.env...))
			if got := waitLine(t, p, "LISTENING "); got != strconv.Itoa(w.port) {
				t.Errorf("the cluster worker listens on %s, want %d", got, w.port)
			}
			for i := 0; i < 3; i++ {
				if got := proctest.Get(t, w.ln.Addr().String()); got != "cluster worker 1" {
					t.Errorf("the agent's socket answered %q", got)
				}
			}
			if strings.Contains(p.Output(), "handoff node adapter") {
				t.Errorf("the adapter complained:\n%s", p.Output())
			}
		})
	}
}

// TestSetupNodeAdapter: NODE_OPTIONS is appended to, never replaced: the
// app's env first, else the agent's own; the preload lives in a 0700
// directory of the root, and only a fresh start removes other versions.
func TestSetupNodeAdapter(t *testing.T) {
	root := filepath.Join(t.TempDir(), `odd "root"`)
	tests := []struct {
		name   string
		appEnv map[string]string
		agent  string // the agent's own NODE_OPTIONS
		want   string // before --require
	}{
		{name: "none", want: ""},
		{name: "agent's", agent: "--max-old-space-size=64", want: "--max-old-space-size=64 "},
		{name: "app's wins", appEnv: map[string]string{"NODE_OPTIONS": "--enable-source-maps"}, agent: "--max-old-space-size=64", want: "--enable-source-maps "},
		{name: "app's empty", appEnv: map[string]string{"NODE_OPTIONS": ""}, agent: "--max-old-space-size=64", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_OPTIONS", tt.agent)
			app := config.AppConfig{Env: tt.appEnv, StopSignal: syscall.SIGINT, DrainTimeout: 3 * time.Second}
			path, env, err := setupNodeAdapter(app, root, []string{"http", "admin"}, []string{"127.0.0.1:80", "unix:/run/a.sock"}, []uint64{7, 9}, true)
			if err != nil {
				t.Fatal(err)
			}
			if want := "NODE_OPTIONS=" + tt.want + `--require "` + strings.ReplaceAll(path, `"`, `\"`) + `"`; env[0] != want {
				t.Errorf("got  %s\nwant %s", env[0], want)
			}
			want := nodeAdapterVar + `={"sockets":[{"fd":3,"name":"http","address":"127.0.0.1:80","inode":7},` +
				`{"fd":4,"name":"admin","address":"unix:/run/a.sock","inode":9}],"stop_signal":"SIGINT","drain_ms":3000}`
			if env[1] != want {
				t.Errorf("got  %s\nwant %s", env[1], want)
			}
		})
	}

	dir := nodePreloadDir(root)
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("preload dir: %v %v; want mode 0700", fi.Mode(), err)
	}
	path, err := writeNodePreload(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != string(nodePreload) {
		t.Fatalf("preload file: %v", err)
	}
	old := filepath.Join(dir, "handoff-node-000000000000.cjs")
	if err := os.WriteFile(old, []byte("// an older agent's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := writeNodePreload(dir, false); err != nil || !fileExists(old) {
		t.Fatalf("a resumed start removed another version's preload (%v)", err)
	}
	if _, err := writeNodePreload(dir, true); err != nil || fileExists(old) || !fileExists(path) {
		t.Fatalf("a fresh start kept another version's preload, or lost its own (%v)", err)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
