package cluster

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A worker sets O_NONBLOCK on the listening socket it shares with the agent
// and every other worker. Spawning the next worker passes the agent's Files
// through os/exec, which calls Fd on each: that must not clear the flag under
// the workers already serving.
func TestSockets_spawnKeepsWorkersNonblockingFlag(t *testing.T) {
	socks, err := OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}, {Name: "unix", Address: "unix:" + t.TempDir() + "/s"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer socks.Close()
	for i, f := range socks.files {
		// What a worker does with its inherited copy of the descriptor.
		fd, err := unix.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
		f.Fd() // what exec.Cmd.Start does for every ExtraFiles entry
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if flags&unix.O_NONBLOCK == 0 {
			t.Errorf("socket %d (%s): O_NONBLOCK cleared by the agent's Fd call", i, socks.names[i])
		}
	}
}
