package examples_test

// A small harness for driving the real agent binary with the examples:
// it builds the agent once, packs an example directory as a tar.gz release,
// serves releases over HTTP on 127.0.0.1 with ?checksum=sha256:…, runs
// `agent run` with a generated deploy.toml, and runs the CLI against it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/internal/releasetest"
)

var (
	agentBuildOnce sync.Once
	agentBuildPath string
	agentBuildErr  error
)

// buildAgent builds ../agent once per test binary run, into the directory
// buildGoExample made (which TestMain removes), unless HANDOFF_TEST_AGENT
// names a binary. It is built without -race:
// the agent's own tests run it raced; here it only has to be the real thing,
// and the race build would take CPU from the apps under test.
func buildAgent(t *testing.T) string {
	t.Helper()
	goBin := buildGoExample(t)
	agentBuildOnce.Do(func() {
		// HANDOFF_TEST_AGENT runs the tests against an agent built
		// elsewhere (a release build, or while ../agent is mid-edit).
		if p := os.Getenv("HANDOFF_TEST_AGENT"); p != "" {
			agentBuildPath = p
			return
		}
		agentBuildPath = filepath.Join(filepath.Dir(goBin), "agent")
		out, err := exec.Command(goTool(), "build", "-o", agentBuildPath, "../agent").CombinedOutput()
		if err != nil {
			agentBuildErr = fmt.Errorf("go build ../agent: %w\n%s", err, out)
		}
	})
	if agentBuildErr != nil {
		t.Fatal(agentBuildErr)
	}
	return agentBuildPath
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// releaseFiles reads the regular files of examples/<dir> (no __pycache__),
// keyed by slash path, with their modes.
func releaseFiles(t *testing.T, dir string) map[string]relFile {
	t.Helper()
	return readTree(t, dir,
		func(name string) bool { return name == "__pycache__" || name == "node_modules" },
		func(p string) bool { return strings.HasSuffix(p, ".go") })
}

// readTree reads the regular files under dir, by slash-separated path
// relative to it, leaving out directories skipDir names and files skipFile
// names; symlinks are not followed.
func readTree(t *testing.T, dir string, skipDir func(name string) bool, skipFile func(path string) bool) map[string]relFile {
	t.Helper()
	files := map[string]relFile{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && skipDir(d.Name()) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || skipFile(p) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = relFile{mode: int64(info.Mode().Perm()), body: b}
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	return files
}

type relFile struct {
	mode int64
	body []byte
}

// tarGz packs files, in name order, as a gzipped tar (releasetest.TarGz).
func tarGz(t *testing.T, files map[string]relFile) []byte {
	t.Helper()
	rf := make(map[string]releasetest.File, len(files))
	for name, f := range files {
		rf[name] = releasetest.File{Mode: f.mode, Body: f.body}
	}
	return releasetest.TarGz(t, rf)
}

// artifactToken stands for the signature of a pre-signed URL.
const artifactToken = "s3cr3t"

// artifactServer serves release archives over HTTP on 127.0.0.1.
type artifactServer struct {
	srv *releasetest.Server
}

func newArtifactServer(t *testing.T) *artifactServer {
	t.Helper()
	a := &artifactServer{srv: releasetest.NewServer(t)}
	// Like a pre-signed storage URL: the query must come back as
	// published, without the checksum (go-getter keeps that to itself).
	a.srv.CheckQuery(func(r *http.Request) bool {
		q := r.URL.Query()
		return q.Get("token") == artifactToken && !q.Has("checksum")
	})
	return a
}

// publish serves archive as NAME.tar.gz and returns its URL: a token query
// (as a pre-signed URL has) and the checksum.
func (a *artifactServer) publish(name string, archive []byte) string {
	return a.srv.Put(name+".tar.gz", archive) + "?token=" + artifactToken + "&checksum=" + releasetest.Checksum(archive)
}

// agentRun is one `agent run` with its config.
type agentRun struct {
	t    *testing.T
	bin  string
	cfg  string
	sock string
	cmd  *exec.Cmd
	out  *proctest.SyncBuffer
	done chan struct{}
	err  error // Wait's result, set before done is closed
}

// deployConfig is what varies between the examples' deploy.toml files.
type deployConfig struct {
	command []string
	env     map[string]string
	mode    string // readiness mode
	adapter string // [app] adapter; "" leaves it out
	listen  string // [[listen]] address; "" is 127.0.0.1:0
	timeout string // [readiness] timeout; "" is 15s
	// listenTOML is added at the end of the [[listen]] table (keys such
	// as `rescue = false`); empty adds nothing.
	listenTOML string
}

// startAgent writes deploy.toml and runs `agent run` until its control
// socket accepts connections.
func startAgent(t *testing.T, dc deployConfig) *agentRun {
	t.Helper()
	bin := buildAgent(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) } // a TOML basic string
	var cmd []string
	for _, c := range dc.command {
		cmd = append(cmd, q(c))
	}
	var env []string
	for k, v := range dc.env {
		env = append(env, k+" = "+q(v))
	}
	sort.Strings(env)
	listen, adapter := dc.listen, ""
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	if dc.timeout == "" {
		dc.timeout = "15s"
	}
	if dc.adapter != "" {
		adapter = "adapter = " + q(dc.adapter) + "\n"
	}
	text := fmt.Sprintf(`root = %s
keep_releases = 3

[app]
command = [%s]
workers = 2
env = { %s }
drain_timeout = "15s"
%s
[[listen]]
name = "http"
address = %s
%s
[readiness]
mode = %s
timeout = %s

[restart]
backoff_min = "50ms"
backoff_max = "1s"

[fetch]
allow = ["http"]
require_checksum = true
`, q(root), strings.Join(cmd, ", "), strings.Join(env, ", "), adapter, q(listen), dc.listenTOML, q(dc.mode), q(dc.timeout))
	a := &agentRun{t: t, bin: bin, cfg: filepath.Join(dir, "deploy.toml"),
		sock: filepath.Join(root, ".agent", "agent.sock"), out: &proctest.SyncBuffer{}, done: make(chan struct{})}
	if err := os.WriteFile(a.cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(bin, "run", "-c", a.cfg)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("agent run: %v", err)
	}
	go func() { a.err = a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.done:
			case <-time.After(30 * time.Second):
				a.cmd.Process.Kill()
				<-a.done
			}
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.out.String())
		}
	})
	proctest.WaitFor(t, 30*time.Second, "the agent's control socket", func() bool {
		select {
		case <-a.done:
			t.Fatalf("agent exited: %v\n%s", a.err, a.out.String())
		default:
		}
		c, err := net.Dial("unix", a.sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return a
}

// cliResult is one run of a client subcommand.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("agent %s: exit %d after %v\nstdout:\n%s\nstderr:\n%s",
		strings.Join(r.args, " "), r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// do runs `agent SUBCOMMAND -c deploy.toml ARGS…`.
func (a *agentRun) do(sub string, args ...string) cliResult {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	argv := append([]string{sub, "-c", a.cfg}, args...)
	cmd := exec.CommandContext(ctx, a.bin, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := cliResult{args: argv, stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			a.t.Fatalf("agent %v: %v", argv, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func (a *agentRun) mustDo(sub string, args ...string) cliResult {
	a.t.Helper()
	r := a.do(sub, args...)
	if r.code != 0 {
		a.t.Fatalf("%v", r)
	}
	return r
}

// status is the part of `agent status --json` the tests read.
type status struct {
	Current     string   `json:"current"`
	Listen      []string `json:"listen"`
	Generations []struct {
		Release string `json:"release"`
		State   string `json:"state"`
		Workers []struct {
			PID      int    `json:"pid"`
			State    string `json:"state"`
			Restarts int    `json:"restarts"`
		} `json:"workers"`
	} `json:"generations"`
	LastDeploys []struct {
		Op     string `json:"op"`
		ID     string `json:"id"`
		Result string `json:"result"`
	} `json:"last_deploys"`
}

func (a *agentRun) status() status {
	a.t.Helper()
	r := a.mustDo("status", "--json")
	var st status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		a.t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// stop sends SIGTERM and wants exit 0 within d.
func (a *agentRun) stop(d time.Duration) {
	a.t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(d):
		a.t.Fatalf("agent still running %v after SIGTERM", d)
	}
	if a.err != nil {
		a.t.Errorf("agent exit after SIGTERM: %v; want 0", a.err)
	}
}
