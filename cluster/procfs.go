//go:build linux

package cluster

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// This file reads /proc: process trees, process groups, and which sockets a
// process holds, registers in epoll, accepts on or listens on.

// procStat is the part of /proc/<pid>/stat the master needs.
type procStat struct {
	pid, ppid, pgrp int
	state           byte
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	// pid (comm) state ppid pgrp ...; comm may contain spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 3 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgrp, _ := strconv.Atoi(f[2])
	return procStat{pid: pid, ppid: ppid, pgrp: pgrp, state: f[0][0]}, true
}

// allStats reads the stat of every process, or with minPid > 0 only of
// processes whose pid is at least minPid.
func allStats(minPid int) []procStat {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	out := make([]procStat, 0, len(names))
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		pid, err := strconv.Atoi(n)
		if err != nil || pid < minPid {
			continue
		}
		if st, ok := readStat(pid); ok {
			out = append(out, st)
		}
	}
	return out
}

// processTree returns root and its live descendants, root first. With
// recentOnly it reads only processes with a pid above root's, which is where
// descendants are unless pids wrapped around since root started: cheap
// enough to run on every readiness poll, with a full scan now and then.
func processTree(root int, recentOnly bool) []int {
	minPid := 0
	if recentOnly {
		minPid = root + 1
	}
	children := map[int][]int{}
	for _, st := range allStats(minPid) {
		if st.state != 'Z' {
			children[st.ppid] = append(children[st.ppid], st.pid)
		}
	}
	tree := []int{root}
	for i := 0; i < len(tree) && len(tree) < 4096; i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree
}

// groupMembers returns the live (non-zombie) processes of process group pgid
// other than the leader pgid itself.
// With recentOnly it reads only processes with a pid above pgid, where the
// leader's descendants are unless pids wrapped around.
func groupMembers(pgid int, recentOnly bool) []int {
	minPid := 0
	if recentOnly {
		minPid = pgid + 1
	}
	var out []int
	for _, st := range allStats(minPid) {
		if st.pgrp == pgid && st.pid != pgid && st.state != 'Z' {
			out = append(out, st.pid)
		}
	}
	return out
}

// acceptSyscalls are the syscall numbers of accept and accept4.
var acceptSyscalls = map[string][2]int64{
	"amd64": {43, 288},
	"arm64": {202, 242},
	"386":   {-1, 364},
}

// socketUse is what one scan of a process found.
type socketUse struct {
	touched bool     // one of ours is in an epoll set or accepted on
	how     string   // "epoll" or "accept"
	holds   bool     // holds one of ours in its fd table
	foreign []uint64 // socket inodes that are not ours
	scanned int      // processes scanned
}

// scanTree looks at every process of root's tree and reports whether one of
// them registered one of ours in epoll or blocks in accept on it. With
// collectForeign it also gathers the other socket inodes of the tree.
func scanTree(root int, ours func(uint64) bool, collectForeign bool) socketUse {
	return scanPids(processTree(root, false), ours, collectForeign, true)
}

// scanPids is scanTree over a known list of processes. The threads' syscalls
// (accept) are read for a process without an epoll fd, and for every
// process when acceptAlways is set.
func scanPids(pids []int, ours func(uint64) bool, collectForeign, acceptAlways bool) socketUse {
	var u socketUse
	for _, pid := range pids {
		u.scanned++
		scanPid(pid, ours, collectForeign, acceptAlways, &u)
		if u.touched && !collectForeign {
			return u
		}
	}
	return u
}

func scanPid(pid int, ours func(uint64) bool, collectForeign, acceptAlways bool, u *socketUse) {
	base := "/proc/" + strconv.Itoa(pid)
	d, err := os.Open(base + "/fd")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var epolls []string
	ourFds := map[int64]bool{}
	for _, n := range names {
		link, err := os.Readlink(base + "/fd/" + n)
		if err != nil {
			continue
		}
		switch {
		case link == "anon_inode:[eventpoll]":
			epolls = append(epolls, n)
		case strings.HasPrefix(link, "socket:["):
			ino, err := strconv.ParseUint(strings.TrimSuffix(link[len("socket:["):], "]"), 10, 64)
			if err != nil {
				continue
			}
			if ours(ino) {
				fd, _ := strconv.ParseInt(n, 10, 64)
				ourFds[fd] = true
			} else if collectForeign {
				u.foreign = append(u.foreign, ino)
			}
		}
	}
	if len(ourFds) == 0 {
		return
	}
	u.holds = true
	if u.touched {
		return
	}
	for _, n := range epolls {
		b, err := os.ReadFile(base + "/fdinfo/" + n)
		if err != nil {
			continue
		}
		if epollHasOurs(b, ours) {
			u.touched, u.how = true, "epoll"
			return
		}
	}
	nrs, ok := acceptSyscalls[runtime.GOARCH]
	if !ok || (len(epolls) > 0 && !acceptAlways) {
		return
	}
	tasks, err := os.Open(base + "/task")
	if err != nil {
		return
	}
	tids, _ := tasks.Readdirnames(-1)
	tasks.Close()
	for _, tid := range tids {
		b, err := os.ReadFile(base + "/task/" + tid + "/syscall")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			continue
		}
		nr, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || (nr != nrs[0] && nr != nrs[1]) {
			continue
		}
		fd, err := strconv.ParseInt(strings.TrimPrefix(f[1], "0x"), 16, 64)
		if err == nil && ourFds[fd] {
			u.touched, u.how = true, "accept"
			return
		}
	}
}

