//go:build linux

package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file asks the kernel (sock_diag netlink) for the inode of the server
// side of one connection: the socket a worker's accept(2) returned. The
// lookup is exact (one 4-tuple, or one unix socket's peer), so it costs the
// same on a box with ten connections as with a hundred thousand, unlike
// reading /proc/net/tcp.
//
// The inode is 0 while the connection waits in the accept queue: the kernel
// gives a socket its inode when accept grafts it onto a file.

// errNoSocket: the kernel knows no socket for the connection (it is gone).
var errNoSocket = errors.New("no such socket")

// sockDiag is one NETLINK_SOCK_DIAG socket; not safe for concurrent use.
type sockDiag struct {
	fd  int
	buf []byte
}

func newSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sock_diag bind: %w", err)
	}
	return &sockDiag{fd: fd, buf: make([]byte, 8192)}, nil
}

func (d *sockDiag) Close() error { return unix.Close(d.fd) }

// serverInode returns the inode of the socket that the other end of the
// client connection c owns: for TCP the socket whose local address is c's
// remote one and remote address c's local one; for a unix stream socket c's
// peer. 0 means the connection is not accepted yet.
func (d *sockDiag) serverInode(c net.Conn) (uint64, error) {
	switch c := c.(type) {
	case *net.TCPConn:
		return d.tcpInode(c.RemoteAddr().(*net.TCPAddr), c.LocalAddr().(*net.TCPAddr))
	case *net.UnixConn:
		rc, err := c.SyscallConn()
		if err != nil {
			return 0, err
		}
		var st unix.Stat_t
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
			return 0, err
		}
		if serr != nil {
			return 0, serr
		}
		return d.unixPeer(st.Ino)
	}
	return 0, fmt.Errorf("sock_diag: unsupported connection %T", c)
}

// tcpInode looks up the TCP socket with local address local and remote
// address remote.
func (d *sockDiag) tcpInode(local, remote *net.TCPAddr) (uint64, error) {
	family, src, dst := byte(unix.AF_INET), local.IP.To4(), remote.IP.To4()
	if src == nil || dst == nil {
		family, src, dst = unix.AF_INET6, local.IP.To16(), remote.IP.To16()
	}
	// struct inet_diag_req_v2: family, protocol, ext, pad, states, then
	// struct inet_diag_sockid: sport, dport (big endian), src[16], dst[16],
	// if, cookie[2] (~0: no cookie).
	req := make([]byte, 56)
	req[0], req[1] = family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], ^uint32(0))
	binary.BigEndian.PutUint16(req[8:], uint16(local.Port))
	binary.BigEndian.PutUint16(req[10:], uint16(remote.Port))
	copy(req[12:28], src)
	copy(req[28:44], dst)
	binary.NativeEndian.PutUint32(req[48:], ^uint32(0))
	binary.NativeEndian.PutUint32(req[52:], ^uint32(0))
	msg, err := d.query(req)
	if err != nil {
		return 0, err
	}
	// struct inet_diag_msg: family, state, timer, retrans, sockid (48),
	// expires, rqueue, wqueue, uid, inode.
	if len(msg) < 72 {
		return 0, fmt.Errorf("sock_diag: short inet reply (%d bytes)", len(msg))
	}
	return uint64(binary.NativeEndian.Uint32(msg[68:])), nil
}

// unixPeer returns the inode of the peer of unix socket ino.
func (d *sockDiag) unixPeer(ino uint64) (uint64, error) {
	const (
		udiagShowPeer = 0x4
		unixDiagPeer  = 2
	)
	// struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2].
	req := make([]byte, 24)
	req[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(req[4:], ^uint32(0))
	binary.NativeEndian.PutUint32(req[8:], uint32(ino))
	binary.NativeEndian.PutUint32(req[12:], udiagShowPeer)
	binary.NativeEndian.PutUint32(req[16:], ^uint32(0))
	binary.NativeEndian.PutUint32(req[20:], ^uint32(0))
	msg, err := d.query(req)
	if err != nil {
		return 0, err
	}
	// struct unix_diag_msg (16 bytes), then attributes.
	if len(msg) < 16 {
		return 0, fmt.Errorf("sock_diag: short unix reply (%d bytes)", len(msg))
	}
	attrs := msg[16:]
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		typ := binary.NativeEndian.Uint16(attrs[2:])
		if l < 4 || l > len(attrs) {
			break
		}
		if typ == unixDiagPeer && l >= 8 {
			return uint64(binary.NativeEndian.Uint32(attrs[4:])), nil
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return 0, nil // no peer: not connected to anything yet
}

// query sends one SOCK_DIAG_BY_FAMILY request (exact lookup, no dump) and
// returns the payload of the reply.
func (d *sockDiag) query(payload []byte) ([]byte, error) {
	const hdr = unix.SizeofNlMsghdr
	b := make([]byte, hdr+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST)
	copy(b[hdr:], payload)
	if err := unix.Sendto(d.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag send: %w", err)
	}
	n, _, err := unix.Recvfrom(d.fd, d.buf, 0)
	if err != nil {
		return nil, fmt.Errorf("sock_diag receive: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(d.buf[:n])
	if err != nil || len(msgs) == 0 {
		return nil, fmt.Errorf("sock_diag: bad reply: %v", err)
	}
	m := msgs[0]
	if m.Header.Type == unix.NLMSG_ERROR {
		if len(m.Data) >= 4 {
			if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				if syscall.Errno(errno) == syscall.ENOENT {
					return nil, errNoSocket
				}
				return nil, fmt.Errorf("sock_diag: %w", syscall.Errno(errno))
			}
		}
		return nil, errNoSocket
	}
	return m.Data, nil
}
