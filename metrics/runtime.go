package metrics

import (
	"os"
	"runtime"
	"runtime/debug"
	rm "runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// AddRuntime registers the Go runtime collector (go_*, the names of the
// official client's, computed from runtime/metrics without stopping the
// world) and the process collector (process_*, from /proc/self).
func (r *Registry) AddRuntime() {
	r.Func("go_info", "Information about the Go environment.", TypeGauge, []string{"version"}, func(emit func(float64, ...string)) {
		emit(1, runtime.Version())
	})
	r.Func("go_goroutines", "Number of goroutines that currently exist.", TypeGauge, nil, func(emit func(float64, ...string)) {
		emit(float64(runtime.NumGoroutine()))
	})
	r.raw("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", TypeSummary, writeGCSummary)
	for _, m := range memstats {
		r.Func(m.name, m.help, m.typ, nil, func(emit func(float64, ...string)) {
			if v, ok := readRuntime(m.from); ok {
				emit(v)
			}
		})
	}
	r.addProcess()
}

// A memstat is one go_* gauge or counter: the sum of some runtime/metrics
// values.
type memstat struct {
	name, help string
	typ        Type
	from       []string
}

var memstats = []memstat{
	{"go_threads", "Number of OS threads the process has (/proc/self/stat).", TypeGauge, nil},
	{"go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting.", TypeGauge, []string{"/sched/gomaxprocs:threads"}},
	{"go_gc_gogc_percent", "Heap size target percentage configured by GOGC.", TypeGauge, []string{"/gc/gogc:percent"}},
	{"go_gc_gomemlimit_bytes", "Go runtime memory limit configured by GOMEMLIMIT.", TypeGauge, []string{"/gc/gomemlimit:bytes"}},
	{"go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", TypeGauge, []string{"/memory/classes/heap/objects:bytes"}},
	{"go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", TypeCounter, []string{"/gc/heap/allocs:bytes"}},
	{"go_memstats_mallocs_total", "Total number of heap objects allocated, both live and gc-ed.", TypeCounter, []string{"/gc/heap/allocs:objects", "/gc/heap/tiny/allocs:objects"}},
	{"go_memstats_frees_total", "Total number of heap objects frees.", TypeCounter, []string{"/gc/heap/frees:objects", "/gc/heap/tiny/allocs:objects"}},
	{"go_memstats_sys_bytes", "Number of bytes obtained from system.", TypeGauge, []string{"/memory/classes/total:bytes"}},
	{"go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", TypeGauge, []string{"/memory/classes/heap/objects:bytes"}},
	{"go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system.", TypeGauge, []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes", "/memory/classes/heap/free:bytes", "/memory/classes/heap/released:bytes"}},
	{"go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", TypeGauge, []string{"/memory/classes/heap/free:bytes", "/memory/classes/heap/released:bytes"}},
	{"go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", TypeGauge, []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes"}},
	{"go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", TypeGauge, []string{"/memory/classes/heap/released:bytes"}},
	{"go_memstats_heap_objects", "Number of currently allocated objects.", TypeGauge, []string{"/gc/heap/objects:objects"}},
	{"go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments.", TypeGauge, []string{"/memory/classes/heap/stacks:bytes"}},
	{"go_memstats_stack_sys_bytes", "Number of bytes obtained from system for stack allocator.", TypeGauge, []string{"/memory/classes/heap/stacks:bytes", "/memory/classes/os-stacks:bytes"}},
	{"go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata.", TypeGauge, []string{"/memory/classes/metadata/other:bytes"}},
	{"go_memstats_other_sys_bytes", "Number of bytes used for other system allocations.", TypeGauge, []string{"/memory/classes/other:bytes"}},
	{"go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", TypeGauge, []string{"/gc/heap/goal:bytes"}},
}

// readRuntime sums the runtime/metrics values named (go_threads, with none,
// is the process's thread count); ok is false when one is not supported.
func readRuntime(names []string) (float64, bool) {
	if names == nil {
		st, err := readStat()
		return float64(st.threads), err == nil
	}
	s := make([]rm.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	rm.Read(s)
	var sum float64
	for _, x := range s {
		switch x.Value.Kind() {
		case rm.KindUint64:
			sum += float64(x.Value.Uint64())
		case rm.KindFloat64:
			sum += x.Value.Float64()
		default: // KindBad: not supported by this runtime
			return 0, false
		}
	}
	return sum, true
}

// writeGCSummary writes go_gc_duration_seconds as the official client does:
// min, quartiles and max of the recent pauses, their total and count.
func writeGCSummary(w *writer) {
	var st debug.GCStats
	st.PauseQuantiles = make([]time.Duration, 5)
	debug.ReadGCStats(&st)
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		w.sampleExtra("go_gc_duration_seconds", nil, nil, "quantile", q, st.PauseQuantiles[i].Seconds())
	}
	w.sample("go_gc_duration_seconds_sum", nil, nil, st.PauseTotal.Seconds())
	w.sample("go_gc_duration_seconds_count", nil, nil, float64(st.NumGC))
}

// procStat is what the process collector reads from /proc/self/stat.
type procStat struct {
	utime, stime, starttime uint64 // clock ticks
	threads                 int64
	vsize, rss              uint64 // bytes, pages
}

// userHZ is the unit of /proc's clock ticks: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

func readStat() (procStat, error) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	// comm may hold spaces and parentheses: the fields start after the last ')'.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// f[0] is field 3 (state) of proc(5).
	if len(f) < 22 {
		return procStat{}, syscall.EINVAL
	}
	u := func(i int) uint64 { n, _ := strconv.ParseUint(f[i-3], 10, 64); return n }
	return procStat{utime: u(14), stime: u(15), threads: int64(u(20)), starttime: u(22), vsize: u(23), rss: u(24)}, nil
}

// bootTime is btime from /proc/stat, in seconds since the epoch.
func bootTime() (float64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, syscall.EINVAL
}

func (r *Registry) addProcess() {
	stat := func(f func(st procStat) float64) func(emit func(float64, ...string)) {
		return func(emit func(float64, ...string)) {
			if st, err := readStat(); err == nil {
				emit(f(st))
			}
		}
	}
	r.Func("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", TypeCounter, nil,
		stat(func(st procStat) float64 { return float64(st.utime+st.stime) / userHZ }))
	r.Func("process_resident_memory_bytes", "Resident memory size in bytes.", TypeGauge, nil,
		stat(func(st procStat) float64 { return float64(st.rss) * float64(os.Getpagesize()) }))
	r.Func("process_virtual_memory_bytes", "Virtual memory size in bytes.", TypeGauge, nil,
		stat(func(st procStat) float64 { return float64(st.vsize) }))
	// The start time is the pid's: an in-place upgrade (execve) keeps it.
	btime, berr := bootTime()
	r.Func("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", TypeGauge, nil, func(emit func(float64, ...string)) {
		if st, err := readStat(); err == nil && berr == nil {
			emit(btime + float64(st.starttime)/userHZ)
		}
	})
	r.Func("process_open_fds", "Number of open file descriptors.", TypeGauge, nil, func(emit func(float64, ...string)) {
		d, err := os.Open("/proc/self/fd")
		if err != nil {
			return
		}
		defer d.Close()
		names, err := d.Readdirnames(-1)
		if err == nil {
			emit(float64(len(names) - 1)) // less the one reading the directory
		}
	})
	limit := func(res int) func(emit func(float64, ...string)) {
		return func(emit func(float64, ...string)) {
			var l syscall.Rlimit
			if err := syscall.Getrlimit(res, &l); err == nil {
				emit(float64(l.Cur)) // RLIM_INFINITY shows as 2^64-1, as the official client's does
			}
		}
	}
	r.Func("process_max_fds", "Maximum number of open file descriptors.", TypeGauge, nil, limit(syscall.RLIMIT_NOFILE))
	r.Func("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", TypeGauge, nil, limit(syscall.RLIMIT_AS))
}
