package cluster

import (
	"os/exec"
	"runtime"
)

// spawner starts every child of a Master from one goroutine locked to its OS
// thread for the Master's life. Pdeathsig is delivered when the thread that
// forked the child exits (golang/go#27505), not the process; a child started
// from an arbitrary goroutine could be killed whenever the runtime retires
// that thread.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		// Never unlocked: when this goroutine returns, its thread exits with
		// it, after stop() made sure that no child is left.
		runtime.LockOSThread()
		defer close(s.done)
		close(started)
		for r := range s.reqs {
			r.reply <- r.cmd.Start()
		}
	}()
	<-started
	return s
}

// start runs cmd.Start on the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	reply := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, reply: reply}
	return <-reply
}

// stop ends the spawner goroutine and waits for it. Call it only once every
// child it started has been reaped, and never start afterwards.
func (s *spawner) stop() {
	close(s.reqs)
	<-s.done
}
