package proctest

import (
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ListenInode is the inode (decimal, as /proc shows it) of the IPv4 TCP
// socket listening on port, or "" when none listens there.
func ListenInode(t testing.TB, port int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return f[9]
		}
	}
	return ""
}

// SocketFDs lists the fds of process pid open on the socket with inode, in
// ascending order; none when the process is gone.
func SocketFDs(pid int, inode string) []int {
	target := "socket:[" + inode + "]"
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	entries, _ := os.ReadDir(dir)
	var out []int
	for _, e := range entries {
		if l, err := os.Readlink(dir + e.Name()); err == nil && l == target {
			if fd, err := strconv.Atoi(e.Name()); err == nil {
				out = append(out, fd)
			}
		}
	}
	sort.Ints(out)
	return out
}

// SocketHolders lists the pids of every process that holds the socket with
// inode open.
func SocketHolders(inode string) []int {
	procs, _ := os.ReadDir("/proc")
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err == nil && len(SocketFDs(pid, inode)) > 0 {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}