// epollHasOurs parses an epoll fdinfo ("tfd: 3 events: 19 data: … ino:2a3b sdev:8").
func epollHasOurs(fdinfo []byte, ours func(uint64) bool) bool {
	sc := bufio.NewScanner(bytes.NewReader(fdinfo))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "tfd:") {
			continue
		}
		i := strings.Index(line, " ino:")
		if i < 0 {
			continue
		}
		v := line[i+len(" ino:"):]
		if j := strings.IndexByte(v, ' '); j >= 0 {
			v = v[:j]
		}
		ino, err := strconv.ParseUint(v, 16, 64)
		if err == nil && ours(ino) {
			return true
		}
	}
	return false
}

// listenTable maps listening socket inodes to their addresses, per network
// namespace; /proc/net/tcp can be long on a busy box, so it is read once per
// namespace and table.
type listenTable map[string]map[uint64]string

// listeningAddrs returns the listening addresses, as seen from pid's network
// namespace, of those socket inodes that are listening sockets.
func (t listenTable) listeningAddrs(pid int, inodes []uint64) []string {
	if len(inodes) == 0 {
		return nil
	}
	base := "/proc/" + strconv.Itoa(pid)
	ns, _ := os.Readlink(base + "/ns/net")
	tab, ok := t[ns]
	if !ok {
		tab = readListening(base + "/net/")
		t[ns] = tab
	}
	var out []string
	for _, ino := range inodes {
		if a, ok := tab[ino]; ok {
			out = append(out, a)
		}
	}
	return out
}

func readListening(dir string) map[uint64]string {
	tab := map[uint64]string{}
	var fs [10][]byte
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(dir + f)
		if err != nil {
			continue
		}
		for _, l := range bytes.Split(b, []byte{'\n'})[1:] {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if fieldsN(l, fs[:]) < 10 || string(fs[3]) != "0A" {
				continue
			}
			if ino, err := strconv.ParseUint(string(fs[9]), 10, 64); err == nil {
				tab[ino] = decodeProcAddr(string(fs[1]))
			}
		}
	}
	if b, err := os.ReadFile(dir + "unix"); err == nil {
		var fs [8][]byte
		for _, l := range bytes.Split(b, []byte{'\n'})[1:] {
			// Num RefCount Protocol Flags Type St Inode [Path]; Flags 00010000 = listening.
			n := fieldsN(l, fs[:])
			if n < 7 || string(fs[3]) != "00010000" {
				continue
			}
			if ino, err := strconv.ParseUint(string(fs[6]), 10, 64); err == nil {
				p := "(unnamed)"
				if n > 7 {
					p = string(fs[7])
				}
				tab[ino] = "unix:" + p
			}
		}
	}
	return tab
}

// fieldsN splits l on spaces into at most len(fs) fields, returning how many.
func fieldsN(l []byte, fs [][]byte) int {
	n := 0
	for i := 0; i < len(l) && n < len(fs); {
		for i < len(l) && l[i] == ' ' {
			i++
		}
		j := i
		for j < len(l) && l[j] != ' ' {
			j++
		}
		if j > i {
			fs[n] = l[i:j]
			n++
		}
		i = j
	}
	return n
}

// decodeProcAddr turns "0100007F:1F90" into "127.0.0.1:8080".
func decodeProcAddr(s string) string {
	hostHex, portHex, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	h, err := hex.DecodeString(hostHex)
	if err != nil {
		return s
	}
	// /proc prints each 32-bit word in host (little-endian) order.
	for i := 0; i+4 <= len(h); i += 4 {
		h[i], h[i+1], h[i+2], h[i+3] = h[i+3], h[i+2], h[i+1], h[i]
	}
	port, _ := strconv.ParseUint(portHex, 16, 16)
	return net.JoinHostPort(net.IP(h).String(), fmt.Sprint(port))
}
