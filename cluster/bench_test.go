package cluster

import (
	"os"
	"os/exec"
	"testing"
)

func benchWorker(b *testing.B) (*Sockets, int) {
	socks, err := OpenSockets([]ListenSpec{{Name: "http", Address: "127.0.0.1:0"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), "CLUSTER_TEST_ROLE=worker", "HELPER_MODE="+modeNever)
	cmd.ExtraFiles = socks.files
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); socks.Close() })
	return socks, cmd.Process.Pid
}

func BenchmarkScanPidEpollOnly(b *testing.B) {
	socks, pid := benchWorker(b)
	for b.Loop() {
		scanPids([]int{pid}, socks.isOurs, false, false)
	}
}

func BenchmarkScanPid(b *testing.B) {
	socks, pid := benchWorker(b)
	for b.Loop() {
		var u socketUse
		scanPid(pid, socks.isOurs, false, true, &u)
	}
}

func BenchmarkProcessTreeFull(b *testing.B) {
	for b.Loop() {
		processTree(os.Getpid(), false)
	}
}

func BenchmarkProcessTreeRecent(b *testing.B) {
	_, pid := benchWorker(b)
	for b.Loop() {
		processTree(pid, true)
	}
}
