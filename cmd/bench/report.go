package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Results is the whole run, as written to bench/results/<date>.json.
type Results struct {
	Date     string   `json:"date"`
	Quick    bool     `json:"quick"`
	Machine  Machine  `json:"machine"`
	Versions Versions `json:"versions"`
	Params   Params   `json:"params"`
	// AppBootMS: exec of the app alone → its first 200 response, idle machine.
	AppBootMS float64 `json:"app_boot_ms"`
	// AppBootUnderLoadMS: the same with a keep-alive load on the app alone.
	AppBootUnderLoadMS float64  `json:"app_boot_under_load_ms"`
	Rows               []Row    `json:"rows"`
	Targets            []Target `json:"targets"`
	Errors             []string `json:"errors,omitempty"`
	Skipped            []string `json:"skipped,omitempty"` // rows left out to stay within the time budget
	Seconds            float64  `json:"seconds"`
}

type Machine struct {
	NProc    int    `json:"nproc"`
	Model    string `json:"model"`
	Kernel   string `json:"kernel"`
	MemTotal string `json:"mem_total"`
}

type Versions struct {
	Go      string `json:"go"`
	Node    string `json:"node"`
	PM2     string `json:"pm2"`
	Agent   string `json:"agent"`
	Systemd string `json:"systemd_socket_activate"`
}

type Params struct {
	Conns            int     `json:"conns"`
	Workers          int     `json:"workers"`
	ReloadEveryS     float64 `json:"reload_every_s"`
	ReloadsPerRow    int     `json:"reloads_per_row"` // per manager and mode, over all rounds
	ReloadRounds     int     `json:"reload_rounds"`
	BaselineS        float64 `json:"baseline_s"` // per manager and mode, over all rounds
	BaselineRounds   int     `json:"baseline_rounds"`
	ReadinessTimeout string  `json:"readiness_timeout"`
	Quorum           string  `json:"handoff_quorum"`
}

// Target is one of the benchmark's targets (evaluate), evaluated.
type Target struct {
	Name   string `json:"name"`
	Want   string `json:"want"`
	Got    string `json:"got"`
	Met    bool   `json:"met"`
	Margin string `json:"margin"`
}

func newResults(b *bench, quick bool) *Results {
	r := &Results{Date: time.Now().UTC().Format(time.RFC3339), Quick: quick}
	r.Machine.NProc = runtime.NumCPU()
	if cpu, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(cpu), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				r.Machine.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	if v, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		r.Machine.Kernel = strings.TrimSpace(string(v))
	}
	if mem, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(mem), "\n")
		r.Machine.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(line, "MemTotal:")), " ")
	}
	r.Versions.Go = runtime.Version()
	r.Versions.Node = firstLine(b.node, "--version")
	r.Versions.Systemd = firstLine(b.socketActivate, "--version")
	if b.agent != "" {
		r.Versions.Agent = firstLine(b.agent, "version")
	}
	if b.pm2 != "" {
		r.Versions.PM2 = pm2Version(b.pm2)
	}
	r.Params = Params{Conns: b.conns, Workers: b.workers, ReloadEveryS: b.every.Seconds(), ReloadsPerRow: b.reloads, ReloadRounds: b.reloadRounds,
		BaselineS: b.baseline.Seconds() * float64(b.rounds), BaselineRounds: b.rounds, ReadinessTimeout: b.readyTimeout.String(), Quorum: b.quorum}
	return r
}

func firstLine(bin string, args ...string) string {
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// pm2Version reads pm2's package.json beside its executable (running `pm2
// --version` would start its daemon).
func pm2Version(bin string) string {
	real, err := filepath.EvalSymlinks(bin)
	if err != nil {
		return "unknown"
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(real), "..", "package.json"))
	if err != nil {
		return "unknown"
	}
	var pkg struct{ Version string }
	if json.Unmarshal(b, &pkg) != nil || pkg.Version == "" {
		return "unknown"
	}
	return pkg.Version
}

// lookPathAbs resolves p as the kernel will show it in /proc/<pid>/exe:
// absolute, symlinks followed.
func lookPathAbs(p string) (string, error) {
	lp, err := exec.LookPath(p)
	if err != nil {
		return "", err
	}
	if lp, err = filepath.Abs(lp); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(lp)
}

// find returns the first row matching.
func (r *Results) find(mgr, scenario, mode, shutdown string) *Row {
	for i := range r.Rows {
		row := &r.Rows[i]
		if row.Manager == mgr && row.Scenario == scenario && row.Mode == mode && row.Shutdown == shutdown {
			return row
		}
	}
	return nil
}

