// Package loadgen is the request counter behind every zero-downtime claim in
// handoff: a bounded HTTP/1.1 load generator that speaks over raw net.Conn.
//
// Contract:
//   - It only ever targets loopback addresses (127.0.0.0/8, ::1, "localhost")
//     or unix sockets; anything else is refused with ErrNotLoopback before a
//     single packet is sent.
//   - It is bounded: a Run stops at Options.Duration, at Options.MaxRequests,
//     when its context ends, or on Stop, and Stop returns only after every
//     goroutine it started has returned and every connection is closed.
//   - It never retries silently. net/http's Transport retries an idempotent
//     request that fails on a reused keep-alive connection, which hides exactly
//     the failures a reload can cause; here every failure is counted by kind.
//     The one retry it does is the one browsers do: an error on a reused
//     connection before any byte of the response ("stale keep-alive") is
//     retried once on a fresh connection and counted in StaleKeepAlive, not in
//     Failed. If the retry fails too, that failure is counted.
package loadgen
