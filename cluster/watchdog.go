//go:build linux

package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// watchdog is a small process (the shim binary in watchdog mode) that kills
// every worker process group when the master dies, however it dies. Pdeathsig
// only reaches a worker's leader; the watchdog also reaches the descendants
// that stayed in its group. It learns the groups over a pipe whose end of
// file is its cue. Groups that leave (setsid) are out of its reach.
//
// Its protocol ("+PGID", "-PGID" lines, end of file) is part of the
// upgrade contract: a watchdog started by one version of the program is
// fed and stopped by the next.
type watchdog struct {
	mu      sync.Mutex
	w       *os.File
	process *os.Process
}

func startWatchdog(sp *spawner, shimPath string) (*watchdog, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	cmd := &exec.Cmd{
		Path:  shimPath,
		Args:  []string{shimPath},
		Env:   append(os.Environ(), shimEnv+"="+shimWatchdog),
		Stdin: r,
		// Its own group: terminal signals to the master's group miss it.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err = sp.start(cmd)
	r.Close()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("start watchdog: %w", err)
	}
	return &watchdog{w: w, process: cmd.Process}, nil
}

func (d *watchdog) add(pgid int)    { d.send('+', pgid) }
func (d *watchdog) remove(pgid int) { d.send('-', pgid) }

func (d *watchdog) send(op byte, pgid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.w != nil {
		fmt.Fprintf(d.w, "%c%d\n", op, pgid)
	}
}

// stop closes the pipe, which makes the watchdog kill the groups still
// listed (none after a clean shutdown) and exit; it is then reaped.
func (d *watchdog) stop() error {
	d.mu.Lock()
	w := d.w
	d.w = nil
	d.mu.Unlock()
	if w != nil {
		w.Close()
	}
	st, err := d.process.Wait()
	if err != nil {
		return fmt.Errorf("watchdog %d: %w", d.process.Pid, err)
	}
	if !st.Success() {
		return fmt.Errorf("watchdog %d: %s", d.process.Pid, st)
	}
	return nil
}