// bestOther is the better of cluster-master and pm2 in a scenario and mode,
// by median second.
func (r *Results) bestOther(scenario, mode string) *Row {
	var best *Row
	for _, mgr := range []string{"cluster-master", "pm2"} {
		if row := r.find(mgr, scenario, mode, "graceful"); row != nil && (best == nil || row.MedianSecond > best.MedianSecond) {
			best = row
		}
	}
	return best
}

// bestOtherRound is the better of cluster-master and pm2 by best round.
func (r *Results) bestOtherRound(scenario, mode string) *Row {
	var best *Row
	for _, mgr := range []string{"cluster-master", "pm2"} {
		if row := r.find(mgr, scenario, mode, "graceful"); row != nil && (best == nil || row.BestRound > best.BestRound) {
			best = row
		}
	}
	return best
}

// reloadTimes collects, over handoff's graceful reload rows, each deploy's
// trigger → new generation ready (the agent's word, else the first response
// of the new release) and trigger → old generation gone.
func (r *Results) reloadTimes(mgr string) (ready, gone []float64) {
	for _, row := range r.Rows {
		if row.Manager != mgr || row.Scenario != "reloads" || row.Shutdown != "graceful" {
			continue
		}
		for _, rl := range row.Reloads {
			if !rl.OK {
				continue
			}
			if rl.ReadyMS >= 0 {
				ready = append(ready, rl.ReadyMS)
			} else if rl.FirstNewMS >= 0 {
				ready = append(ready, rl.FirstNewMS)
			}
			if rl.OldGoneMS >= 0 {
				gone = append(gone, rl.OldGoneMS)
			}
		}
	}
	return ready, gone
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func maxOf(v []float64) float64 {
	m := -1.0
	for _, x := range v {
		if x > m {
			m = x
		}
	}
	return m
}

// evaluate fills r.Targets from the rows.
func evaluate(r *Results) {
	r.Targets = nil
	add := func(t Target) { r.Targets = append(r.Targets, t) }

	// 0 failed in every handoff row, across ≥ 10 reloads.
	var failed, reloads, rows int64
	var where []string
	for _, row := range r.Rows {
		if row.Manager != "handoff" {
			continue
		}
		rows++
		failed += row.FailedTotal
		reloads += int64(len(row.Reloads))
		if row.FailedTotal > 0 {
			where = append(where, fmt.Sprintf("%s/%s/%s: %d %v", row.Scenario, row.Mode, row.Shutdown, row.FailedTotal, row.Failed))
		}
	}
	if rows > 0 {
		t := Target{Name: "0 failed requests in every handoff row", Want: "0 failed, ≥ 10 reloads per run",
			Got: fmt.Sprintf("%d failed in %d rows over %d reloads/deploys/restarts", failed, rows, reloads)}
		t.Met = failed == 0 && reloads >= 10
		switch {
		case failed > 0:
			t.Margin = "missed by " + strings.Join(where, "; ")
		case reloads < 10:
			t.Margin = fmt.Sprintf("only %d reloads (quick run)", reloads)
		default:
			t.Margin = "0 failed"
		}
		add(t)
	}

	// Throughput.
	for _, mode := range []string{modeKeepAlive, modeNewConn} {
		h, o := r.find("handoff", "baseline", mode, "graceful"), r.bestOther("baseline", mode)
		if h == nil || o == nil || o.MedianSecond == 0 {
			continue
		}
		ratio := float64(h.MedianSecond) / float64(o.MedianSecond)
		got := fmt.Sprintf("%d req/s vs %s %d req/s (%.2f×), median second over all rounds", h.MedianSecond, o.Manager, o.MedianSecond, ratio)
		if ob := r.bestOtherRound("baseline", mode); ob != nil && ob.BestRound > 0 && h.BestRound > 0 && len(h.Rounds) > 1 {
			got += fmt.Sprintf("; best rounds %d vs %s %d (%.2f×)", h.BestRound, ob.Manager, ob.BestRound, float64(h.BestRound)/float64(ob.BestRound))
		}
		if h.CPUPerRequestUS > 0 && o.CPUPerRequestUS > 0 {
			got += fmt.Sprintf("; CPU per request (workers + manager) %.0f µs vs %.0f µs", h.CPUPerRequestUS, o.CPUPerRequestUS)
		}
		t := Target{Name: "steady throughput, " + mode, Got: got}
		if mode == modeKeepAlive {
			t.Want = "≥ best of cluster-master and pm2"
			t.Met = ratio >= 1
		} else {
			t.Want = "> best of cluster-master and pm2"
			t.Met = ratio > 1
		}
		t.Margin = fmt.Sprintf("%+.1f%%", (ratio-1)*100)
		add(t)
	}

	// Reload time.
	if ready, gone := r.reloadTimes("handoff"); len(ready) > 0 && r.AppBootMS > 0 {
		limit := r.AppBootMS + 50
		med := median(ready)
		var spawnToReady []float64
		for _, row := range r.Rows {
			if row.Manager == "handoff" && row.Scenario == "reloads" && row.Shutdown == "graceful" {
				for _, rl := range row.Reloads {
					if rl.OK && rl.ReadyMS >= 0 && rl.SpawnMS >= 0 {
						spawnToReady = append(spawnToReady, rl.ReadyMS-rl.SpawnMS)
					}
				}
			}
		}
		t := Target{Name: "reload time (trigger → new generation ready)", Want: fmt.Sprintf("≤ app boot + 50 ms = %.0f ms", limit),
			Got: fmt.Sprintf("median %.0f ms, max %.0f ms over %d deploys (of which workers spawned → ready: median %.0f ms; "+
				"app boot under the same load %.0f ms); trigger → old gone median %.0f ms, max %.0f ms",
				med, maxOf(ready), len(ready), median(spawnToReady), r.AppBootUnderLoadMS, median(gone), maxOf(gone))}
		t.Met = med <= limit
		t.Margin = fmt.Sprintf("%+.0f ms (median vs limit)", med-limit)
		add(t)
	}

	// p99 during reloads.
	for _, mode := range []string{modeKeepAlive, modeNewConn} {
		base, rel := r.find("handoff", "baseline", mode, "graceful"), r.find("handoff", "reloads", mode, "graceful")
		if base == nil || rel == nil || base.P99MS <= 0 {
			continue
		}
		ratio := rel.P99MS / base.P99MS
		add(Target{Name: "p99 during reloads, " + mode, Want: "≤ 1.5× baseline p99",
			Got: fmt.Sprintf("%.2f ms vs %.2f ms (%.2f×)", rel.P99MS, base.P99MS, ratio),
			Met: ratio <= 1.5, Margin: fmt.Sprintf("%+.2f× vs 1.5×", ratio-1.5)})
	}

	// Agent RSS and CPU in steady state.
	var top *Usage
	var cpu float64
	for _, row := range r.Rows {
		if row.Manager == "handoff" && row.Scenario == "baseline" && row.ManagerUsage != nil {
			if top == nil || row.ManagerUsage.RSSKiB > top.RSSKiB {
				top = row.ManagerUsage
			}
			cpu = max(cpu, row.ManagerUsage.CPUPercent)
		}
	}
	if top != nil {
		mib := float64(top.RSSKiB) / 1024
		got := fmtRSS(top)
		if len(top.RSSPerPID) > 1 {
			got += ": the agent, then its watchdog process; PSS counts the binary's pages they share once"
		}
		add(Target{Name: "agent RSS, steady state", Want: "≤ 20 MiB", Got: got,
			Met: mib <= 20, Margin: fmt.Sprintf("%+.1f MiB", mib-20)})
		add(Target{Name: "agent CPU, steady state under load", Want: "≈ 0 (< 1% of a core)", Got: fmt.Sprintf("%.2f%% of a core (the busier of keep-alive and new-conn)", cpu),
			Met: cpu < 1, Margin: fmt.Sprintf("%+.2f points", cpu-1)})
	}
}

func writeResults(dir string, r *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	name := strings.NewReplacer(":", "").Replace(r.Date)
	if r.Quick {
		name += "-quick"
	}
	if err := writeAtomic(filepath.Join(dir, name+".json"), append(b, '\n')); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "latest.md"), []byte(renderMarkdown(r)))
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func renderTargets(r *Results) string {
	var w bytes.Buffer
	for _, t := range r.Targets {
		mark := "MET   "
		if !t.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(&w, "%s %s: want %s; got %s (%s)\n", mark, t.Name, t.Want, t.Got, t.Margin)
	}
	return w.String()
}

