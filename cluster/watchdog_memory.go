//go:build linux

package cluster

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// shedStartupMemory gives back what the watchdog touched only while the
// program started: it is the whole agent binary re-executed, and the package
// initialisers of everything the agent links fault in megabytes of its text
// and read-only data that the watchdog's loop never runs again. Those pages
// stay in the page cache (the agent maps the same file); only this process's
// resident set shrinks. Read-only file mappings are the only ones dropped:
// a private page that was written to would be lost, one that never was is
// read again from the file if it is ever touched.
func shedStartupMemory() {
	debug.FreeOSMemory()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-00c2b000 r-xp 00000000 fd:01 1234 /usr/local/bin/agent
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		// A raw call: the range is this process's own mapping, not a Go slice.
		unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	}
}
