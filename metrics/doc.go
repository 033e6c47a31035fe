// Package metrics keeps counters, gauges and histograms and writes them in
// the Prometheus text exposition format (version 0.0.4), with the Go runtime
// and process collectors Prometheus users expect (go_*, process_*). It is
// the standard library only: the agent's dependency list stays what it is.
//
// Contract:
//
//   - A Registry is explicit: nothing registers itself at init. Metrics are
//     registered once, before the registry is served; a name that is not a
//     valid Prometheus name, registered twice, or a label name that is not
//     valid panics (a programming error, like a bad regexp literal).
//   - Counters only go up (a negative Add is ignored); they restart from 0
//     with the process, which Prometheus's rate() takes as a counter reset.
//   - Every value can be updated from any goroutine without a lock held by
//     the caller: counters, gauges and histogram buckets are atomic; a
//     vector's children are created under the vector's own lock.
//   - WriteTo writes families in registration order, children of a vector
//     sorted by label values, histograms cumulative with a +Inf bucket equal
//     to _count. A histogram's buckets are read one by one while
//     observations may go on: a scrape may miss an observation made during
//     it, never count one twice.
//   - Func families are computed at each scrape by their collect function,
//     on the scraping goroutine: it must be cheap and must not block.
//   - Runtime (AddRuntime) reads runtime/metrics, runtime/debug GC stats and
//     /proc/self; a read that fails leaves that family out of the scrape.
package metrics
