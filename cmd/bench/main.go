package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff/handoff/loadgen"
)

type bench struct {
	logger    *slog.Logger
	procs     *procs
	artifacts *artifactServer
	cleanups  []func() // run in reverse order at the end, whatever happened

	work, fixtures                     string
	node, agent, pm2, socketActivate   string
	conns, workers                     int
	readyTimeout                       time.Duration
	warm, baseline, first, every, tail time.Duration
	rounds, reloadRounds, bootRuns     int // baseline rounds; reload rounds; boot time samples
	deadline                           time.Time
	reloadSlack                        float64
	quorum                             string
	reloads                            int
	gen                                int // generations brought up so far, for distinct bodies
	only                               map[string]bool
}

func (b *bench) fixture(name string) string { return filepath.Join(b.fixtures, name) }

// quorumTOML is a quorum ("all" or a number) as a TOML value.
func quorumTOML(q string) string {
	if _, err := strconv.Atoi(q); err == nil {
		return q
	}
	return strconv.Quote(q)
}

func main() {
	os.Exit(run())
}

func run() int {
	var (
		quick   = flag.Bool("quick", false, "short run (about 2 minutes): fewer reloads, shorter phases")
		outDir  = flag.String("out", "bench/results", "where <date>.json and latest.md go")
		work    = flag.String("work", "", "scratch directory (default: a new temp dir, removed at the end)")
		only    = flag.String("only", "", "comma-separated managers to run (alone,cluster-master,pm2,handoff); default all")
		verbose = flag.Bool("v", false, "debug logging")
		reloads = flag.Int("reloads", 0, "reloads per manager and mode (default 10 in 2 rounds, quick 2)")
		budget  = flag.Duration("budget", 0, "time budget: rows that would start after it are skipped and listed (default 9m, quick 100s)")
	)
	b := &bench{}
	flag.StringVar(&b.agent, "agent", "", "agent binary (required for the handoff rows)")
	flag.StringVar(&b.pm2, "pm2", "", "pm2 executable (required for the pm2 rows)")
	flag.StringVar(&b.node, "node", "node", "node executable")
	flag.StringVar(&b.socketActivate, "socket-activate", "systemd-socket-activate", "systemd-socket-activate executable")
	flag.StringVar(&b.fixtures, "fixtures", "bench/fixtures", "directory with app.js, cluster-master.js, broken.js")
	flag.IntVar(&b.conns, "conns", 32, "concurrent load connections")
	flag.IntVar(&b.workers, "workers", 2, "app workers under every manager")
	flag.StringVar(&b.quorum, "quorum", "all", `handoff's [readiness] quorum: "all" (the default) or a number; 1 is the cluster master's behaviour`)
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	b.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	b.warm, b.baseline, b.rounds, b.first, b.every, b.tail, b.reloads, b.reloadRounds, b.bootRuns, b.readyTimeout =
		2*time.Second, 3*time.Second, 3, 1500*time.Millisecond, 3*time.Second, 1500*time.Millisecond, 10, 2, 3, 10*time.Second
	if *quick {
		b.warm, b.baseline, b.rounds, b.first, b.tail, b.reloads, b.reloadRounds, b.bootRuns, b.readyTimeout =
			500*time.Millisecond, 1500*time.Millisecond, 1, time.Second, time.Second, 2, 1, 1, 6*time.Second
	}
	b.reloadSlack = 1.6
	if *quick {
		b.reloadSlack = 1.3
	}
	if *budget == 0 {
		*budget = 9 * time.Minute
		if *quick {
			*budget = 100 * time.Second
		}
	}
	if *reloads > 0 {
		b.reloads = *reloads
	}
	if *only != "" {
		b.only = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			b.only[strings.TrimSpace(s)] = true
		}
	}
	var err error
	if b.fixtures, err = filepath.Abs(b.fixtures); err != nil {
		b.logger.Error("Fixtures", "err", err)
		return 2
	}
	for _, p := range []*string{&b.node, &b.socketActivate, &b.agent, &b.pm2} {
		if *p != "" {
			if abs, err := lookPathAbs(*p); err == nil {
				*p = abs
			}
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *work == "" {
		if *work, err = os.MkdirTemp("", "handoff-bench."); err != nil {
			b.logger.Error("Scratch dir", "err", err)
			return 1
		}
		defer os.RemoveAll(*work)
	}
	b.work = *work
	logDir := filepath.Join(b.work, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		b.logger.Error("Scratch dir", "err", err)
		return 1
	}
	b.procs = &procs{logDir: logDir, logger: b.logger}
	defer b.procs.stopAll()
	defer func() {
		for i := len(b.cleanups) - 1; i >= 0; i-- {
			b.cleanups[i]()
		}
	}()
	if b.artifacts, err = newArtifactServer(); err != nil {
		b.logger.Error("Artifacts", "err", err)
		return 1
	}
	defer b.artifacts.close()

	start := time.Now()
	// Rows are bounded; the last one may start just before the deadline.
	// The margin covers the row in flight and the cleanup after it.
	b.deadline = start.Add(*budget - 45*time.Second)
	if *quick {
		b.deadline = start.Add(*budget - 15*time.Second)
	}
	res := b.collect(ctx, *quick)
	res.Seconds = time.Since(start).Seconds()
	if ctx.Err() != nil {
		b.logger.Error("Interrupted; nothing written")
		return 130
	}
	evaluate(res)
	if err := writeResults(*outDir, res); err != nil {
		b.logger.Error("Write results", "err", err)
		return 1
	}
	fmt.Print(renderTargets(res))
	b.logger.Info("Done", "seconds", int(res.Seconds), "out", *outDir)
	if len(res.Errors) > 0 {
		for _, e := range res.Errors {
			b.logger.Error("Bench error", "err", e)
		}
		return 1
	}
	return 0
}

func (b *bench) want(name string) bool { return b.only == nil || b.only[name] }

// collect runs every row. All managers are started first and stay up, idle
// while another is measured, so that the baseline rows of all of them run
// back to back (the anchors drift with the machine's other load) and each
// manager's reload rows run with the others idle. A manager that fails is
// recorded in Errors and the run goes on without it.
func (b *bench) collect(ctx context.Context, quick bool) *Results {
	res := newResults(b, quick)
	fail := func(what string, err error) {
		if err != nil && ctx.Err() == nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", what, err))
			b.logger.Error("Failed", "what", what, "err", err)
		}
	}
	boot, err := b.measureBoot(ctx, b.bootRuns)
	fail("app boot", err)
	res.AppBootMS = ms(boot)
	b.logger.Info("App boot", "ms", res.AppBootMS)

	var all []manager
	var handoff *handoffMgr
	if b.want("alone") && ctx.Err() == nil {
		m, err := b.startAlone(ctx)
		fail("alone", err)
		if err == nil {
			all = append(all, m)
			defer m.stop()
		}
	}
	if b.want("handoff") && ctx.Err() == nil {
		m, err := b.startHandoff(ctx, "main", nil, b.quorum)
		fail("handoff", err)
		if err == nil {
			all = append(all, m)
			handoff = m
			defer m.stop()
		}
	}
	if b.want("cluster-master") && ctx.Err() == nil {
		m, err := b.startCluster(ctx)
		fail("cluster-master", err)
		if err == nil {
			all = append(all, m)
			defer m.stop()
		}
	}
	if b.want("pm2") && ctx.Err() == nil {
		if b.pm2 == "" {
			fail("pm2", errors.New("no pm2 executable (-pm2)"))
		} else {
			m, err := b.startPM2(ctx)
			fail("pm2", err)
			if err == nil {
				all = append(all, m)
				defer m.stop()
			}
		}
	}
	for _, m := range all {
		b.warmUp(ctx, m)
	}
	modes := []string{modeKeepAlive, modeNewConn}
	// Baselines, then reloads, in rounds, each round visiting every
	// manager, so that a burst of other work on the machine hits all of
	// them alike.
	b.inRounds(ctx, res, all, modes, b.rounds, "baseline", fail, func(manager) rowPlan { return rowPlan{steady: b.baseline} })
	for _, m := range all {
		if m.name() == "alone" && ctx.Err() == nil {
			// The app's boot time again, with the machine as busy as during
			// a reload: a keep-alive load on the app alone meanwhile.
			boot, err := b.bootUnderLoad(ctx, m)
			fail("app boot under load", err)
			res.AppBootUnderLoadMS = ms(boot)
			b.logger.Info("App boot under load", "ms", res.AppBootUnderLoadMS)
		}
	}
	var reloaders []manager
	for _, m := range all {
		if m.name() != "alone" {
			reloaders = append(reloaders, m)
		}
	}
	perRound := (b.reloads + b.reloadRounds - 1) / b.reloadRounds
	reloadPlan := func(m manager) rowPlan { return b.reloadPlan(m, perRound) }
	if quick && handoff != nil {
		// Within the quick budget on a busy machine, handoff's own rows
		// come first; the others' reloads may be cut short.
		b.inRounds(ctx, res, []manager{handoff}, modes, 1, "reloads", fail, reloadPlan)
		b.handoffExtras(ctx, res, handoff, quick, fail)
		var others []manager
		for _, m := range reloaders {
			if m != manager(handoff) {
				others = append(others, m)
			}
		}
		b.inRounds(ctx, res, others, modes, 1, "reloads", fail, reloadPlan)
		return res
	}
	b.inRounds(ctx, res, reloaders, modes, b.reloadRounds, "reloads", fail, reloadPlan)
	for _, m := range all {
		if m != manager(handoff) {
			m.stop() // leave the machine to the handoff extras
		}
	}
	if handoff != nil && ctx.Err() == nil {
		b.handoffExtras(ctx, res, handoff, quick, fail)
	}
	return res
}

