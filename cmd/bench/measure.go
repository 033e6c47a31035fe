package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/handoff/handoff/loadgen"
)

const (
	modeKeepAlive = "keep-alive"
	modeNewConn   = "new-conn"
)

// Row is one measured line of the benchmark.
type Row struct {
	Manager  string `json:"manager"`  // alone | handoff | cluster-master | pm2
	Scenario string `json:"scenario"` // baseline | reloads | failed-deploy | rollback | agent-restart
	Mode     string `json:"mode"`     // keep-alive | new-conn
	Shutdown string `json:"shutdown"` // the app's stop policy: graceful | default
	Conns    int    `json:"conns"`

	Seconds        float64          `json:"seconds"`
	Requests       int64            `json:"requests"`
	OK             int64            `json:"ok"`
	Failed         map[string]int64 `json:"failed"`
	FailedTotal    int64            `json:"failed_total"`
	StaleKeepAlive int64            `json:"stale_keepalive"`
	RPS            float64          `json:"rps"`
	MedianSecond   int64            `json:"median_second"`
	WorstSecond    int64            `json:"worst_second"`
	BestRound      int64            `json:"best_round_median_second"` // the best round's median second (rounds only lose to the machine's other work)
	PerSecond      []int64          `json:"per_second"`
	P50MS          float64          `json:"p50_ms"`
	P99MS          float64          `json:"p99_ms"`
	MaxMS          float64          `json:"max_ms"`
	Bodies         map[string]int64 `json:"bodies"`
	Errors         []string         `json:"errors,omitempty"`

	Reloads []Reload `json:"reloads,omitempty"`
	// ManagerUsage is the agent's (with its watchdog), the cluster
	// master's or pm2's daemon's; WorkersUsage the app processes together.
	ManagerUsage *Usage `json:"manager_usage,omitempty"`
	WorkersUsage *Usage `json:"workers_usage,omitempty"`
	// OthersCPUPercent is the CPU (% of one core) the machine spent
	// outside the benchmark (not the bench, the manager or the workers)
	// during the row: how noisy the machine was.
	OthersCPUPercent float64 `json:"others_cpu_percent"`
	// CPUPerRequestUS is the workers' and the manager's CPU time per OK
	// response, in µs: what a request costs, however much CPU the machine
	// had to spare.
	CPUPerRequestUS float64 `json:"cpu_per_request_us"`
	Note            string  `json:"note,omitempty"`
	// Rounds are the baseline's rounds this row merges.
	Rounds []Row `json:"rounds,omitempty"`
}

// Reload is one triggered reload (or deploy, rollback, restart) under load.
// Durations are from the trigger, in milliseconds; -1 means never seen.
type Reload struct {
	N     int    `json:"n"`
	Op    string `json:"op"`
	OK    bool   `json:"ok"` // the manager's own verdict (exit status)
	Error string `json:"error,omitempty"`
	// ReadyMS: the manager said the new generation is ready (handoff's
	// event stream; -1 for managers that do not say).
	ReadyMS float64 `json:"ready_ms"`
	// SpawnMS: the manager began starting the new generation (handoff:
	// after fetch, unpack and activate; -1 for the others).
	SpawnMS float64 `json:"spawn_ms"`
	// FirstNewMS: the load got its first response from the new generation.
	FirstNewMS float64 `json:"first_new_ms"`
	// OldGoneMS: every worker that ran at the trigger has exited.
	OldGoneMS float64 `json:"old_gone_ms"`
	// CommandMS: the trigger command returned (agent deploy, pm2 reload).
	CommandMS float64 `json:"command_ms"`
}

// Usage is a process set's memory and CPU over a row.
type Usage struct {
	PIDs      int       `json:"pids"`
	PerPID    []float64 `json:"per_pid_cpu_percent,omitempty"` // each worker's CPU %, to show how connections were split
	RSSPerPID []int64   `json:"rss_per_pid_kib,omitempty"`     // the manager's processes (the agent, its watchdog)
	RSSKiB    int64     `json:"rss_kib"`                       // at the end of the row, summed
	// PSSKiB counts a page shared by several processes (the agent binary's
	// text, mapped by the agent and by its watchdog) once, split between them.
	PSSKiB     int64   `json:"pss_kib,omitempty"`
	CPUPercent float64 `json:"cpu_percent"` // of one core, over the row
}

// marks are times a manager reports about one reload.
type marks struct {
	ready time.Time // the new generation is ready
	spawn time.Time // it began starting the new generation (handoff: after fetch, unpack and activate)
}

// action is one trigger in a row: a reload, a deploy, a rollback, a restart.
type action struct {
	op string
	// do triggers and returns once the manager's command returns; the
	// marks are what the manager itself says, zero when it does not.
	do func(ctx context.Context) (marks, error)
	// isNew tells a response body of the generation this action brings up;
	// nil when no new generation is expected (a failed deploy).
	isNew func(body string) bool
	// keepsOld: the workers running at the trigger must survive it.
	keepsOld bool
}

