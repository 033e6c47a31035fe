package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// handoffMgr runs `agent run` on a release root and deploys releases of the
// fixture app to it with `agent deploy`.
type handoffMgr struct {
	b       *bench
	ad      string
	cfg     string
	root    string
	agent   *child
	held    *os.File // the listening socket the bench holds as systemd would, in socket-unit mode
	seq     int      // release ids
	runs    int      // agent run processes
	current string   // release id that should serve now
	prev    []string
	env     map[string]string
	tag     string // names the root, the config and the logs
	quorum  string // [readiness] quorum: "all" or a number
}

// startHandoff writes a deploy.toml, starts `agent run` and deploys the
// first release. env goes to the workers ([app] env), quorum to [readiness].
func (b *bench) startHandoff(ctx context.Context, tag string, env map[string]string, quorum string) (*handoffMgr, error) {
	if b.agent == "" {
		return nil, errNoAgent
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	m := &handoffMgr{b: b, ad: fmt.Sprintf("127.0.0.1:%d", port), env: env, tag: tag, quorum: quorum}
	m.root = filepath.Join(b.work, "handoff-"+tag)
	m.cfg = filepath.Join(b.work, "deploy-"+tag+".toml")
	if err := m.writeConfig(); err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() { m.stop() })
	if err := m.startAgent(ctx, false); err != nil {
		return nil, err
	}
	if _, err := m.deploy(ctx, m.nextID(), "app.js"); err != nil {
		return nil, fmt.Errorf("handoff: first deploy: %w", err)
	}
	if err := waitServing(ctx, m.ad, 15*time.Second, bodyHasToken(m.current)); err != nil {
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return m, nil
}

func (m *handoffMgr) writeConfig() error {
	var env []string
	for k, v := range m.env {
		env = append(env, fmt.Sprintf("%s = %q", k, v))
	}
	cfg := fmt.Sprintf(`# written by cmd/bench
root = %q
keep_releases = 3

[app]
command = [%q, "app.js"]
workers = %d
drain_timeout = "10s"
env = { %s }

[[listen]]
name = "http"
address = %q

[readiness]
mode = "listen"
timeout = %q
quorum = %s
`, m.root, m.b.node, m.b.workers, strings.Join(env, ", "), m.ad, m.b.readyTimeout.String(), quorumTOML(m.quorum))
	if err := os.WriteFile(m.cfg, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("handoff: write config: %w", err)
	}
	return nil
}

// startAgent starts `agent run`: bound by the agent itself, or, with
// socketUnit, under systemd-socket-activate with the listening socket
// held by the bench the way systemd holds a .socket unit's socket, so that it
// outlives any one agent process and connections queue while none runs.
func (m *handoffMgr) startAgent(ctx context.Context, socketUnit bool) error {
	m.runs++
	name := fmt.Sprintf("agent-%s-run-%d", m.tag, m.runs)
	argv := []string{m.b.agent, "run", "-c", m.cfg}
	var files []*os.File
	var env []string
	if socketUnit {
		if m.held == nil {
			f, _, err := listenFile(m.ad)
			if err != nil {
				return fmt.Errorf("handoff: hold socket: %w", err)
			}
			m.held = f
		}
		// systemd-socket-activate passes sockets it was itself given through
		// LISTEN_FDS on to the daemon, named by --fdname, and execs it (same
		// pid) on the first connection.
		argv = socketActivated(append([]string{m.b.socketActivate, "--fdname=http"}, argv...))
		files = []*os.File{m.held}
		env = socketEnv
	}
	c, err := m.b.procs.start(spawn{name: name, argv: argv, env: env, dir: m.b.work, files: files})
	if err != nil {
		return err
	}
	m.agent = c
	if socketUnit {
		// The agent is exec'd on the first connection: in a row, the load
		// makes it; here, one probe does, and waits in the queue.
		go probe(m.ad)
	}
	return m.waitAgent(ctx, 20*time.Second)
}

// waitAgent polls `agent status` until it answers.
func (m *handoffMgr) waitAgent(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if m.agent.exited() {
			return fmt.Errorf("handoff: agent exited: %v: %s", m.agent.err, tail(m.agent.logPath(m.b.procs), 8))
		}
		_, err := m.status(ctx)
		if err == nil {
			return nil
		}
		last = err
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("handoff: agent not answering after %v: %v", timeout, last)
}

// agentStatus is the part of `agent status --json` the bench reads.
type agentStatus struct {
	Current     string `json:"current"`
	PID         int    `json:"pid"`
	Generations []struct {
		ID        int    `json:"id"`
		ReleaseID string `json:"release"`
		State     string `json:"state"`
		Workers   []struct {
			PID   int    `json:"pid"`
			State string `json:"state"`
		} `json:"workers"`
	} `json:"generations"`
}

func (m *handoffMgr) status(ctx context.Context) (*agentStatus, error) {
	out, err := m.b.procs.output(ctx, spawn{name: "agent-status", argv: []string{m.b.agent, "status", "-c", m.cfg, "--json"}}, 10*time.Second)
	if err != nil {
		return nil, err
	}
	var st agentStatus
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("agent status --json: %w", err)
	}
	return &st, nil
}

// waitGenerationServing polls `agent status --json` until a generation is
// serving with every worker ready, and returns when it saw that.
func (m *handoffMgr) waitGenerationServing(ctx context.Context, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if st, err := m.status(ctx); err == nil {
			for _, g := range st.Generations {
				ready := 0
				for _, w := range g.Workers {
					if w.State == "ready" {
						ready++
					}
				}
				if g.State == "serving" && ready == m.b.workers {
					return time.Now(), nil
				}
			}
		}
		if !sleepCtx(ctx, 25*time.Millisecond) {
			return time.Time{}, ctx.Err()
		}
	}
	return time.Time{}, fmt.Errorf("handoff: no generation serving after %v", timeout)
}

