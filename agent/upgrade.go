package main

// In-place upgrade of `agent run` (SIGUSR2): the agent re-executes the
// binary found at its path now, keeping its pid, its listening sockets, its
// control socket and its running workers. See cluster.Master.Upgrade for
// what is handed over and what happens when something fails.
//
// Refused, with nothing changed: while a deploy, rollback or reload runs
// (send SIGUSR2 again once it is done); when the new binary is not an agent
// of a compatible handover version (cluster's probe); when the new binary
// rejects the config (it runs `status -c CONFIG` first). Once the execve
// happened, a new agent that fails before it resumed exits, and its workers
// die with it; systemd restarts it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/control"
)

// earlySignals catches, in an agent started by an upgrade, the signals that
// arrive before runDaemon listens for them: their default action would end
// the process, and the workers with it. replayEarlySignals hands them on.
var earlySignals chan os.Signal

func init() {
	if cluster.Upgraded() {
		earlySignals = make(chan os.Signal, 8)
		signal.Notify(earlySignals, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	}
}

// replayEarlySignals passes the signals caught since the start to sigs,
// which listens for them now.
func replayEarlySignals(sigs chan os.Signal) {
	if earlySignals == nil {
		return
	}
	signal.Stop(earlySignals)
	for {
		select {
		case s := <-earlySignals:
			select {
			case sigs <- s:
			default:
			}
		default:
			return
		}
	}
}

// controlFile names the control socket among the files handed over.
const controlFile = "control"

// upgradeState is the agent's own part of the handover.
type upgradeState struct {
	Binary   string    `json:"binary"`   // the path re-executed, the agent's path at its first start
	Start    time.Time `json:"start"`    // when the first agent of this pid started
	Upgrades int       `json:"upgrades"` // in-place upgrades of this pid so far
	From     string    `json:"from"`     // version of the agent that handed over
}

// upgrader is the daemon's upgrade bookkeeping.
type upgrader struct {
	state       upgradeState
	resumed     bool     // this process was started by an upgrade
	metricsFile *os.File // the metrics endpoint's socket handed over, if any (metrics.go)
}

// opUpgrade marks the daemon busy while it upgrades itself.
const opUpgrade = "upgrade"

// openSockets opens the listening sockets, or adopts the ones the agent
// this process replaced handed over.
func (d *daemon) openSockets(specs []cluster.ListenSpec) (*cluster.Sockets, error) {
	d.up.state = upgradeState{Start: d.start, Binary: invokedPath()}
	if !cluster.Upgraded() {
		return cluster.OpenSockets(specs, d.log)
	}
	d.up.resumed = true
	socks, err := cluster.ResumeSockets(d.log)
	if err != nil {
		return nil, err
	}
	var want []string
	for _, s := range specs {
		want = append(want, s.Name)
	}
	if len(specs) > 0 && !slices.Equal(want, socks.Names()) {
		d.log.Warn("The [[listen]] config differs from the sockets handed over; they are kept until a restart", "config", want, "kept", socks.Names())
	}
	return socks, nil
}

// invokedPath is the path this program was started by (argv[0], looked up
// in PATH when it has no slash), so that an upgrade follows a symlink such
// as /usr/local/bin/agent -> /opt/handoff/2.1/agent as it points then;
// os.Executable, which has symlinks resolved, when that fails.
func invokedPath() string {
	p := os.Args[0]
	var err error
	if !strings.Contains(p, "/") {
		p, err = exec.LookPath(p)
	}
	if err == nil {
		p, err = filepath.Abs(p)
	}
	if err != nil {
		if exe, xerr := os.Executable(); xerr == nil {
			return exe
		}
	}
	return p
}

// newMaster starts the cluster master, or resumes the one handed over.
func (d *daemon) newMaster(cfg cluster.Config, socks *cluster.Sockets) (*cluster.Master, error) {
	if !d.up.resumed {
		return cluster.NewMaster(cfg, socks)
	}
	return cluster.ResumeMaster(cfg, socks)
}

// listenControl serves the control socket, or adopts the one handed over
// (a new path in the config replaces it).
func (d *daemon) listenControl(path string, gid int) (*net.UnixListener, error) {
	if !d.up.resumed {
		return control.Listen(path, gid, d.log)
	}
	files, state := cluster.InheritedFiles()
	var st upgradeState
	if err := json.Unmarshal(state, &st); err != nil {
		d.log.Warn("Unreadable agent state in the handover", "err", err)
	} else {
		st.Upgrades++
		d.up.state, d.start = st, st.Start
	}
	d.log.Info("Upgraded in place", "from", st.From, "to", agentVersion(), "upgrades", d.up.state.Upgrades)
	f := files[controlFile]
	d.up.metricsFile = files[metricsFile]
	for name, f := range files {
		if name != controlFile && name != metricsFile {
			f.Close()
		}
	}
	if f == nil {
		d.log.Warn("No control socket in the handover: listening anew")
		return control.Listen(path, gid, d.log)
	}
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket handed over: %w", err)
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("control socket handed over is a %T", l)
	}
	ln.SetUnlinkOnClose(true)
	if got := ln.Addr().String(); got != path {
		d.log.Info("Control socket moved by the config", "from", got, "to", path)
		ln.Close()
		return control.Listen(path, gid, d.log)
	}
	return ln, nil
}