type rowPlan struct {
	steady  time.Duration // no actions: load this long
	actions []action      // one per period
	first   time.Duration // first trigger after the load starts
	every   time.Duration // trigger period
	tail    time.Duration // load after the last action completed
	limit   time.Duration // no action starts after this long (0: none)
}

// runRow drives load at m for the plan and fills row.
func (b *bench) runRow(ctx context.Context, m manager, row *Row, plan rowPlan) error {
	row.Manager, row.Conns = m.name(), b.conns
	if row.Shutdown == "" {
		row.Shutdown = "graceful"
	}
	b.logger.Info("Row", "manager", row.Manager, "scenario", row.Scenario, "mode", row.Mode, "shutdown", row.Shutdown)
	usage := startUsage(m)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run, err := loadgen.Start(lctx, loadgen.Options{
		Addr:      m.addr(),
		Conns:     b.conns,
		KeepAlive: row.Mode == modeKeepAlive,
		Timeout:   5 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("row %s/%s/%s: %w", row.Manager, row.Scenario, row.Mode, err)
	}
	var actErr error
	if len(plan.actions) == 0 {
		sleepCtx(ctx, plan.steady)
	} else {
		actErr = b.runActions(ctx, m, run, row, plan)
	}
	res := run.Stop()
	row.ManagerUsage, row.WorkersUsage = usage.end(m)
	row.OthersCPUPercent = usage.others(row.ManagerUsage, row.WorkersUsage)
	fillRow(row, res)
	row.CPUPerRequestUS = cpuPerRequest(row)
	b.logger.Info("Row done", "manager", row.Manager, "scenario", row.Scenario, "mode", row.Mode,
		"requests", row.Requests, "failed", row.FailedTotal, "stale", row.StaleKeepAlive,
		"rps", int(row.RPS), "p99_ms", row.P99MS, "reloads", len(row.Reloads))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return actErr
}

func fillRow(row *Row, res *loadgen.Result) {
	row.Seconds = res.Elapsed.Seconds()
	row.Requests, row.OK = res.Requests, res.OK
	row.Failed, row.FailedTotal = res.Failed, res.FailedTotal
	row.StaleKeepAlive = res.StaleKeepAlive
	row.RPS = res.RPS()
	row.MedianSecond, row.WorstSecond = res.MedianSecond(), res.WorstSecond()
	row.PerSecond = res.PerSecond
	row.P50MS, row.P99MS, row.MaxMS = ms(res.P50), ms(res.P99), ms(res.Max)
	row.Bodies = res.Bodies
	row.Errors = res.Errors
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// runActions triggers plan.actions, one per period, each after the previous
// one completed (old generation gone, or the command returned for an action
// that keeps the old one), and records each one's timings.
func (b *bench) runActions(ctx context.Context, m manager, run *loadgen.Run, row *Row, plan rowPlan) error {
	begin := time.Now()
	next := begin.Add(plan.first)
	for i, a := range plan.actions {
		if plan.limit > 0 && time.Since(begin) > plan.limit {
			row.Note = fmt.Sprintf("%d of %d reloads: each took longer than the %v period", i, len(plan.actions), plan.every)
			b.logger.Warn("Row over its time limit", "manager", row.Manager, "done", i, "planned", len(plan.actions))
			break
		}
		if !sleepUntil(ctx, next) {
			return ctx.Err()
		}
		r := b.trigger(ctx, m, run, a)
		r.N = i + 1
		row.Reloads = append(row.Reloads, r)
		b.logger.Info("Reload", "manager", row.Manager, "op", r.Op, "n", r.N, "ok", r.OK,
			"ready_ms", r.ReadyMS, "first_new_ms", r.FirstNewMS, "old_gone_ms", r.OldGoneMS, "err", r.Error)
		next = next.Add(plan.every)
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
	sleepCtx(ctx, plan.tail)
	return nil
}

// trigger runs one action while watching the load's response bodies for the
// new generation and /proc for the old one's exit.
func (b *bench) trigger(ctx context.Context, m manager, run *loadgen.Run, a action) Reload {
	r := Reload{Op: a.op, ReadyMS: -1, SpawnMS: -1, FirstNewMS: -1, OldGoneMS: -1}
	old := m.workers()
	var seenBefore int64
	if a.isNew != nil {
		seenBefore = countBodies(run.Snapshot(), a.isNew)
	}
	t0 := time.Now()
	type outcome struct {
		marks
		err error
		at  time.Time
	}
	doneCh := make(chan outcome, 1)
	go func() {
		mk, err := a.do(ctx)
		doneCh <- outcome{mk, err, time.Now()}
	}()
	var out *outcome
	newSeen := a.isNew == nil
	oldGone := len(old) == 0
	const watchMax = 20 * time.Second
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if out == nil {
			select {
			case o := <-doneCh:
				out = &o
			default:
			}
		}
		now := time.Now()
		if !newSeen && countBodies(run.Snapshot(), a.isNew) > seenBefore {
			newSeen = true
			r.FirstNewMS = ms(now.Sub(t0))
		}
		if !oldGone && !anyAlive(old) {
			oldGone = true
			r.OldGoneMS = ms(now.Sub(t0))
		}
		finished := out != nil && (newSeen || out.err != nil) && (oldGone || a.keepsOld || out.err != nil)
		// An action that keeps the old workers, or failed, is finished when
		// its command returns; give the watchers a moment past that only
		// when they are still expected to see something.
		if finished || now.Sub(t0) > watchMax || ctx.Err() != nil {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	if out == nil {
		select {
		case o := <-doneCh:
			out = &o
		case <-ctx.Done():
			o := <-doneCh
			out = &o
		}
	}
	r.CommandMS = ms(out.at.Sub(t0))
	r.OK = out.err == nil
	if out.err != nil {
		r.Error = out.err.Error()
	}
	if !out.ready.IsZero() {
		r.ReadyMS = ms(out.ready.Sub(t0))
	}
	if !out.spawn.IsZero() {
		r.SpawnMS = ms(out.spawn.Sub(t0))
	}
	if a.keepsOld && anyAlive(old) {
		r.OldGoneMS = -1
	}
	return r
}

func countBodies(res *loadgen.Result, isNew func(string) bool) int64 {
	var n int64
	for body, c := range res.Bodies {
		if isNew(body) {
			n += c
		}
	}
	return n
}

func anyAlive(list []procInfo) bool {
	for _, p := range list {
		if alive(p) {
			return true
		}
	}
	return false
}

// helperer is a manager with processes of its own beside the workers
// (the agent's watchdog), counted in its usage.
type helperer interface{ helpers() []procInfo }

func managerProcs(m manager) []procInfo {
	var out []procInfo
	if pid := m.pid(); pid > 0 {
		if p, err := readProc(pid); err == nil {
			out = append(out, p)
		}
	}
	if h, ok := m.(helperer); ok {
		out = append(out, h.helpers()...)
	}
	return out
}

// usageMark remembers CPU ticks at a row's start.
type usageMark struct {
	at      time.Time
	busy    uint64 // machine-wide busy ticks (/proc/stat)
	self    uint64 // the bench's own ticks
	mgr     map[int]procInfo
	workers map[int]procInfo
}

func startUsage(m manager) usageMark {
	u := usageMark{at: time.Now(), mgr: map[int]procInfo{}, workers: map[int]procInfo{}, busy: busyTicks(), self: selfTicks()}
	for _, p := range managerProcs(m) {
		u.mgr[p.PID] = p
	}
	for _, w := range m.workers() {
		u.workers[w.PID] = w
	}
	return u
}

// end returns the manager's and the workers' usage since the mark. A
// process that started during the row counts from zero; one that exited is
// lost, which is why the targets read baseline rows.
func (u usageMark) end(m manager) (mgr, workers *Usage) {
	wall := time.Since(u.at).Seconds()
	pct := func(ticks uint64) float64 { return float64(ticks) / clockTicks / wall * 100 }
	since := func(before map[int]procInfo, p procInfo) uint64 {
		if b, ok := before[p.PID]; ok && b.Start == p.Start {
			return p.Ticks - b.Ticks
		}
		return p.Ticks
	}
	sum := func(list []procInfo, before map[int]procInfo) *Usage {
		us := &Usage{}
		var ticks uint64
		for _, p := range list {
			us.PIDs++
			rss, _ := rssKiB(p.PID)
			us.RSSKiB += rss
			us.RSSPerPID = append(us.RSSPerPID, rss)
			pss, _ := pssKiB(p.PID)
			us.PSSKiB += pss
			t := since(before, p)
			ticks += t
			us.PerPID = append(us.PerPID, pct(t))
		}
		us.CPUPercent = pct(ticks)
		return us
	}
	if mp := managerProcs(m); len(mp) > 0 {
		mgr = sum(mp, u.mgr)
		mgr.PerPID = nil
	}
	workers = sum(m.workers(), u.workers)
	workers.RSSPerPID = nil
	return mgr, workers
}

func cpuPerRequest(row *Row) float64 {
	if row.OK == 0 || row.WorkersUsage == nil {
		return 0
	}
	pct := row.WorkersUsage.CPUPercent
	if row.ManagerUsage != nil {
		pct += row.ManagerUsage.CPUPercent
	}
	return pct / 100 * row.Seconds / float64(row.OK) * 1e6
}

// others is the machine's CPU outside the bench, the manager and the
// workers since the mark, in % of one core.
func (u usageMark) others(mgr, workers *Usage) float64 {
	wall := time.Since(u.at).Seconds()
	busy := float64(busyTicks()-u.busy) / clockTicks / wall * 100
	ours := float64(selfTicks()-u.self) / clockTicks / wall * 100
	if mgr != nil {
		ours += mgr.CPUPercent
	}
	if workers != nil {
		ours += workers.CPUPercent
	}
	return max(0, busy-ours)
}

// busyTicks sums the non-idle times of the first line of /proc/stat.
func busyTicks() uint64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var busy uint64
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		// user nice system idle iowait irq softirq steal guest guest_nice
		if i != 3 && i != 4 && i < 8 {
			busy += n
		}
	}
	return busy
}

func selfTicks() uint64 {
	p, _ := readProc(os.Getpid())
	return p.Ticks
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool { return sleepCtx(ctx, time.Until(t)) }

// mergeRounds merges a baseline's rounds into one row: counts add up, the
// per-second series are joined (each round's partial last second left
// out), p50 and p99 are the median of the rounds', max the max.
func mergeRounds(rs []Row) Row {
	if len(rs) == 1 {
		rs[0].BestRound = rs[0].MedianSecond
		return rs[0]
	}
	m := rs[0]
	m.Rounds = rs
	m.Failed, m.Bodies, m.Errors, m.Reloads = map[string]int64{}, map[string]int64{}, nil, nil
	var notes []string
	m.Seconds, m.Requests, m.OK, m.FailedTotal, m.StaleKeepAlive, m.MaxMS, m.BestRound = 0, 0, 0, 0, 0, 0, 0
	m.PerSecond = nil
	var p50, p99 []float64
	var mgrCPU, wCPU, secs, others float64
	var perPID []float64
	for _, r := range rs {
		m.Seconds += r.Seconds
		m.Requests += r.Requests
		m.OK += r.OK
		m.FailedTotal += r.FailedTotal
		m.StaleKeepAlive += r.StaleKeepAlive
		for k, v := range r.Failed {
			m.Failed[k] += v
		}
		for k, v := range r.Bodies {
			m.Bodies[k] += v
		}
		m.Errors = append(m.Errors, r.Errors...)
		for _, rl := range r.Reloads {
			rl.N = len(m.Reloads) + 1
			m.Reloads = append(m.Reloads, rl)
		}
		if r.Note != "" {
			notes = append(notes, r.Note)
		}
		ps := r.PerSecond
		if len(ps) > 1 {
			ps = ps[:len(ps)-1]
		}
		m.PerSecond = append(m.PerSecond, ps...)
		p50, p99 = append(p50, r.P50MS), append(p99, r.P99MS)
		m.BestRound = max(m.BestRound, r.MedianSecond)
		m.MaxMS = max(m.MaxMS, r.MaxMS)
		if r.ManagerUsage != nil {
			mgrCPU += r.ManagerUsage.CPUPercent * r.Seconds
		}
		if r.WorkersUsage != nil {
			wCPU += r.WorkersUsage.CPUPercent * r.Seconds
			for i, p := range r.WorkersUsage.PerPID {
				for len(perPID) <= i {
					perPID = append(perPID, 0)
				}
				perPID[i] += p * r.Seconds
			}
		}
		secs += r.Seconds
		others += r.OthersCPUPercent * r.Seconds
	}
	if secs > 0 {
		m.OthersCPUPercent = others / secs
	}
	m.P50MS, m.P99MS = median(p50), median(p99)
	m.Note = strings.Join(notes, "; ")
	if m.Seconds > 0 {
		m.RPS = float64(m.OK) / m.Seconds
	}
	s := append([]int64(nil), m.PerSecond...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) > 0 {
		m.MedianSecond, m.WorstSecond = s[len(s)/2], s[0]
	}
	last := rs[len(rs)-1]
	if last.ManagerUsage != nil && secs > 0 {
		u := *last.ManagerUsage
		u.CPUPercent = mgrCPU / secs
		for _, r := range rs {
			if r.ManagerUsage != nil {
				u.RSSKiB = max(u.RSSKiB, r.ManagerUsage.RSSKiB)
				u.PSSKiB = max(u.PSSKiB, r.ManagerUsage.PSSKiB)
			}
		}
		m.ManagerUsage = &u
	}
	if last.WorkersUsage != nil && secs > 0 {
		u := *last.WorkersUsage
		u.CPUPercent = wCPU / secs
		u.PerPID = nil
		for _, p := range perPID {
			u.PerPID = append(u.PerPID, p/secs)
		}
		m.WorkersUsage = &u
	}
	m.CPUPerRequestUS = cpuPerRequest(&m)
	return m
}
