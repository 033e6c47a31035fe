//go:build linux

package cluster

import (
	"os"
	"strings"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// Readiness polling of mode listen.
const (
	pollMin = 2 * time.Millisecond
	pollMax = 15 * time.Millisecond

	treeEvery     = 3
	acceptEvery   = 4
	fullScanEvery = 500 * time.Millisecond
)

func (p *proc) markReady(how string) {
	p.readyOnce.Do(func() {
		p.mu.Lock()
		p.readyAt = time.Now()
		p.readyHow = how
		p.mu.Unlock()
		close(p.ready)
	})
}

func (p *proc) isReady() bool {
	select {
	case <-p.ready:
		return true
	default:
		return false
	}
}

// readNotify reads sd_notify datagrams. READY=1 makes the worker ready in
// mode notify (then the HTTP check, if any, starts); STATUS= is kept for Status.
func (p *proc) readNotify() {
	defer p.bg.Done()
	buf := make([]byte, 4096)
	for {
		n, _, err := p.notify.ReadFromUnix(buf)
		if err != nil {
			if !p.paused(err) { // an upgrade hands the socket on
				os.Remove(p.notifyPath)
			}
			return
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			switch {
			case line == sddaemon.SdNotifyReady:
				if p.cfg.Readiness.Mode == ModeNotify {
					p.modeReady("notify")
				}
			case strings.HasPrefix(line, "STATUS="):
				p.mu.Lock()
				p.status = strings.TrimPrefix(line, "STATUS=")
				p.mu.Unlock()
			}
		}
	}
}

// watchReadiness decides readiness in modes listen and delay; it returns
// when the worker is ready or has exited.
func (p *proc) watchReadiness() {
	defer p.bg.Done()
	if p.cfg.Readiness.Mode == ModeDelay {
		t := time.NewTimer(p.cfg.Readiness.Delay - time.Since(p.started))
		defer t.Stop()
		select {
		case <-t.C:
			p.modeReady("delay")
		case <-p.exited:
		}
		return
	}
	// listen: poll /proc, starting fast and backing off to pollMax, so that
	// detection stays within pollMax of the app starting to accept. Each poll
	// scans the known process tree; the tree itself is refreshed every
	// treeEvery polls (processes newer than the worker) and fully every
	// fullScanEvery (pid wrap-around). Threads blocked in accept are looked
	// for on every poll in processes without epoll, every acceptEvery polls
	// in the others.
	interval := pollMin
	t := time.NewTimer(0)
	defer t.Stop()
	lastFull := time.Now()
	var tree []int
	for n := 0; ; n++ {
		select {
		case <-t.C:
		case <-p.exited:
			return
		}
		if n%treeEvery == 0 {
			full := time.Since(lastFull) >= fullScanEvery
			if full {
				lastFull = time.Now()
			}
			tree = processTree(p.pid, !full)
		}
		u := scanPids(tree, p.m.socks.isOurs, false, n%acceptEvery == 0)
		if u.touched {
			p.modeReady(u.how)
			return
		}
		interval = min(interval*5/4+time.Millisecond/4, pollMax)
		t.Reset(interval)
	}
}
