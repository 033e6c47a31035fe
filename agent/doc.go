// Command agent deploys one application on one Linux box with no dropped
// request. `agent run` is the daemon; deploy, rollback, reload, status,
// history and version are its clients, talking over the control socket.
//
// Contract (see ../shared/DESIGN.md for the whole design):
//
//   - Config: deploy.toml from -c, $AGENT_CONFIG, ./deploy.toml,
//     /etc/agent/deploy.toml, in that order. Every unknown key, wrong type or
//     invalid value is refused as FILE:LINE:COL: message, exit 2. Relative
//     root and control.socket resolve against the config file's directory.
//   - Exit codes: 0 done; 1 failed (what was restored is printed); 2 usage or
//     config error; 3 agent not reachable or peer refused; 4 busy or
//     superseded.
//   - Control socket (default <root>/.agent/agent.sock): mode 0660, group
//     control.allow_gids[0] when given. Each peer is checked with SO_PEERCRED:
//     root, the agent's own uid, allow_uids, or a primary or supplementary gid
//     in allow_gids. A refused peer gets one result line with code
//     "forbidden" and the refusal is logged. One JSON Request per connection
//     (at most 64 KiB, within 5 s); the agent answers with JSON lines: events,
//     then exactly one result carrying a stable code (protocol.go).
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
//     operation, STATUS= one line, STOPPING=1). SIGHUP reloads from current;
//     SIGTERM or SIGINT aborts a running operation (which restores current),
//     drains every worker and exits 0. SIGUSR2 re-executes the agent binary
//     now at its path in place (same pid), handing over the sockets, the
//     control socket and the serving generation, whose workers never restart;
//     it is refused while an operation runs (see cluster.Master.Upgrade).
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