func fmtFailed(row *Row) string {
	if row.FailedTotal == 0 {
		return "0"
	}
	var kinds []string
	for k, v := range row.Failed {
		if v > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, v))
		}
	}
	sort.Strings(kinds)
	return fmt.Sprintf("**%d** (%s)", row.FailedTotal, strings.Join(kinds, ", "))
}

func fmtLat(row *Row) string {
	if row == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f / %.2f / %.0f", row.P50MS, row.P99MS, row.MaxMS)
}

func fmtRate(row *Row) string {
	if row == nil {
		return "–"
	}
	s := fmt.Sprintf("%d (%d)", row.MedianSecond, row.WorstSecond)
	if len(row.Rounds) > 1 && row.Scenario == "baseline" {
		s += fmt.Sprintf(" best round %d", row.BestRound)
	}
	return s
}

func fmtRatio(a, b *Row) string {
	if a == nil || b == nil || b.MedianSecond == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a.MedianSecond)/float64(b.MedianSecond))
}

func fmtMS(v []float64) string {
	if len(v) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f / %.0f", median(v), maxOf(v))
}

func fmtUsage(u *Usage) string {
	if u == nil {
		return "–"
	}
	return fmt.Sprintf("%s, %.1f%%", fmtRSS(u), u.CPUPercent)
}