// upgradeOnSignal is SIGUSR2: upgrade in place, or log why not and go on.
func (d *daemon) upgradeOnSignal(ctx context.Context, ln *net.UnixListener) {
	d.log.Info("SIGUSR2: upgrading the agent in place", "binary", d.up.state.Binary, "version", agentVersion())
	if err := d.upgrade(ctx, ln); err != nil {
		d.log.Error("Upgrade refused or failed: this agent goes on", "err", err)
	}
}

// upgrade re-executes the agent binary with this process's arguments,
// handing over the cluster and the control socket. It returns only on
// failure; then nothing changed. While it runs, operations are refused as
// busy.
func (d *daemon) upgrade(ctx context.Context, ln *net.UnixListener) error {
	o := &op{req: control.Request{Op: opUpgrade}, since: time.Now(), started: time.Now(), log: control.NewLog()}
	d.mu.Lock()
	switch {
	case d.stopping:
		d.mu.Unlock()
		return fmt.Errorf("upgrade: the agent is shutting down")
	case d.running != nil:
		r := d.running
		d.mu.Unlock()
		return fmt.Errorf("upgrade: %s is running since %s; send SIGUSR2 again once it is done", r.describe(), r.since.Format("15:04:05"))
	}
	d.running = o
	d.mu.Unlock()
	defer func() {
		o.log.Finish(control.Message{Code: control.CodeOK, Op: opUpgrade})
		d.mu.Lock()
		defer d.mu.Unlock()
		d.doneLocked(ctx)
	}()

	if err := d.checkConfig(ctx, d.up.state.Binary); err != nil {
		return err
	}
	f, err := ln.File()
	if err != nil {
		return fmt.Errorf("upgrade: control socket: %w", err)
	}
	defer f.Close()
	files := map[string]*os.File{controlFile: f}
	if mf := d.metrics.file(); mf != nil {
		defer mf.Close()
		files[metricsFile] = mf
	}
	st := d.up.state
	st.From = agentVersion()
	state, _ := json.Marshal(st)
	notify(d.log, sddaemon.SdNotifyReloading, sdStatus+"upgrading the agent in place")
	err = d.master.Upgrade(ctx, st.Binary, os.Args, files, state)
	d.markReady(d.statusLine())
	return err
}

// checkConfig has the new binary load the config (`status -c CONFIG`, which
// asks this agent for its status): exit code 2 means it rejects it.
func (d *daemon) checkConfig(ctx context.Context, binary string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "status", "-c", d.cfg.Path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == exitUsage {
		return fmt.Errorf("upgrade: %s rejects the config: %s", binary, strings.TrimSpace(stderr.String()))
	}
	// Any other failure (not executable, crashed) is the probe's to report.
	return nil
}
