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
	"unsafe"
)

// AddRuntime registers the Go runtime collector (go_*, the names of the
// official client's, computed from runtime/metrics without stopping the
// world) and the process collector (process_*, from /proc/self). Each
// scrape reads runtime/metrics once and /proc/self/stat once, into buffers
// kept from one scrape to the next.
func (r *Registry) AddRuntime() {
	c := &runtimeCollector{gc: debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}}
	for _, m := range memstats {
		for _, n := range m.from {
			if _, ok := c.index(n); !ok {
				c.samples = append(c.samples, rm.Sample{Name: n})
			}
		}
	}
	c.btime, c.btimeErr = bootTime()
	r.BeforeScrape(c.read)

	r.Func("go_info", "Information about the Go environment.", TypeGauge, []string{"version"}, func(emit func(float64, ...string)) {
		emit(1, runtime.Version())
	})
	r.Func("go_goroutines", "Number of goroutines that currently exist.", TypeGauge, nil, func(emit func(float64, ...string)) {
		emit(float64(runtime.NumGoroutine()))
	})
	r.Func("go_threads", "Number of OS threads the process has (/proc/self/stat).", TypeGauge, nil, c.stat(func(st procStat) float64 { return float64(st.threads) }))
	r.raw("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", TypeSummary, c.writeGCSummary)
	for _, m := range memstats {
		r.Func(m.name, m.help, m.typ, nil, func(emit func(float64, ...string)) {
			if v, ok := c.sum(m.from); ok {
				emit(v)
			}
		})
	}
	r.Func("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", TypeCounter, nil,
		c.stat(func(st procStat) float64 { return float64(st.utime+st.stime) / userHZ }))
	r.Func("process_resident_memory_bytes", "Resident memory size in bytes.", TypeGauge, nil,
		c.stat(func(st procStat) float64 { return float64(st.rss) * float64(os.Getpagesize()) }))
	r.Func("process_virtual_memory_bytes", "Virtual memory size in bytes.", TypeGauge, nil,
		c.stat(func(st procStat) float64 { return float64(st.vsize) }))
	// The start time is the pid's: an in-place upgrade (execve) keeps it.
	r.Func("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", TypeGauge, nil, func(emit func(float64, ...string)) {
		if c.statErr == nil && c.btimeErr == nil {
			emit(c.btime + float64(c.st.starttime)/userHZ)
		}
	})
	r.Func("process_open_fds", "Number of open file descriptors.", TypeGauge, nil, func(emit func(float64, ...string)) {
		if n, err := c.openFDs(); err == nil {
			emit(float64(n))
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

// runtimeCollector holds what one scrape read; guarded by the registry's
// scrapeMu (written in read, a BeforeScrape hook).
type runtimeCollector struct {
	samples  []rm.Sample
	gc       debug.GCStats
	st       procStat
	statErr  error
	statBuf  [1024]byte
	dentBuf  [4096]byte
	btime    float64
	btimeErr error
}

func (c *runtimeCollector) read() {
	rm.Read(c.samples)
	c.st, c.statErr = c.readStat()
}

func (c *runtimeCollector) index(name string) (int, bool) {
	for i, s := range c.samples {
		if s.Name == name {
			return i, true
		}
	}
	return 0, false
}

// sum adds up the runtime/metrics values named; ok is false when one is
// not supported by this runtime.
func (c *runtimeCollector) sum(names []string) (float64, bool) {
	var sum float64
	for _, n := range names {
		i, _ := c.index(n)
		switch v := c.samples[i].Value; v.Kind() {
		case rm.KindUint64:
			sum += float64(v.Uint64())
		case rm.KindFloat64:
			sum += v.Float64()
		default:
			return 0, false
		}
	}
	return sum, true
}

func (c *runtimeCollector) stat(f func(st procStat) float64) func(emit func(float64, ...string)) {
	return func(emit func(float64, ...string)) {
		if c.statErr == nil {
			emit(f(c.st))
		}
	}
}

// A memstat is one go_* gauge or counter: the sum of runtime/metrics
// values, as the official client maps them.
type memstat struct {
	name, help string
	typ        Type
	from       []string
}

var memstats = []memstat{
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

// writeGCSummary writes go_gc_duration_seconds as the official client does:
// min, quartiles and max of the recent pauses, their total and count.
func (c *runtimeCollector) writeGCSummary(w *writer) {
	debug.ReadGCStats(&c.gc) // reuses c.gc's slices
	for i, q := range [...]string{"0", "0.25", "0.5", "0.75", "1"} {
		w.sampleExtra("go_gc_duration_seconds", "", nil, nil, "quantile", q, c.gc.PauseQuantiles[i].Seconds())
	}
	w.sampleExtra("go_gc_duration_seconds", "_sum", nil, nil, "", "", c.gc.PauseTotal.Seconds())
	w.sampleExtra("go_gc_duration_seconds", "_count", nil, nil, "", "", float64(c.gc.NumGC))
}

// procStat is what the process collector reads from /proc/self/stat.
type procStat struct {
	utime, stime, starttime uint64 // clock ticks
	threads                 uint64
	vsize, rss              uint64 // bytes, pages
}

// userHZ is the unit of /proc's clock ticks: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

// readStat parses /proc/self/stat (proc(5)) without allocating.
func (c *runtimeCollector) readStat() (procStat, error) {
	fd, err := syscall.Open("/proc/self/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return procStat{}, err
	}
	n, err := syscall.Read(fd, c.statBuf[:])
	syscall.Close(fd)
	if err != nil {
		return procStat{}, err
	}
	b := c.statBuf[:n]
	// comm may hold spaces and parentheses: the fields start after the
	// last ')', with field 3 (state).
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	var f [25]uint64 // f[k] is field k of proc(5), up to rss
	field := 2
	for _, ch := range b[i+1:] {
		switch {
		case ch == ' ':
			field++
		case ch >= '0' && ch <= '9' && field < len(f):
			f[field] = f[field]*10 + uint64(ch-'0')
		}
	}
	if field < 24 {
		return procStat{}, syscall.EINVAL
	}
	// Fields 14 utime, 15 stime, 20 num_threads, 22 starttime, 23 vsize, 24 rss.
	return procStat{utime: f[14], stime: f[15], threads: f[20], starttime: f[22], vsize: f[23], rss: f[24]}, nil
}

// openFDs counts the entries of /proc/self/fd with getdents64 into a
// buffer kept between scrapes, less the one it opened to read them.
func (c *runtimeCollector) openFDs() (int, error) {
	fd, err := syscall.Open("/proc/self/fd", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	count := 0
	for {
		n, err := syscall.Getdents(fd, c.dentBuf[:])
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return count - 1, nil
		}
		// linux_dirent64: ino u64, off u64, reclen u16, type u8, name.
		for off := 0; off < n; {
			reclen := int(*(*uint16)(unsafe.Pointer(&c.dentBuf[off+16])))
			if name := c.dentBuf[off+19]; name != '.' {
				count++
			}
			off += reclen
		}
	}
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
