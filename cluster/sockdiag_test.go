package cluster

import (
	"net"
	"path/filepath"
	"syscall"
	"testing"
)

func connInode(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	rc.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The server side of a connection has no inode while it waits in the
// accept queue, and the accepted socket's inode once accepted.
func TestSockDiag_ServerInode(t *testing.T) {
	d, err := newSockDiag()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, tc := range []struct{ network, addr string }{
		{"tcp", "127.0.0.1:0"},
		{"tcp", "[::1]:0"},
		{"unix", filepath.Join(t.TempDir(), "s.sock")},
	} {
		t.Run(tc.network+" "+tc.addr, func(t *testing.T) {
			l, err := net.Listen(tc.network, tc.addr)
			if err != nil {
				t.Skipf("listen %s: %v", tc.addr, err) // no IPv6 on this box
			}
			defer l.Close()
			c, err := net.Dial(tc.network, l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if ino, err := d.serverInode(c); err != nil || ino != 0 {
				t.Fatalf("before accept: inode %d, %v; want 0", ino, err)
			}
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			want := connInode(t, s)
			if ino, err := d.serverInode(c); err != nil || ino != want {
				t.Fatalf("after accept: inode %d, %v; want %d", ino, err, want)
			}
		})
	}
}
