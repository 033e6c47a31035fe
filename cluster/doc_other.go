//go:build !linux

package cluster

// handoff runs on Linux only: it relies on pidfds, SO_PEERCRED, Pdeathsig,
// sock_diag and /proc. On any other system this package stops the build
// with that one message instead of a list of missing symbols.
var _ = handoff_runs_on_Linux_only
