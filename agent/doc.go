// Command agent deploys one application on one Linux box with no dropped
// request. `agent run` is the daemon; deploy, rollback, reload, status,
// history and version are its clients, talking over the control socket.
//
// The agent is the command table (main.go, cli.go) and the daemon's
// composition (daemon.go) of the packages that own the resources: release
// (the release tree and current), cluster (sockets and workers), hooks (hook
// processes), config (deploy.toml) and control (the control socket and its
// protocol). Only the agent imports them all.
//
// Contract:
//
//   - Config: deploy.toml from -c, $AGENT_CONFIG, ./deploy.toml,
//     /etc/agent/deploy.toml, in that order (package config). A refused
//     config prints every problem as FILE:LINE:COL: message and exits 2; so
//     does a [[listen]] address the daemon cannot bind.
//   - Exit codes: 0 done; 1 failed (what was restored is printed); 2 usage or
//     config error; 3 agent not reachable or peer refused; 4 busy or
//     superseded (control.ExitCode).
//   - Control socket (default <root>/.agent/agent.sock): mode 0660, group
//     control.allow_gids[0] when given, peers checked by SO_PEERCRED against
//     control.allow_uids and allow_gids (package control). One request per
//     connection; the answer is events, then one result with a stable code.
//   - One deploy, rollback or reload at a time. Another one is refused with
//     code "busy" naming the running one, or with --wait queued; a newer
//     waiter supersedes an older one, which ends with code "superseded".
//     A client that disconnects does not abort its operation.
//   - Deploy: lock → fetch → link → pre-activate hooks (failure: the release
//     is removed, nothing changed) → activate → reload (failure: current
//     points back, the old workers never stopped, on-failure hooks, exit 1
//     with each failed worker's verdict; a first deploy creates current only
//     once its workers serve) → post-deploy hooks (failure with
//     post_deploy_failure = "rollback": back to the previous release through
//     a reload) → record → prune (never the releases of live generations).
//     Redeploying an existing id with identical content re-activates it
//     without re-running pre-activate; if it is current, nothing happens.
//   - `agent run`: systemd Type=notify (READY=1 once the first generation
//     serves or when there is none yet, RELOADING=1/READY=1 around every
//     operation, STATUS= one line, STOPPING=1). SIGHUP is `agent reload`;
//     SIGTERM or SIGINT aborts a running operation (which restores current),
//     drains every worker and exits 0. SIGUSR2 re-executes the agent binary
//     now at its path in place (same pid), handing over the sockets, the
//     control socket and the serving generation, whose workers never restart;
//     it is refused while an operation runs (see cluster.Master.Upgrade).
//   - Reload (CLI or SIGHUP; not the start-up generation, not a reload onto
//     a replaced socket) re-reads the config file the agent started with
//     (configlive.go): refused with code config (FILE:LINE:COL lines) or
//     restart_needed (config.RestartKeys changed), exit 2, one error log
//     line, and nothing changes; accepted, it is in force for the new
//     generation and every later operation, and put back if that
//     generation fails. The config in force is the serving generation's.
//   - [app] env_file is read when each generation starts; values reach the
//     workers only (cluster.GenerationSpec.Env), never a log line, status,
//     history or --json (key names and sha256 digests only).
//   - [metrics] address (off when empty): GET /metrics in the Prometheus
//     text format on a socket of its own (metrics.go), never an app socket;
//     an address that cannot be bound is a config error at its line (exit
//     2), except in an agent started by an upgrade, which goes on without
//     it. SIGUSR2 hands the socket over; counters restart from 0.
//   - [app] adapter = "node": at start the agent writes nodepreload.cjs
//     (embedded) to <root>/.agent/node/handoff-node-<hash>.cjs, in a 0700
//     directory it owns, never into a release, and gives every worker
//     NODE_OPTIONS = the app env's (else the agent's own) value with
//     `--require "<that file>"` appended, and HANDOFF_NODE_ADAPTER (JSON: each
//     socket's fd, name, address and inode; stop_signal; drain_ms). A fresh
//     start removes other versions of the file; a start after an in-place
//     upgrade keeps them (handed-over workers may still start Node processes
//     that load theirs).
package main
