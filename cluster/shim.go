//go:build linux

package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// shimEnv is the environment marker that turns a process started from
// Config.ShimPath into the worker shim ("exec") or the watchdog ("watchdog").
const shimEnv = "HANDOFF_SHIM"

const (
	shimExec     = "exec"
	shimWatchdog = "watchdog"
	shimProbe    = "probe"
)

// RunShimIfRequested must be called first thing in main() (and in TestMain) of
// the binary named by Config.ShimPath. In an ordinary start it returns at once.
//
// Started by a Master as a worker shim, it sets LISTEN_PID to its own pid,
// removes its marker from the environment and replaces itself with the worker
// command (looked up in the worker's PATH, relative names against the worker's
// directory): it never returns, and leaves nothing behind. If the command
// cannot be executed it prints one line to stderr and exits with status 127.
//
// Started as the master's watchdog, it reads process group ids from stdin and,
// when stdin reaches end of file (the master exited, however it died), sends
// SIGKILL to every group still listed, then exits.
//
// Started by Master.Upgrade as a probe of the new binary, it prints the
// handover version it speaks and exits 0.
func RunShimIfRequested() {
	switch os.Getenv(shimEnv) {
	case shimProbe:
		fmt.Println(probeAnswer)
		os.Exit(0)
	case shimExec:
		os.Unsetenv(shimEnv)
		os.Exit(runShim(os.Args[1:]))
	case shimWatchdog:
		os.Unsetenv(shimEnv)
		shedStartupMemory()
		os.Exit(runWatchdog())
	}
}

func runShim(argv []string) int {
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "handoff-shim: no command to run")
		return 127
	}
	path, err := exec.LookPath(argv[0])
	if err != nil && !errors.Is(err, exec.ErrDot) {
		fmt.Fprintf(os.Stderr, "handoff-shim: cannot run %s: %v\n", argv[0], err)
		return 127
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	err = syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "handoff-shim: cannot run %s: exec %s: %v\n", argv[0], path, err)
	return 127
}

// runWatchdog keeps a set of process groups given on stdin as "+PGID" and
// "-PGID" lines and kills those left when stdin closes.
func runWatchdog() int {
	groups := map[int]bool{}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if len(line) < 2 {
			continue
		}
		pgid, err := strconv.Atoi(line[1:])
		if err != nil || pgid <= 1 {
			continue
		}
		switch line[0] {
		case '+':
			groups[pgid] = true
		case '-':
			delete(groups, pgid)
		}
	}
	for pgid := range groups {
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	return 0
}
