//go:build linux

package cluster

import (
	"errors"
	"os/exec"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spawner starts every child of a Master, and makes an Upgrade's execve,
// from one OS thread. Pdeathsig is delivered when the thread that forked the
// child exits (golang/go#27505), not the process; a child started from an
// arbitrary goroutine could be killed whenever the runtime retires that
// thread. execve ends every thread of the process but the caller, which
// takes over the pid: only the children of the thread that calls execve keep
// their parent thread.
//
// Under RunMain the spawner is the process's main thread, shared by every
// Master of the process: after an execve made from it, the new program's
// main thread is the same thread, the parent of every worker handed over,
// and RunMain in the new program makes it the spawner again, so a worker
// started before any number of upgrades and one started after them share
// one parent thread. Without RunMain each Master has a goroutine locked to a
// thread of its own for its life.
type spawner struct {
	reqs   chan spawnReq
	done   chan struct{}
	main   bool // the process's main thread (RunMain)
	shared bool // process-wide: stop does nothing
}

type spawnReq struct {
	fn    func() error
	reply chan error
}

// errSpawnerGone: RunMain returned; nothing can be started any more.
var errSpawnerGone = errors.New("spawner thread is gone (RunMain returned)")

var mainSpawner atomic.Pointer[spawner]

func init() {
	// Keep the main goroutine on the main thread into main.main, so that
	// RunMain can make that thread the spawner (runtime.LockOSThread's
	// documented use for main-thread work).
	runtime.LockOSThread()
}

// RunMain runs run on a new goroutine while the calling goroutine, which
// must be the program's main goroutine on its main thread (call RunMain from
// main, after RunShimIfRequested), starts every worker of every Master of the
// process; it returns what run returns. Master.Upgrade needs it, in the
// program that upgrades and in the new program: see Upgrade. Called from
// another goroutine, it just returns run().
func RunMain(run func() int) int {
	if unix.Gettid() != unix.Getpid() {
		return run()
	}
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{}), main: true, shared: true}
	mainSpawner.Store(s)
	defer mainSpawner.Store(nil)
	defer close(s.done)
	code := make(chan int, 1)
	go func() { code <- run() }()
	for {
		select {
		case r := <-s.reqs:
			r.reply <- r.fn()
		case c := <-code:
			return c
		}
	}
}

// newSpawner returns the RunMain spawner if there is one, else starts a
// spawner thread of its own.
func newSpawner() *spawner {
	if s := mainSpawner.Load(); s != nil {
		return s
	}
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		// Never unlocked: when this goroutine returns, its thread exits with
		// it, after stop() made sure that no child is left.
		runtime.LockOSThread()
		defer close(s.done)
		close(started)
		for r := range s.reqs {
			r.reply <- r.fn()
		}
	}()
	<-started
	return s
}

// do runs fn on the spawner's thread.
func (s *spawner) do(fn func() error) error {
	reply := make(chan error, 1)
	select {
	case s.reqs <- spawnReq{fn: fn, reply: reply}:
	case <-s.done:
		return errSpawnerGone
	}
	return <-reply
}

// start runs cmd.Start on the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	return s.do(cmd.Start)
}

// stop ends a Master's own spawner goroutine and waits for it. Call it only
// once every child it started has been reaped, and never start afterwards.
// The shared RunMain spawner is left alone.
func (s *spawner) stop() {
	if s.shared {
		return
	}
	close(s.reqs)
	<-s.done
}
