//go:build linux

// Package control is the agent's control protocol: the wire types, the
// server that serves them on a unix socket, and the client that calls it.
//
// It owns the control socket and one goroutine per connection, all stopped
// and waited for by Server.Close. What a request does is the caller's
// handler: the package knows no deploy, release or worker.
//
// Contract:
//
//   - Events name a Stage and a Kind from events.go (Events lists the
//     pairs); they are the public `agent … --json` output, pinned by a test.
//   - One JSON Request per connection, at most MaxRequestBytes, within
//     RequestTimeout; unknown fields are refused. The server answers with
//     JSON lines: zero or more events (Message.Type TypeEvent) and exactly
//     one result (TypeResult) carrying a stable Code, then closes.
//   - Listen binds the socket with mode 0660 (group gid when gid ≥ 0). A
//     socket file a live agent answers on is refused with ErrAgentRunning;
//     one left by a dead agent is replaced.
//   - Each peer is checked with SO_PEERCRED: root, the server's own uid, a
//     uid in allowUIDs, or a primary or supplementary gid in allowGIDs. A
//     refused peer gets one result with CodeForbidden; the refusal is logged.
//   - The handler's Log decouples the operation from its followers: any
//     number of connections follow one Log at their own pace; a slow or
//     vanished client never blocks or aborts the operation. A Log keeps at
//     most maxLogMessages; past it, progress and output events are dropped,
//     stage events and the result never.
//   - Call: failing to connect, or losing the connection before the result,
//     wraps ErrUnreachable (the CLI's exit 3); a malformed message is any
//     other error. ExitCode maps a result code to the CLI's exit code.
package control
