package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/handoff/handoff/cluster"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/release"
)

func setupDeploy(fs *flag.FlagSet) func([]string) int {
	var cf clientFlags
	cf.register(fs)
	id := fs.String("id", "", "release `id` (a git sha, a build number); default: generated from the time")
	wait := fs.Bool("wait", false, "queue behind a running deploy or rollback instead of failing busy (newest waiter wins)")
	asJSON := fs.Bool("json", false, "print the event stream as JSON lines")
	return func(args []string) int {
		if len(args) != 1 {
			return usageErr("deploy needs exactly one URL (flags go before it): agent deploy [--id ID] [--wait] [--json] URL")
		}
		if *id != "" {
			if err := release.ValidateID(*id); err != nil {
				return usageErr("--id %q: %v", *id, err)
			}
		}
		url := args[0]
		if strings.TrimSpace(url) == "" {
			return usageErr("deploy: empty URL")
		}
		// The agent runs elsewhere: a relative local path means this
		// shell's directory.
		if !strings.Contains(url, "://") && !strings.Contains(url, "::") && !filepath.IsAbs(url) {
			if _, err := os.Stat(url); err == nil {
				if abs, err := filepath.Abs(url); err == nil {
					url = abs
				}
			}
		}
		return clientOp(&cf, control.Request{Op: control.OpDeploy, URL: url, ID: *id, Wait: *wait}, *asJSON)
	}
}

func setupRollback(fs *flag.FlagSet) func([]string) int {
	var cf clientFlags
	cf.register(fs)
	to := fs.String("to", "", "release `id` to roll back to (default: the newest successful release before current)")
	wait := fs.Bool("wait", false, "queue behind a running deploy or rollback instead of failing busy")
	asJSON := fs.Bool("json", false, "print the event stream as JSON lines")
	return func(args []string) int {
		if len(args) != 0 {
			return usageErr("rollback takes no arguments (use --to ID)")
		}
		if *to != "" {
			if err := release.ValidateID(*to); err != nil {
				return usageErr("--to %q: %v", *to, err)
			}
		}
		return clientOp(&cf, control.Request{Op: control.OpRollback, To: *to, Wait: *wait}, *asJSON)
	}
}

func setupReload(fs *flag.FlagSet) func([]string) int {
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print the event stream as JSON lines")
	return func(args []string) int {
		if len(args) != 0 {
			return usageErr("reload takes no arguments")
		}
		if cf.socket == "" {
			// The agent re-reads the file itself; one this client cannot
			// read is refused here already, with its errors.
			sock, code := cf.socketPath()
			if code != exitOK {
				fmt.Fprintln(os.Stderr, "agent: reload not sent: nothing changed; the agent's running config stays in force")
				return code
			}
			cf.socket = sock
		}
		return clientOp(&cf, control.Request{Op: control.OpReload}, *asJSON)
	}
}

func setupStatus(fs *flag.FlagSet) func([]string) int {
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print one JSON document")
	return func(args []string) int {
		if len(args) != 0 {
			return usageErr("status takes no arguments")
		}
		res, code := clientCall(&cf, control.Request{Op: control.OpStatus}, nil)
		if code != exitOK {
			return code
		}
		if res.Status == nil {
			fmt.Fprintln(os.Stderr, "agent: status: empty reply")
			return exitFailed
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(res.Status)
			return exitOK
		}
		printStatus(os.Stdout, res.Status)
		return exitOK
	}
}

func setupHistory(fs *flag.FlagSet) func([]string) int {
	var cf clientFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	return func(args []string) int {
		if len(args) != 0 {
			return usageErr("history takes no arguments")
		}
		res, code := clientCall(&cf, control.Request{Op: control.OpHistory}, nil)
		if code != exitOK {
			return code
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			h := res.History
			if h == nil {
				h = []control.HistoryEntry{}
			}
			enc.Encode(h)
			return exitOK
		}
		printHistory(os.Stdout, res.History)
		return exitOK
	}
}

