package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/releasetest"
)

// raceEnabled is set by race_test.go; the agent binary is then built with
// -race as well.
var raceEnabled bool

// agentBin is the agent binary built once by TestMain.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "agent-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Other uids run the binary in the permission test.
	os.Chmod(dir, 0o755)
	agentBin = filepath.Join(dir, "agent")
	args := []string{"build", "-o", agentBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, ".")
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the agent:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// file is one archive entry.
type file struct {
	mode int64
	body string
}

// nodeServer is the example app: it answers "hello from <release id>".
func nodeServer(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../examples/node/server.js")
	if err != nil {
		t.Fatalf("example app: %v", err)
	}
	return string(b)
}

// tarGz packs files as a gzipped tar (releasetest.TarGz).
func tarGz(t *testing.T, files map[string]file) []byte {
	t.Helper()
	rf := make(map[string]releasetest.File, len(files))
	for name, f := range files {
		rf[name] = releasetest.File{Mode: f.mode, Body: []byte(f.body)}
	}
	return releasetest.TarGz(t, rf)
}

// artifacts serves tar.gz archives over HTTP on 127.0.0.1.
type artifacts struct {
	srv *releasetest.Server
}

func newArtifacts(t *testing.T) *artifacts {
	return &artifacts{srv: releasetest.NewServer(t)}
}

// add publishes files as NAME.tar.gz and returns its URL with a checksum.
func (a *artifacts) add(t *testing.T, name string, files map[string]file) string {
	return a.srv.Publish(name+".tar.gz", tarGz(t, files))
}

// app publishes the example Node app (plus extra files) as NAME.
func (a *artifacts) app(t *testing.T, name string, extra map[string]file) string {
	files := map[string]file{"server.js": {body: nodeServer(t)}, "package.json": {body: `{"name":"e2e"}`}}
	for k, v := range extra {
		files[k] = v
	}
	return a.add(t, name, files)
}

// broken publishes an app that runs but never listens.
func (a *artifacts) broken(t *testing.T, name string) string {
	return a.add(t, name, map[string]file{"server.js": {body: "console.log('starting, but never listening');\nsetInterval(() => {}, 1000);\n"}})
}

// agentProc is one running `agent run`.
type agentProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stderr *bytes.Buffer
	mu     *sync.Mutex
}

type lockedBuf struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (l lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (p *agentProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// wait waits for the process to exit and returns its exit code.
func (p *agentProc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Fatalf("agent did not exit within %s; log:\n%s", d, p.log())
	}
	return p.cmd.ProcessState.ExitCode()
}

// setup is one test's config, root and artifacts.
type setup struct {
	t    *testing.T
	dir  string
	root string
	cfg  string
	sock string
	art  *artifacts
}

const baseConfig = `root = %q
keep_releases = 3

[app]
command = ["node", "server.js"]
workers = 2
drain_timeout = "10s"

[[listen]]
name = "http"
address = "127.0.0.1:0"

[readiness]
timeout = "10s"

[restart]
backoff_min = "50ms"
backoff_max = "1s"
`

func newSetup(t *testing.T, extra string) *setup {
	t.Helper()
	dir := t.TempDir()
	s := &setup{t: t, dir: dir, root: filepath.Join(dir, "root"), cfg: filepath.Join(dir, "deploy.toml"), art: newArtifacts(t)}
	s.sock = filepath.Join(s.root, ".agent", "agent.sock")
	s.writeConfig(fmt.Sprintf(baseConfig, s.root) + extra)
	return s
}

func (s *setup) writeConfig(text string) {
	if err := os.WriteFile(s.cfg, []byte(text), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// start runs `agent run` (wrapped in prefix, if any) and waits until its
// control socket answers.
func (s *setup) start(env []string, prefix ...string) *agentProc {
	s.t.Helper()
	p := s.spawn(env, prefix...)
	s.waitUp(p)
	return p
}

func (s *setup) spawn(env []string, prefix ...string) *agentProc {
	s.t.Helper()
	return s.spawnBin(agentBin, env, prefix...)
}

// spawnBin runs `bin run` (wrapped in prefix, if any); the test's cleanup
// stops it with SIGTERM, then SIGKILL, and prints its log if the test failed.
func (s *setup) spawnBin(bin string, env []string, prefix ...string) *agentProc {
	s.t.Helper()
	argv := append(append([]string{}, prefix...), bin, "run", "-c", s.cfg)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	p := &agentProc{t: s.t, cmd: cmd, done: make(chan struct{}), stderr: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stdout = lockedBuf{p.mu, p.stderr}
	cmd.Stderr = lockedBuf{p.mu, p.stderr}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	s.t.Cleanup(func() {
		select {
		case <-p.done:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
		if s.t.Failed() {
			s.t.Logf("agent log:\n%s", p.log())
		}
	})
	return p
}

func (s *setup) waitUp(p *agentProc) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := control.Call(s.sock, control.Request{Op: control.OpPing}, nil)
		if err == nil && res.Code == control.CodeOK {
			return
		}
		select {
		case <-p.done:
			s.t.Fatalf("agent exited: %v\n%s", p.err, p.log())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("agent not up after 30s: %v\n%s", err, p.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result is one CLI run.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cli runs the agent binary with args (config flag added when s != nil).
func cli(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	return cliAs(t, env, nil, args...)
}

// cliIn runs the agent binary in dir.
func cliIn(t *testing.T, dir string, env []string, args ...string) cliResult {
	t.Helper()
	return cliRun(t, dir, env, nil, args...)
}

// cliAs runs the agent binary behind prefix (e.g. setpriv …).
func cliAs(t *testing.T, env []string, prefix []string, args ...string) cliResult {
	t.Helper()
	return cliRun(t, "", env, prefix, args...)
}

func cliRun(t *testing.T, dir string, env []string, prefix []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	argv := append(append(append([]string{}, prefix...), agentBin), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("%v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return cliResult{stdout: out.String(), stderr: errb.String(), code: code}
}

// do runs a client command against this setup's config.
func (s *setup) do(cmd string, args ...string) cliResult {
	s.t.Helper()
	return cli(s.t, nil, append([]string{cmd, "-c", s.cfg}, args...)...)
}

func (s *setup) mustDo(cmd string, args ...string) cliResult {
	s.t.Helper()
	r := s.do(cmd, args...)
	if r.code != 0 {
		s.t.Fatalf("agent %s %v: %v", cmd, args, r)
	}
	return r
}

func (s *setup) status() *control.StatusDoc {
	s.t.Helper()
	r := s.mustDo("status", "--json")
	var st control.StatusDoc
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		s.t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return &st
}

// appAddr is the app's listening address, from status.
func (s *setup) appAddr() string {
	st := s.status()
	if len(st.Listen) == 0 {
		s.t.Fatalf("no listening address in status: %+v", st)
	}
	return strings.TrimPrefix(st.Listen[0], "tcp:")
}

// alive reports whether pid runs (not a zombie).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}