// handoffExtras: a failed deploy and a rollback under load, the agent
// restarted under a socket unit, and Node's default shutdown beside the
// graceful one.
func (b *bench) handoffExtras(ctx context.Context, res *Results, m *handoffMgr, quick bool, fail func(string, error)) {
	modes := []string{modeKeepAlive, modeNewConn}
	if quick {
		modes = modes[:1]
	}
	for _, mode := range modes {
		fail("handoff failed deploy", b.addRow(ctx, res, m, &Row{Scenario: "failed-deploy", Mode: mode}, b.onePlan(m.failedDeploy())))
		fail("handoff rollback", b.addRow(ctx, res, m, &Row{Scenario: "rollback", Mode: mode}, b.onePlan(m.rollbackAction())))
	}
	// The same release root, now under a socket unit: the bench holds the
	// socket as systemd would, systemd-socket-activate hands it to the agent.
	m.stop()
	err := m.startAgent(ctx, true)
	fail("handoff under systemd-socket-activate", err)
	if err == nil {
		fail("handoff", waitServing(ctx, m.addr(), 15*time.Second, nil))
		for _, mode := range modes {
			fail("handoff agent restart", b.addRow(ctx, res, m, &Row{Scenario: "agent-restart", Mode: mode}, b.onePlan(m.restartAction())))
		}
	}
	m.stop()
	// Node's default shutdown beside the graceful one: the same
	// reloads in keep-alive mode, counting stale keep-alive. Full runs only.
	if quick || b.skip(ctx, res, "handoff reloads keep-alive default shutdown") {
		return
	}
	d, err := b.startHandoff(ctx, "default", map[string]string{"HANDOFF_EXAMPLE_SHUTDOWN": "default"}, b.quorum)
	fail("handoff default shutdown", err)
	if err == nil {
		b.warmUp(ctx, d)
		fail("handoff default shutdown", b.addRow(ctx, res, d, &Row{Scenario: "reloads", Mode: modeKeepAlive, Shutdown: "default"}, b.reloadPlan(d, b.reloads)))
		d.stop()
	}
	// The seed's readiness beside handoff's default: the old generation is
	// retired as soon as one new worker is ready (quorum 1), as the
	// cluster master does. Half the reloads, both modes.
	if b.quorum == "1" || b.skip(ctx, res, "handoff reloads with quorum 1") {
		return
	}
	q, err := b.startHandoff(ctx, "quorum1", nil, "1")
	fail("handoff quorum 1", err)
	if err == nil {
		b.warmUp(ctx, q)
		for _, mode := range modes {
			fail("handoff quorum 1", b.addRow(ctx, res, q, &Row{Scenario: scenarioQuorum1, Mode: mode}, b.reloadPlan(q, (b.reloads+1)/2)))
		}
		q.stop()
	}
}