// clientCall sends req and returns the result, or prints the failure and
// returns its exit code.
func clientCall(cf *clientFlags, req control.Request, onEvent func(control.Message)) (control.Message, int) {
	sock, code := cf.socketPath()
	if code != exitOK {
		return control.Message{}, code
	}
	res, err := control.Call(sock, req, onEvent)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		if errors.Is(err, control.ErrUnreachable) {
			return control.Message{}, exitUnreachable
		}
		return control.Message{}, exitFailed
	}
	if res.Code != control.CodeOK {
		printFailure(os.Stderr, req, res)
		return res, control.ExitCode(res.Code)
	}
	return res, exitOK
}

// clientOp runs a deploy, rollback or reload, rendering its events.
func clientOp(cf *clientFlags, req control.Request, asJSON bool) int {
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		sock, code := cf.socketPath()
		if code != exitOK {
			return code
		}
		res, err := control.Call(sock, req, func(m control.Message) { enc.Encode(m) })
		if err != nil {
			fmt.Fprintf(os.Stderr, "agent: %v\n", err)
			if errors.Is(err, control.ErrUnreachable) {
				return exitUnreachable
			}
			return exitFailed
		}
		enc.Encode(res)
		return control.ExitCode(res.Code)
	}
	r := newRenderer(os.Stdout, isTerminal(os.Stdout))
	res, code := clientCall(cf, req, r.event)
	r.close()
	if code == exitOK {
		printSuccess(os.Stdout, req, res)
	}
	return code
}

func printSuccess(w io.Writer, req control.Request, res control.Message) {
	el := fmtDur(time.Duration(res.Elapsed * float64(time.Second)))
	switch req.Op {
	case control.OpDeploy:
		fmt.Fprintf(w, "deployed %s in %s", res.ID, el)
	case control.OpRollback:
		fmt.Fprintf(w, "rolled back to %s in %s", res.ID, el)
	case control.OpReload:
		fmt.Fprintf(w, "reloaded %s in %s", res.ID, el)
	}
	if res.From != "" && res.From != res.ID {
		fmt.Fprintf(w, " (was %s)", res.From)
	}
	fmt.Fprintln(w)
	if c := res.Config; c != nil {
		printConfigChange(w, c)
	}
	for _, l := range res.ListenLost {
		fmt.Fprintf(w, "warning: %s\n", summarizeLost(&l))
	}
}

// printConfigChange is the line of a reload's re-read config: the keys it
// changed, never a value.
func printConfigChange(w io.Writer, c *control.ConfigChange) {
	switch {
	case c.Applied && len(c.Changed) > 0:
		fmt.Fprintf(w, "config %s: changed %s (%s -> %s)\n", c.Path, strings.Join(c.Changed, ", "), c.Before, c.After)
	case c.Applied:
		fmt.Fprintf(w, "config %s: no key changed (%s -> %s)\n", c.Path, c.Before, c.After)
	case c.Read != "" && c.Read != c.Before && len(c.Changed) > 0:
		fmt.Fprintf(w, "config %s: not applied (would change %s); in force: %s\n", c.Path, strings.Join(c.Changed, ", "), c.Before)
	default:
		fmt.Fprintf(w, "config %s: unchanged (%s)\n", c.Path, c.Before)
	}
}