// fmtRSS: "24.6 MiB", or "24.6 MiB (15.1 + 9.5)" for several processes.
func fmtRSS(u *Usage) string {
	s := fmt.Sprintf("%.1f MiB", float64(u.RSSKiB)/1024)
	if len(u.RSSPerPID) > 1 {
		parts := make([]string, len(u.RSSPerPID))
		for i, k := range u.RSSPerPID {
			parts[i] = fmt.Sprintf("%.1f", float64(k)/1024)
		}
		s += " (" + strings.Join(parts, " + ") + ")"
	}
	if u.PSSKiB > 0 {
		s += fmt.Sprintf(", PSS %.1f MiB", float64(u.PSSKiB)/1024)
	}
	return s
}

// rowTimes collects one row's reload timings.
func rowTimes(row *Row) (ready, firstNew, gone []float64, ok int) {
	for _, rl := range row.Reloads {
		if rl.OK {
			ok++
		}
		if rl.ReadyMS >= 0 {
			ready = append(ready, rl.ReadyMS)
		}
		if rl.FirstNewMS >= 0 {
			firstNew = append(firstNew, rl.FirstNewMS)
		}
		if rl.OldGoneMS >= 0 {
			gone = append(gone, rl.OldGoneMS)
		}
	}
	return
}

func renderMarkdown(r *Results) string {
	var w bytes.Buffer
	kind := "full"
	if r.Quick {
		kind = "quick"
	}
	fmt.Fprintf(&w, "# Benchmark: zero-downtime reloads, side by side\n\n")
	fmt.Fprintf(&w, "- date: %s (%s run, %.0f s)\n", r.Date, kind, r.Seconds)
	fmt.Fprintf(&w, "- machine: %d × %s, %s, Linux %s\n", r.Machine.NProc, r.Machine.Model, r.Machine.MemTotal, r.Machine.Kernel)
	fmt.Fprintf(&w, "- versions: go %s, node %s, pm2 %s, agent %s, %s\n", r.Versions.Go, r.Versions.Node, r.Versions.PM2, r.Versions.Agent, r.Versions.Systemd)
	fmt.Fprintf(&w, "- load: %d connections on 127.0.0.1, %d app workers per manager, baseline %.0f s in %d rounds, a reload every %.0f s, %d reloads per manager and mode in %d rounds\n",
		r.Params.Conns, r.Params.Workers, r.Params.BaselineS, r.Params.BaselineRounds, r.Params.ReloadEveryS, r.Params.ReloadsPerRow, r.Params.ReloadRounds)
	fmt.Fprintf(&w, "- handoff: readiness `listen`, quorum %s, timeout %s\n", r.Params.Quorum, r.Params.ReadinessTimeout)
	fmt.Fprintf(&w, "- app boot (exec → first 200 response): %.0f ms idle, %.0f ms under load\n\n", r.AppBootMS, r.AppBootUnderLoadMS)

	fmt.Fprintf(&w, "## Throughput, latency and reloads\n\n")
	fmt.Fprintf(&w, "req/s: median second (worst second), and for baselines the best round's median second "+
		"(the machine's other work only ever takes throughput away). Latency: p50 / p99 / max in ms. Reload times: median / max in ms from the trigger; "+
		"*ready* is the manager's own word (handoff only), *first new* the first response the load got from the new generation, "+
		"*old gone* every worker of the old generation exited. Requests, failed and stale keep-alive are for the reload row. "+
		"Manager: the agent (with its watchdog process), the cluster master or pm2's daemon; RSS and CPU %% of one core during the baseline; "+
		"workers CPU: each app worker's CPU %% during the baseline (how the connections were split between them); "+
		"CPU µs/request: the workers' and the manager's CPU time per response during the baseline, which does not depend on how much CPU the machine had to spare; "+
		"others' CPU: what the machine spent outside the benchmark meanwhile (other users of the box), the noise. "+
		"*alone* is two app processes sharing one listening socket that the bench holds, no manager at all. "+
		"The load generator runs in the bench process on the same machine, and every baseline and reload row runs in rounds "+
		"that visit each manager in turn; a row merged from rounds adds up the counts, joins the seconds, "+
		"and takes the rounds' median p50 and p99 (the higher one of two) and their max.\n\n")
	fmt.Fprintf(&w, "| manager | mode | req/s baseline | vs alone | vs best other | latency baseline | req/s reloads | latency reloads | requests | failed | stale keep-alive | reloads ok | ready | first new | old gone | manager RSS, CPU | workers CPU | CPU µs/request | others' CPU |\n")
	fmt.Fprintf(&w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, mgr := range []string{"alone", "handoff", "cluster-master", "pm2"} {
		for _, mode := range []string{modeKeepAlive, modeNewConn} {
			base, rel := r.find(mgr, "baseline", mode, "graceful"), r.find(mgr, "reloads", mode, "graceful")
			if base == nil && rel == nil {
				continue
			}
			alone := r.find("alone", "baseline", mode, "graceful")
			other := "–"
			if mgr != "alone" {
				if best := r.bestOther("baseline", mode); best != nil && best != base {
					other = fmtRatio(base, best) + " " + best.Manager
				} else if best == base {
					other = "(best)"
				}
			}
			req, failed, stale, okN, ready, first, gone := "–", "–", "–", "–", "–", "–", "–"
			if rel != nil {
				rd, fn, gn, ok := rowTimes(rel)
				req, failed, stale = fmt.Sprint(rel.Requests), fmtFailed(rel), fmt.Sprint(rel.StaleKeepAlive)
				okN = fmt.Sprintf("%d/%d", ok, len(rel.Reloads))
				ready, first, gone = fmtMS(rd), fmtMS(fn), fmtMS(gn)
			} else if base != nil {
				req, failed, stale = fmt.Sprint(base.Requests), fmtFailed(base), fmt.Sprint(base.StaleKeepAlive)
			}
			usage, split, perReq, others := "–", "–", "–", "–"
			if base != nil {
				usage, split, others = fmtUsage(base.ManagerUsage), fmtSplit(base.WorkersUsage), fmt.Sprintf("%.0f%%", base.OthersCPUPercent)
				perReq = fmt.Sprintf("%.0f", base.CPUPerRequestUS)
			}
			fmt.Fprintf(&w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				mgr, mode, fmtRate(base), fmtRatio(base, alone), other, fmtLat(base), fmtRate(rel), fmtLat(rel),
				req, failed, stale, okN, ready, first, gone, usage, split, perReq, others)
		}
	}

	fmt.Fprintf(&w, "\n## handoff under load: failed deploy, rollback, agent restart\n\n")
	fmt.Fprintf(&w, "| scenario | mode | outcome | requests | failed | stale keep-alive | req/s median (worst) | latency p50 / p99 / max ms | timings ms |\n")
	fmt.Fprintf(&w, "|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.Rows {
		if row.Manager != "handoff" || (row.Scenario != "failed-deploy" && row.Scenario != "rollback" && row.Scenario != "agent-restart") {
			continue
		}
		outcome, timing := "–", "–"
		if len(row.Reloads) > 0 {
			rl := row.Reloads[0]
			switch {
			case !rl.OK:
				outcome = "error: " + rl.Error
			case row.Scenario == "failed-deploy":
				outcome = fmt.Sprintf("refused, rolled back in %.0f ms", rl.CommandMS)
			default:
				outcome = fmt.Sprintf("ok in %.0f ms", rl.CommandMS)
			}
			timing = fmt.Sprintf("ready %s, first new %s, old gone %s", fmtOne(rl.ReadyMS), fmtOne(rl.FirstNewMS), fmtOne(rl.OldGoneMS))
		}
		fmt.Fprintf(&w, "| %s | %s | %s | %d | %s | %d | %s | %s | %s |\n", row.Scenario, row.Mode, outcome, row.Requests,
			fmtFailed(&row), row.StaleKeepAlive, fmtRate(&row), fmtLat(&row), timing)
	}

	fmt.Fprintf(&w, "\n## The app's shutdown policy under handoff reloads, keep-alive\n\n")
	fmt.Fprintf(&w, "| shutdown | reloads | requests | failed | stale keep-alive | per reload | per connection per reload | latency p50 / p99 / max ms |\n")
	fmt.Fprintf(&w, "|---|---|---|---|---|---|---|---|\n")
	for _, sd := range []string{"default", "graceful"} {
		row := r.find("handoff", "reloads", modeKeepAlive, sd)
		if row == nil || len(row.Reloads) == 0 {
			continue
		}
		n := float64(len(row.Reloads))
		fmt.Fprintf(&w, "| %s | %d | %d | %s | %d | %.1f | %.2f | %s |\n", sd, len(row.Reloads), row.Requests, fmtFailed(row),
			row.StaleKeepAlive, float64(row.StaleKeepAlive)/n, float64(row.StaleKeepAlive)/n/float64(row.Conns), fmtLat(row))
	}

	if q := r.find("handoff", scenarioQuorum1, modeKeepAlive, "graceful"); q != nil {
		fmt.Fprintf(&w, "\n## Reload time and readiness quorum\n\n")
		fmt.Fprintf(&w, "handoff retires the old generation when *quorum* new workers are ready: all of them by default, one in the seed's cluster master. Median / max ms from the trigger.\n\n")
		fmt.Fprintf(&w, "| manager | quorum | mode | reloads ok | ready | first new | old gone | latency during reloads p50 / p99 / max ms | failed |\n")
		fmt.Fprintf(&w, "|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range []struct{ mgr, scenario, quorum string }{
			{"handoff", "reloads", r.Params.Quorum}, {"handoff", scenarioQuorum1, "1"}, {"cluster-master", "reloads", "1 (listening)"},
		} {
			for _, mode := range []string{modeKeepAlive, modeNewConn} {
				row := r.find(c.mgr, c.scenario, mode, "graceful")
				if row == nil {
					continue
				}
				rd, fn, gn, ok := rowTimes(row)
				fmt.Fprintf(&w, "| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s |\n", c.mgr, c.quorum, mode, ok, len(row.Reloads),
					fmtMS(rd), fmtMS(fn), fmtMS(gn), fmtLat(row), fmtFailed(row))
			}
		}
	}

	fmt.Fprintf(&w, "\n## Targets\n\n")
	for _, t := range r.Targets {
		mark := "met"
		if !t.Met {
			mark = "**missed**"
		}
		fmt.Fprintf(&w, "- %s — %s: want %s; got %s; margin %s\n", mark, t.Name, t.Want, t.Got, t.Margin)
	}
	var notes []string
	for _, row := range r.Rows {
		if row.Note != "" {
			notes = append(notes, fmt.Sprintf("%s %s %s: %s", row.Manager, row.Scenario, row.Mode, row.Note))
		}
		for _, rl := range row.Reloads {
			if !rl.OK {
				e := rl.Error
				if len(e) > 300 {
					e = e[:300] + "…"
				}
				notes = append(notes, fmt.Sprintf("%s %s %s (%s shutdown): %s #%d failed after %.0f ms: %s",
					row.Manager, row.Scenario, row.Mode, row.Shutdown, rl.Op, rl.N, rl.CommandMS, e))
			}
		}
	}
	for _, s := range r.Skipped {
		notes = append(notes, "skipped to stay within the time budget: "+s)
	}
	if len(notes) > 0 {
		fmt.Fprintf(&w, "\n## Notes\n\n")
		for _, n := range notes {
			fmt.Fprintf(&w, "- %s\n", n)
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(&w, "\n## Errors\n\n")
		for _, e := range r.Errors {
			fmt.Fprintf(&w, "- %s\n", e)
		}
	}
	return w.String()
}

// fmtSplit shows each worker's CPU %: how the connections were split.
func fmtSplit(u *Usage) string {
	if u == nil || len(u.PerPID) == 0 {
		return "–"
	}
	parts := make([]string, len(u.PerPID))
	for i, p := range u.PerPID {
		parts[i] = fmt.Sprintf("%.0f%%", p)
	}
	return strings.Join(parts, " / ")
}

func fmtOne(v float64) string {
	if v < 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}