func (m *handoffMgr) nextID() string {
	m.seq++
	return "r" + strconv.Itoa(m.seq)
}

// deploy publishes a release of the fixture file main as app.js and runs
// `agent deploy --json --id id URL`; it returns the agent's own "ready" time.
func (m *handoffMgr) deploy(ctx context.Context, id, main string) (marks, error) {
	files, err := appRelease(id, m.b.fixture(main))
	if err != nil {
		return marks{}, err
	}
	url, err := m.b.artifacts.add(id+".tar.gz", files)
	if err != nil {
		return marks{}, err
	}
	ready, err := m.cli(ctx, "deploy-"+id, "deploy", "-c", m.cfg, "--json", "--id", id, url)
	if err == nil {
		m.prev = append(m.prev, m.current)
		m.current = id
	}
	return ready, err
}

func (m *handoffMgr) rollback(ctx context.Context) (marks, error) {
	ready, err := m.cli(ctx, "rollback", "rollback", "-c", m.cfg, "--json")
	if err == nil && len(m.prev) > 0 {
		m.current = m.prev[len(m.prev)-1]
		m.prev = m.prev[:len(m.prev)-1]
	}
	return ready, err
}

func (m *handoffMgr) cli(ctx context.Context, name string, args ...string) (marks, error) {
	s := spawn{name: "agent-" + m.tag + "-" + name, argv: append([]string{m.b.agent}, args...), dir: m.b.work}
	c, err := m.b.procs.start(s)
	if err != nil {
		return marks{}, err
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		m.b.procs.stop(c, 5*time.Second)
		return marks{}, ctx.Err()
	}
	events, _ := readEvents(c.logPath(m.b.procs))
	if c.err != nil {
		msg := tail(c.logPath(m.b.procs), 3)
		for _, e := range events {
			if e.Type == "result" && e.Error != "" {
				msg = e.Code + ": " + e.Error
			}
		}
		// A failed reload has no ready time, whatever its workers did late.
		return marks{spawn: reloadStart(events)}, fmt.Errorf("agent %s: %v: %s", args[0], c.err, msg)
	}
	return marks{ready: readyTime(events), spawn: reloadStart(events)}, nil
}

func (m *handoffMgr) name() string { return "handoff" }
func (m *handoffMgr) addr() string { return m.ad }
func (m *handoffMgr) pid() int {
	if m.agent == nil || m.agent.exited() {
		return 0
	}
	return m.agent.pid()
}

// workers are the agent's descendants other than its own helpers.
func (m *handoffMgr) workers() []procInfo {
	w, _ := m.split()
	return w
}

// helpers are the agent binary's own other processes (its watchdog; a
// worker shim not yet exec'd), counted with the agent's usage.
func (m *handoffMgr) helpers() []procInfo {
	_, h := m.split()
	return h
}

func (m *handoffMgr) split() (workers, helpers []procInfo) {
	p := m.pid()
	if p <= 0 {
		return nil, nil
	}
	for _, d := range descendants(p) {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.PID)); err == nil && exe == m.b.agent {
			helpers = append(helpers, d)
		} else {
			workers = append(workers, d)
		}
	}
	return workers, helpers
}

func (m *handoffMgr) reload(int) action {
	id := m.nextID()
	return action{
		op:    "deploy",
		do:    func(ctx context.Context) (marks, error) { return m.deploy(ctx, id, "app.js") },
		isNew: bodyHasToken(id),
	}
}

// failedDeploy deploys a release whose app never listens: the agent must
// refuse it and keep the old workers serving.
func (m *handoffMgr) failedDeploy() action {
	id := m.nextID()
	return action{
		op: "failed deploy",
		do: func(ctx context.Context) (marks, error) {
			// Success here is the agent refusing the release.
			ready, err := m.deploy(ctx, id, "broken.js")
			if err == nil {
				return ready, fmt.Errorf("deploy of broken release %s succeeded", id)
			}
			m.b.logger.Info("Broken release refused", "id", id, "err", err)
			return ready, nil
		},
		keepsOld: true,
	}
}

func (m *handoffMgr) rollbackAction() action {
	target := ""
	if len(m.prev) > 0 {
		target = m.prev[len(m.prev)-1]
	}
	return action{
		op:    "rollback",
		do:    m.rollback,
		isNew: bodyHasToken(target),
	}
}

// restartAction SIGTERMs the agent by pid and starts it again under
// systemd-socket-activate; the bench holds the socket meanwhile.
func (m *handoffMgr) restartAction() action {
	return action{
		op: "agent restart",
		do: func(ctx context.Context) (marks, error) {
			old := m.agent
			if err := syscall.Kill(old.pid(), syscall.SIGTERM); err != nil {
				return marks{}, fmt.Errorf("kill agent %d: %w", old.pid(), err)
			}
			select {
			case <-old.done:
			case <-time.After(30 * time.Second):
				return marks{}, fmt.Errorf("agent %d still running 30s after SIGTERM", old.pid())
			}
			if err := m.startAgent(ctx, true); err != nil {
				return marks{}, err
			}
			at, err := m.waitGenerationServing(ctx, 30*time.Second)
			return marks{ready: at}, err
		},
	}
}

func (m *handoffMgr) stop() error {
	if m.agent != nil {
		m.b.procs.stop(m.agent, 15*time.Second)
	}
	if m.held != nil {
		m.held.Close()
		m.held = nil
	}
	return nil
}
