// Command bench measures zero-downtime reloads side by side: the same sample
// Node app (bench/fixtures/app.js, two workers) run alone, under handoff
// (`agent run` + `agent deploy` of a new release archive), under a
// seed-style cluster master (bench/fixtures/cluster-master.js, SIGHUP) and
// under pm2's cluster mode (`pm2 reload`), each with keep-alive and
// new-connection load from package loadgen, in process. scripts/bench.sh
// builds it and the agent, installs pm2, and runs it.
//
// For every manager and mode it records a baseline (no reloads; in rounds
// that visit every manager in turn, so that the machine's other load hits
// them alike) and a row under continuous load with a reload every 3 s;
// for handoff also a failed deploy (bench/fixtures/broken.js), a rollback,
// the agent restarted under systemd-socket-activate, and Node's default
// shutdown beside the app's graceful one. Results go to
// <out>/<date>.json and <out>/latest.md, with the targets evaluated (no
// failed request, reload time, p99 during reloads, the agent's RSS and CPU).
//
// Contract:
//   - Load and servers are on 127.0.0.1 only (loadgen refuses anything
//     else); release archives are served by an in-process HTTP server on
//     127.0.0.1 with ?checksum=sha256:….
//   - Every process the bench starts leads its own process group and is
//     stopped and reaped before it exits, on success, error or SIGINT/
//     SIGTERM: SIGTERM to the group, SIGKILL after a grace, then SIGKILL to
//     any descendant seen before that still runs (matched by pid and start
//     time, never by name). pm2's daemon, which detaches, is ended with
//     `pm2 kill` and the same descendant sweep. Each child's "pid starttime"
//     is appended to <work>/logs/children.pids for a wrapper's last resort.
//   - For the socket-unit row the bench holds the listening socket, as
//     systemd holds a .socket unit's, and starts `systemd-socket-activate
//     --fdname=http agent run` with it as LISTEN_FDS; killing the agent by
//     pid then leaves connections queued, not refused.
//   - Timings come from outside the manager where possible: the first
//     response the load gets from the new generation (its body names the
//     release), and the moment /proc shows every old worker gone; the
//     manager's own "ready" (agent --json events, the cluster master's JSON
//     lines) is recorded beside them.
//   - The run is bounded by -budget (scripts/bench.sh passes what is left of
//     10 minutes, or 2 with --quick, after building): a row that would start
//     after the deadline is skipped and listed in the results, and a reload
//     row stops triggering once its reloads run far over their period.
//   - Each row records the CPU the rest of the machine used meanwhile, and
//     the workers' and manager's CPU per request, so that a run on a busy
//     machine can be read for what it is.
//   - Nothing is written to <out> when the run is interrupted.
package main