// scenarioQuorum1 names handoff's reload rows with [readiness] quorum = 1.
const scenarioQuorum1 = "reloads-quorum-1"

// inRounds runs scenario for every manager and mode, rounds times over,
// and adds each manager's merged row.
func (b *bench) inRounds(ctx context.Context, res *Results, ms []manager, modes []string, rounds int, scenario string,
	fail func(string, error), plan func(manager) rowPlan) {
	got := map[string][]Row{}
	for round := 0; round < rounds; round++ {
		for _, mode := range modes {
			for _, m := range ms {
				if b.skip(ctx, res, fmt.Sprintf("%s %s %s round %d", m.name(), scenario, mode, round+1)) {
					continue
				}
				row := &Row{Scenario: scenario, Mode: mode}
				fail(m.name(), b.runRow(ctx, m, row, plan(m)))
				if ctx.Err() == nil {
					got[m.name()+"/"+mode] = append(got[m.name()+"/"+mode], *row)
				}
			}
		}
	}
	for _, mode := range modes {
		for _, m := range ms {
			if rs := got[m.name()+"/"+mode]; len(rs) > 0 {
				res.Rows = append(res.Rows, mergeRounds(rs))
			}
		}
	}
}

// skip reports whether the run is over: interrupted, or past its time
// budget, in which case what is skipped is recorded.
func (b *bench) skip(ctx context.Context, res *Results, what string) bool {
	if ctx.Err() != nil {
		return true
	}
	if time.Now().After(b.deadline) {
		res.Skipped = append(res.Skipped, what)
		b.logger.Warn("Skipped: over the time budget", "what", what)
		return true
	}
	return false
}

