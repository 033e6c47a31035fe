package metrics

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func scrape(t *testing.T, r *Registry) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestRegistry_WriteTo(t *testing.T) {
	r := NewRegistry()
	c := r.Counter("x_events_total", "Events.\nSecond line \\ here.")
	c.Add(2)
	c.Add(-5) // ignored
	c.Inc()
	g := r.Gauge("x_level", "A level.")
	g.Set(1.5)
	g.Add(-2)
	cv := r.CounterVec("x_ops_total", "Ops.", "op", "result")
	cv.With("deploy", "ok").Inc()
	cv.With("deploy", "failed").Add(2)
	cv.With("a\"b\\c\nd", "ok").Inc()
	h := r.Histogram("x_seconds", "Durations.", []float64{0.1, 1, 10})
	for _, v := range []float64{0.05, 0.1, 0.5, 5, 50} {
		h.Observe(v)
	}
	hv := r.HistogramVec("x_op_seconds", "Per op.", []float64{1}, "op")
	hv.With("reload").Observe(2)
	r.Func("x_workers", "Workers.", TypeGauge, []string{"state"}, func(emit func(float64, ...string)) {
		emit(2, "ready")
		emit(0, "starting")
	})
	r.Func("x_empty", "Emits nothing.", TypeGauge, nil, func(emit func(float64, ...string)) {})
	r.CounterVec("x_unused_total", "No child yet.", "k")

	want := `# HELP x_events_total Events.\nSecond line \\ here.
# TYPE x_events_total counter
x_events_total 3
# HELP x_level A level.
# TYPE x_level gauge
x_level -0.5
# HELP x_ops_total Ops.
# TYPE x_ops_total counter
x_ops_total{op="a\"b\\c\nd",result="ok"} 1
x_ops_total{op="deploy",result="failed"} 2
x_ops_total{op="deploy",result="ok"} 1
# HELP x_seconds Durations.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 2
x_seconds_bucket{le="1"} 3
x_seconds_bucket{le="10"} 4
x_seconds_bucket{le="+Inf"} 5
x_seconds_sum 55.65
x_seconds_count 5
# HELP x_op_seconds Per op.
# TYPE x_op_seconds histogram
x_op_seconds_bucket{op="reload",le="1"} 0
x_op_seconds_bucket{op="reload",le="+Inf"} 1
x_op_seconds_sum{op="reload"} 2
x_op_seconds_count{op="reload"} 1
# HELP x_workers Workers.
# TYPE x_workers gauge
x_workers{state="ready"} 2
x_workers{state="starting"} 0
`
	if got := scrape(t, r); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRegistry_panics(t *testing.T) {
	for _, tc := range []struct {
		name string
		reg  func(r *Registry)
	}{
		{name: "bad name", reg: func(r *Registry) { r.Counter("x-y", "") }},
		{name: "twice", reg: func(r *Registry) { r.Counter("x", ""); r.Gauge("x", "") }},
		{name: "bad label", reg: func(r *Registry) { r.CounterVec("x", "", "le") }},
		{name: "unsorted buckets", reg: func(r *Registry) { r.Histogram("x", "", []float64{2, 1}) }},
		{name: "label count", reg: func(r *Registry) { r.CounterVec("x", "", "a").With("1", "2") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			tc.reg(NewRegistry())
		})
	}
}

// Concurrent updates and scrapes: every observation is counted once, and a
// scrape never shows a bucket above +Inf (run with -race).
func TestHistogram_concurrent(t *testing.T) {
	r := NewRegistry()
	h := r.Histogram("x_seconds", "", []float64{1, 2})
	c := r.CounterVec("x_total", "", "k")
	const goroutines, each = 4, 2000
	var wg sync.WaitGroup
	for i := 0; i < goroutines; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				h.Observe(float64(j % 3))
				c.With(strconv.Itoa(j % 2)).Inc()
			}
		}()
	}
	stop := make(chan struct{})
	scraped := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				scraped <- n
				return
			default:
			}
			scrape(t, r)
			n++
		}
	}()
	wg.Wait()
	close(stop)
	<-scraped
	out := scrape(t, r)
	for _, line := range []string{
		`x_seconds_bucket{le="+Inf"} 8000`, `x_seconds_count 8000`,
		`x_total{k="0"} 4000`, `x_total{k="1"} 4000`,
	} {
		if !strings.Contains(out, line+"\n") {
			t.Errorf("missing %q in:\n%s", line, out)
		}
	}
}

