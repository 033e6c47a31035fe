//go:build linux

package cluster

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// exitedAtOnce is the lifetime under which an exit counts as "at once".
const exitedAtOnce = 2 * time.Second

var addrInUse = regexp.MustCompile(`(?i)EADDRINUSE|address already in use`)

// verdict says in one line why p failed the reload, as far as the master can
// tell from its exit, its output and /proc.
func (m *Master) verdict(p *proc, cause error, lt listenTable) string {
	lines := p.lastLines()
	inUse := ""
	for _, l := range lines {
		if addrInUse.MatchString(l) {
			inUse = l
			break
		}
	}
	if chanClosed(p.done) {
		p.mu.Lock()
		st, ran, ready := p.state, p.exitedAt.Sub(p.started), !p.readyAt.IsZero()
		p.mu.Unlock()
		if inUse != "" {
			return VerdictOwnPort + ": EADDRINUSE in its output"
		}
		if st != nil && st.ExitCode() == 127 {
			for _, l := range lines {
				if strings.HasPrefix(l, "handoff-shim: ") {
					return VerdictNotFound + ": " + strings.TrimPrefix(l, "handoff-shim: ")
				}
			}
		}
		detail := ran.Round(time.Millisecond).String()
		if how, v := p.httpPending(); how != "" {
			detail += "; ready by " + how + ", then " + v
		}
		switch {
		case ready:
			return fmt.Sprintf("%s (after %s)", VerdictExitedReady, detail)
		case ran < exitedAtOnce:
			return fmt.Sprintf("%s (after %s)", VerdictExitedAtOnce, detail)
		default:
			return fmt.Sprintf("%s (after %s)", VerdictExitedEarly, detail)
		}
	}
	// Alive and not ready.
	u := scanTree(p.pid, m.socks.isOurs, true)
	if addrs := lt.listeningAddrs(p.pid, u.foreign); len(addrs) > 0 {
		return VerdictOwnPort + ": listening on " + strings.Join(addrs, ", ")
	}
	if inUse != "" {
		return VerdictOwnPort + ": EADDRINUSE in its output"
	}
	if _, v := p.httpPending(); v != "" {
		return v
	}
	if !errors.Is(cause, ErrReadinessTimeout) {
		return VerdictNotReady
	}
	switch p.cfg.Readiness.Mode {
	case ModeNotify:
		return fmt.Sprintf("%s within %s", VerdictNeverNotify, p.cfg.Readiness.Timeout)
	case ModeDelay:
		return VerdictNotReady
	}
	if u.holds {
		return fmt.Sprintf("%s within %s (holds it, but no epoll registration or accept on it)", VerdictNeverTouched, p.cfg.Readiness.Timeout)
	}
	return fmt.Sprintf("%s within %s", VerdictNeverTouched, p.cfg.Readiness.Timeout)
}