func printFailure(w io.Writer, req control.Request, res control.Message) {
	what := req.Op
	switch res.Code {
	case control.CodeBusy:
		fmt.Fprintf(w, "agent: busy: %s\n", res.Error)
		if req.Op == control.OpDeploy || req.Op == control.OpRollback {
			fmt.Fprintf(w, "agent: use --wait to queue behind it\n")
		}
		return
	case control.CodeSuperseded:
		fmt.Fprintf(w, "agent: %s not run: %s\n", what, res.Error)
		return
	case control.CodeForbidden:
		fmt.Fprintf(w, "agent: refused: %s\n", res.Error)
		return
	case control.CodeUsage:
		fmt.Fprintf(w, "agent: %s: %s\n", what, res.Error)
		return
	case control.CodeConfig, control.CodeRestartNeeded:
		fmt.Fprintln(w, res.Error)
		inForce := ""
		if res.Config != nil {
			inForce = " (" + res.Config.Before + ")"
		}
		fmt.Fprintf(w, "agent: %s refused: nothing changed; the running config%s stays in force\n", what, inForce)
		return
	}
	fmt.Fprintf(w, "%s failed: %s\n", what, res.Error)
	for _, f := range res.Failures {
		fmt.Fprintf(w, "  worker %d (pid %d): %s", f.Worker, f.PID, orDash(f.ExitStatus))
		if f.Verdict != "" {
			fmt.Fprintf(w, " — %s", f.Verdict)
		}
		fmt.Fprintln(w)
		for _, l := range f.LastLines {
			fmt.Fprintf(w, "    | %s\n", l)
		}
	}
	switch {
	case res.Restored != "":
		fmt.Fprintf(w, "restored: current is %s again; its workers kept serving\n", res.Restored)
	case req.Op != control.OpDeploy && req.Op != control.OpRollback:
	case res.Current == res.From:
		fmt.Fprintf(w, "nothing changed: current is %s\n", orNone(res.Current))
	default:
		fmt.Fprintf(w, "current is now %s (was %s)\n", orNone(res.Current), orNone(res.From))
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

func fmtBytes(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// renderer prints events as a few plain lines a stage; on a terminal it also
// keeps one transient line (download bar, workers ready, elapsed time)
// redrawn by a ticker goroutine that close stops and waits for.
type renderer struct {
	w   io.Writer
	tty bool

	mu         sync.Mutex
	stage      control.Stage
	stageStart time.Time
	transient  string
	shown      bool

	stop chan struct{}
	done chan struct{}
}

func newRenderer(w io.Writer, tty bool) *renderer {
	r := &renderer{w: w, tty: tty, stop: make(chan struct{}), done: make(chan struct{})}
	if !r.tty {
		close(r.done)
		return r
	}
	go func() {
		defer close(r.done)
		t := time.NewTicker(150 * time.Millisecond)
		defer t.Stop()
		spin := 0
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				spin++
				r.mu.Lock()
				if r.stage != "" {
					r.drawLocked(`|/-\`[spin%4 : spin%4+1])
				}
				r.mu.Unlock()
			}
		}
	}()
	return r
}

func (r *renderer) drawLocked(spin string) {
	line := fmt.Sprintf("%s %-12s %s %s", spin, r.stage, fmtDur(time.Since(r.stageStart).Truncate(100*time.Millisecond)), r.transient)
	fmt.Fprintf(r.w, "\r\033[K%s", line)
	r.shown = true
}

func (r *renderer) clearLocked() {
	if r.shown {
		fmt.Fprint(r.w, "\r\033[K")
		r.shown = false
	}
}

func (r *renderer) println(format string, a ...any) {
	r.clearLocked()
	fmt.Fprintf(r.w, format+"\n", a...)
}

func (r *renderer) event(m control.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m.Stage != "" && m.Stage != r.stage {
		r.stage = m.Stage
		r.stageStart = m.Time
		r.transient = ""
	}
	switch m.Kind {
	case control.KindProgress:
		if !r.tty {
			return
		}
		if m.Total > 0 {
			const width = 30
			n := int(float64(width) * float64(m.Done) / float64(m.Total))
			n = min(max(n, 0), width)
			r.transient = fmt.Sprintf("[%s%s] %s / %s", strings.Repeat("=", n), strings.Repeat(" ", width-n), fmtBytes(m.Done), fmtBytes(m.Total))
		} else {
			r.transient = fmtBytes(m.Done)
		}
	case control.KindWorker:
		if r.tty {
			r.transient = m.Message
		}
	case control.KindOutput:
		r.println("    | %s", m.Message)
	case control.KindWarn:
		r.println("%-12s warning: %s", m.Stage, m.Message)
	default:
		r.println("%-12s %s", m.Stage, m.Message)
	}
	if r.tty && r.stage != "" {
		r.drawLocked(" ")
	}
}

func (r *renderer) close() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
	r.mu.Lock()
	r.clearLocked()
	r.mu.Unlock()
}

func printStatus(w io.Writer, s *control.StatusDoc) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	cur := s.Current
	if cur == "" {
		cur = "(none: waiting for the first deploy)"
	}
	if s.CurrentError != "" {
		cur += "  ! " + s.CurrentError
	}
	fmt.Fprintf(tw, "current\t%s\n", cur)
	fmt.Fprintf(tw, "root\t%s\n", s.Root)
	fmt.Fprintf(tw, "agent\tpid %d, up %s, version %s\n", s.PID, fmtDur(time.Duration(s.Uptime*float64(time.Second))), s.Version)
	fmt.Fprintf(tw, "listen\t%s\n", strings.Join(s.Listen, ", "))
	if s.Metrics != "" {
		fmt.Fprintf(tw, "metrics\t%s\n", s.Metrics)
	}
	if s.Running != nil {
		fmt.Fprintf(tw, "running\t%s %s since %s\n", s.Running.Op, s.Running.ID, s.Running.Since.Local().Format("15:04:05"))
	}
	if s.Waiting != nil {
		fmt.Fprintf(tw, "queued\t%s %s since %s\n", s.Waiting.Op, s.Waiting.ID, s.Waiting.Since.Local().Format("15:04:05"))
	}
	if c := s.Config; c != nil {
		fmt.Fprintf(tw, "config\t%s %s, read %s\n", c.Path, c.Digest, c.Since.Local().Format("2006-01-02 15:04:05"))
		for _, f := range c.EnvFiles {
			fmt.Fprintf(tw, "env file\t%s %s: %s\n", f.Path, f.Digest, strings.Join(f.Keys, ", "))
		}
	}
	if r := s.Rescued; r.Held > 0 || r.Error != "" {
		fmt.Fprintf(tw, "rescued\t%s\n", cluster.RescueStats(r))
	}
	if s.ListenersLost > 0 {
		fmt.Fprintf(tw, "listeners lost\t%d, last at %s: %s\n", s.ListenersLost, s.LastListenerLost.Time.Local().Format("15:04:05"), summarizeLost(s.LastListenerLost))
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GEN\tRELEASE\tSTATE\tWORKER\tPID\tWORKER STATE\tRESTARTS\tUPTIME\tLAST EXIT")
	if len(s.Generations) == 0 {
		fmt.Fprintln(tw, "-\t-\tno workers\t\t\t\t\t\t")
	}
	for _, g := range s.Generations {
		if len(g.Workers) == 0 {
			fmt.Fprintf(tw, "%d\t%s\t%s\t-\t\t\t\t\t\n", g.ID, g.ReleaseID, g.State)
		}
		for i, wk := range g.Workers {
			gen, rel, st := "", "", ""
			if i == 0 {
				gen, rel, st = fmt.Sprint(g.ID), g.ReleaseID, g.State
			}
			restarts := fmt.Sprint(wk.Restarts)
			if wk.Backoff > 0 {
				restarts += fmt.Sprintf(" (crash loop, backoff %s)", fmtDur(time.Duration(wk.Backoff*float64(time.Second))))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", gen, rel, st, wk.ID, wk.PID, wk.State, restarts,
				fmtDur(time.Duration(wk.Uptime*float64(time.Second))), orDash(wk.LastExit))
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "last deploys:")
	printHistory(w, s.LastDeploys)
}

func printHistory(w io.Writer, h []control.HistoryEntry) {
	if len(h) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tOP\tRELEASE\tFROM\tRESULT\tDURATION\tDETAIL")
	for _, e := range h {
		detail := e.Error
		if detail == "" {
			detail = e.URL
		}
		if i := strings.IndexByte(detail, '\n'); i >= 0 {
			detail = detail[:i]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Op, e.ID, orDash(e.From), e.Result,
			fmtDur(time.Duration(e.DurationNS)), detail)
	}
	tw.Flush()
}