func TestRegistry_AddRuntime(t *testing.T) {
	r := NewRegistry()
	r.AddRuntime()
	out := scrape(t, r)
	val := func(name string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %s in:\n%s", name, out)
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := val("go_goroutines"); v < 1 {
		t.Errorf("go_goroutines = %v", v)
	}
	if v := val("go_threads"); v < 1 {
		t.Errorf("go_threads = %v", v)
	}
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var rssKiB float64
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			rssKiB, _ = strconv.ParseFloat(strings.Fields(v)[0], 64)
		}
	}
	// The same figure as VmRSS, give or take what moved between the reads.
	if v := val("process_resident_memory_bytes"); v < rssKiB*1024/2 || v > rssKiB*1024*2 {
		t.Errorf("process_resident_memory_bytes = %v, VmRSS %v KiB", v, rssKiB)
	}
	if v := val("process_open_fds"); v < 3 {
		t.Errorf("process_open_fds = %v", v)
	}
	if v, max := val("process_open_fds"), val("process_max_fds"); v > max {
		t.Errorf("process_open_fds %v > process_max_fds %v", v, max)
	}
	if v := val("go_memstats_heap_alloc_bytes"); v <= 0 || v > val("go_memstats_sys_bytes") {
		t.Errorf("go_memstats_heap_alloc_bytes = %v", v)
	}
	if v := val("go_memstats_alloc_bytes_total"); v < val("go_memstats_alloc_bytes") {
		t.Errorf("go_memstats_alloc_bytes_total = %v", v)
	}
	for _, name := range []string{"process_start_time_seconds", "process_cpu_seconds_total", "go_gc_duration_seconds_count", "go_memstats_next_gc_bytes"} {
		val(name)
	}
	if !strings.Contains(out, `go_gc_duration_seconds{quantile="0.5"} `) {
		t.Errorf("no GC pause quantiles in:\n%s", out)
	}
	promtoolCheck(t, out)
}

// promtoolCheck runs `promtool check metrics` (Debian's prometheus, from
// scripts/install-deps.sh) on a scrape: any lint problem fails the test.
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not installed (scripts/install-deps.sh): %v", err)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s\non:\n%s", err, out, text)
	}
}

func TestRegistry_ServeHTTP(t *testing.T) {
	r := NewRegistry()
	r.Counter("x_total", "X.").Inc()
	srv := httptest.NewServer(r)
	defer srv.Close()
	get := func(method, path string) (*http.Response, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	res, body := get("GET", "/metrics")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != ContentType || body != "# HELP x_total X.\n# TYPE x_total counter\nx_total 1\n" {
		t.Errorf("GET /metrics: %d %q %q", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	if res, _ := get("GET", "/"); res.StatusCode != 404 {
		t.Errorf("GET /: %d", res.StatusCode)
	}
	if res, _ := get("POST", "/metrics"); res.StatusCode != 405 {
		t.Errorf("POST /metrics: %d", res.StatusCode)
	}
	promtoolCheck(t, body)
}

// BenchmarkRegistry_WriteTo: what one scrape of a registry like the
// agent's costs (allocations count: they grow the agent's heap).
func BenchmarkRegistry_WriteTo(b *testing.B) {
	r := NewRegistry()
	r.AddRuntime()
	cv := r.CounterVec("x_ops_total", "Ops.", "op", "result")
	for _, op := range []string{"deploy", "rollback", "reload"} {
		cv.With(op, "ok").Inc()
		cv.With(op, "failed").Inc()
	}
	h := r.HistogramVec("x_seconds", "Durations.", DefBuckets, "op")
	h.With("deploy").Observe(1)
	r.Func("x_workers", "Workers.", TypeGauge, []string{"state"}, func(emit func(float64, ...string)) {
		for _, s := range []string{"starting", "ready", "backoff", "stopping", "exited"} {
			emit(1, s)
		}
	})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.WriteTo(io.Discard)
	}
}