func (b *bench) addRow(ctx context.Context, res *Results, m manager, row *Row, plan rowPlan) error {
	if b.skip(ctx, res, fmt.Sprintf("%s %s %s %s", m.name(), row.Scenario, row.Mode, row.Shutdown)) {
		return nil
	}
	err := b.runRow(ctx, m, row, plan)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	res.Rows = append(res.Rows, *row)
	return err
}

// reloadPlan: n reloads, one every b.every; a manager whose reloads take
// longer than that gets fewer, within b.reloadSlack times the planned time.
func (b *bench) reloadPlan(m manager, n int) rowPlan {
	p := rowPlan{first: b.first, every: b.every, tail: b.tail}
	p.limit = b.first + time.Duration(float64(time.Duration(n)*b.every)*b.reloadSlack)
	for i := 0; i < n; i++ {
		b.gen++
		p.actions = append(p.actions, m.reload(b.gen))
	}
	return p
}

func (b *bench) onePlan(a action) rowPlan {
	return rowPlan{first: time.Second, every: b.every, tail: b.tail, actions: []action{a}}
}

func (b *bench) bootUnderLoad(ctx context.Context, m manager) (time.Duration, error) {
	run, err := loadgen.Start(ctx, loadgen.Options{Addr: m.addr(), Conns: b.conns, KeepAlive: true})
	if err != nil {
		return 0, err
	}
	defer run.Stop()
	sleepCtx(ctx, 500*time.Millisecond)
	return b.measureBoot(ctx, b.bootRuns)
}

// warmUp loads m briefly so the JIT and the connection paths are warm
// before anything is measured.
func (b *bench) warmUp(ctx context.Context, m manager) {
	run, err := loadgen.Start(ctx, loadgen.Options{Addr: m.addr(), Conns: b.conns, KeepAlive: true})
	if err == nil {
		sleepCtx(ctx, b.warm)
		run.Stop()
	}
}
