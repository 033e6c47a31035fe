package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/loadgen"

	"github.com/handoff/handoff/internal/proctest"
)

// upgradedVersion is the version string of the "new" agent binary.
const upgradedVersion = "e2e-upgraded"

// buildUpgraded links the agent again with another version string (the
// packages come from the build cache, so this is a link).
func buildUpgraded(t *testing.T, out string) {
	t.Helper()
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + upgradedVersion}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the new agent: %v\n%s", err, b)
	}
}

// install copies src to dst.
func install(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// relink points the symlink link at target, atomically, the way versioned
// installs switch versions.
func relink(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// spawnAt runs `agent run` from bin and waits until it answers.
func (s *setup) spawnAt(bin string, env []string) *agentProc {
	s.t.Helper()
	p := s.spawnBin(bin, env)
	s.waitUp(p)
	return p
}

// statusWhen polls `agent status --json` until it answers (the control socket
// is served by the new program a moment after the execve) and cond holds.
func (s *setup) statusWhen(what string, cond func(*control.StatusDoc) bool) *control.StatusDoc {
	s.t.Helper()
	var st *control.StatusDoc
	proctest.WaitFor(s.t, 30*time.Second, what, func() bool {
		r := s.do("status", "--json")
		if r.code != 0 {
			return false
		}
		st = &control.StatusDoc{}
		if err := json.Unmarshal([]byte(r.stdout), st); err != nil {
			s.t.Fatalf("status --json: %v\n%s", err, r.stdout)
		}
		return cond(st)
	})
	return st
}

func servingPids(st *control.StatusDoc) []int {
	var pids []int
	for _, g := range st.Generations {
		for _, w := range g.Workers {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// children lists the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, c)
		}
	}
	return out
}

// TestE2E_upgradeInPlace: SIGUSR2 makes `agent run` re-execute the binary
// now at its path (a symlink switched to the new version), under load: same agent pid, same worker pids, no failed
// request and no refused connection; a binary that is not an agent is
// refused and changes nothing; a deploy after the upgrade works; kill -9 of
// the upgraded agent takes every worker and the watchdog down.
func TestE2E_upgradeInPlace(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	n := listenNotify(t)
	// bin/agent is a symlink to the installed version, as in
	// /usr/local/bin/agent -> /opt/handoff/<version>/agent.
	bin := filepath.Join(s.dir, "bin", "agent")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	oldBin, newBin, notAgent := filepath.Join(s.dir, "agent-old"), filepath.Join(s.dir, "agent-new"), filepath.Join(s.dir, "not-agent")
	install(t, agentBin, oldBin)
	relink(t, oldBin, bin)
	buildUpgraded(t, newBin)
	if err := os.WriteFile(notAgent, []byte("#!/bin/sh\necho not an agent\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	p := s.spawnAt(bin, []string{"NOTIFY_SOCKET=" + n.path})
	s.mustDo("deploy", "--id", "v1", s.art.app(t, "v1", nil))
	before := s.status()
	pids := servingPids(before)
	if len(pids) != 2 || before.PID != p.cmd.Process.Pid || before.Version == upgradedVersion {
		t.Fatalf("before: %+v", before)
	}
	addr := s.appAddr()

	keep := startLoad(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	fresh, err := loadgen.Start(ctx, loadgen.Options{Addr: addr, Conns: 2, KeepAlive: false, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh.Stop() })
	proctest.WaitFor(t, 10*time.Second, "load", func() bool { return keep.Snapshot().OK > 20 && fresh.Snapshot().OK > 20 })
	k0, f0 := checkLoad(t, "before", keep, nil), checkLoad(t, "before (new connections)", fresh, nil)

	// Not an agent at the path: refused, nothing changes.
	relink(t, notAgent, bin)
	p.cmd.Process.Signal(syscall.SIGUSR2)
	proctest.WaitFor(t, 20*time.Second, "the refused upgrade in the log", func() bool {
		return strings.Contains(p.log(), "Upgrade refused or failed")
	})
	if !strings.Contains(p.log(), "new binary cannot take over") {
		t.Errorf("refusal does not say why:\n%s", p.log())
	}
	if st := s.status(); st.PID != before.PID || !slices.Equal(servingPids(st), pids) || st.Version != before.Version {
		t.Fatalf("after a refused upgrade: %+v", st)
	}

	// The new version at the path: upgraded in place.
	relink(t, newBin, bin)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGUSR2)
	n.expect(t, "RELOADING=1\nSTATUS=upgrading the agent in place")
	after := s.statusWhen("the upgraded agent", func(st *control.StatusDoc) bool { return st.Version == upgradedVersion })
	took := time.Since(start)
	if after.PID != before.PID {
		t.Errorf("agent pid %d after the upgrade, want %d", after.PID, before.PID)
	}
	if got := servingPids(after); !slices.Equal(got, pids) {
		t.Errorf("worker pids %v after the upgrade, want %v", got, pids)
	}
	if after.Current != "v1" || len(after.Generations) != 1 || after.Generations[0].ID != before.Generations[0].ID ||
		after.Uptime < before.Uptime {
		t.Errorf("after the upgrade: %+v (before %+v)", after, before)
	}
	n.expect(t, "READY=1")
	proctest.WaitFor(t, 10*time.Second, "load after the upgrade", func() bool {
		return keep.Snapshot().OK > k0.OK+20 && fresh.Snapshot().OK > f0.OK+20
	})
	k1 := checkLoad(t, "upgrade", keep, k0)
	f1 := checkLoad(t, "upgrade (new connections)", fresh, f0)
	t.Logf("upgrade: status answered by the new agent %s after SIGUSR2", took.Round(time.Millisecond))

	// The upgraded agent deploys as before.
	r := s.mustDo("deploy", "--id", "v2", s.art.app(t, "v2", nil))
	if !strings.Contains(r.stdout, "deployed v2") {
		t.Errorf("deploy after the upgrade: %v", r)
	}
	if got := proctest.Get(t, addr); got != "hello from v2" {
		t.Errorf("after deploying v2: %q", got)
	}
	checkLoad(t, "deploy after the upgrade", keep, k1)
	checkLoad(t, "deploy after the upgrade (new connections)", fresh, f1)
	res := keep.Stop()
	fres := fresh.Stop()
	if res.Bodies["hello from v1"] == 0 || res.Bodies["hello from v2"] == 0 {
		t.Errorf("bodies %v", res.Bodies)
	}
	if fres.Failed[loadgen.KindRefused] != 0 {
		t.Errorf("refused connections: %v", fres.Failed)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("v1 worker %d alive after deploying v2", pid)
		}
	}

	// kill -9 of the upgraded agent: its workers and the watchdog go too.
	kids := children(p.cmd.Process.Pid)
	if v2 := servingPids(s.status()); len(kids) < 3 || !slices.Contains(kids, v2[0]) || !slices.Contains(kids, v2[1]) {
		t.Fatalf("children %v: want the v2 workers %v and the watchdog", kids, v2)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
	proctest.WaitFor(t, 2*time.Second, "every child of the killed agent gone", func() bool {
		for _, pid := range kids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
	proctest.WaitFor(t, 2*time.Second, "the port free", func() bool {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			l.Close()
		}
		return err == nil
	})
}
