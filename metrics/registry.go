package metrics

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ContentType is what the text format is served as.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Type is a metric family's TYPE line.
type Type string

const (
	TypeCounter   Type = "counter"
	TypeGauge     Type = "gauge"
	TypeHistogram Type = "histogram"
	TypeSummary   Type = "summary"
)

var (
	nameRe  = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelRe = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// Registry holds metric families and writes them.
type Registry struct {
	mu     sync.Mutex // guards fams, name and before
	fams   []family
	name   map[string]bool
	before []func()

	// scrapeMu serializes scrapes: it guards w, reused from one scrape to
	// the next so that a scrape allocates little, and whatever the before
	// hooks snapshot for the collect functions.
	scrapeMu sync.Mutex
	w        writer
}

type family struct {
	name, help string
	typ        Type
	write      func(w *writer)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{name: map[string]bool{}} }

func (r *Registry) add(name, help string, typ Type, labels []string, write func(w *writer)) {
	if !nameRe.MatchString(name) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", name))
	}
	for _, l := range labels {
		if !labelRe.MatchString(l) || strings.HasPrefix(l, "__") || l == "le" || l == "quantile" {
			panic(fmt.Sprintf("metrics: %s: invalid label name %q", name, l))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.name[name] {
		panic(fmt.Sprintf("metrics: %s registered twice", name))
	}
	r.name[name] = true
	r.fams = append(r.fams, family{name: name, help: helpEscaper.Replace(help), typ: typ, write: write})
}

// Counter registers and returns a counter.
func (r *Registry) Counter(name, help string) *Counter {
	c := &Counter{}
	r.add(name, help, TypeCounter, nil, func(w *writer) { w.sample(name, nil, nil, c.Value()) })
	return c
}

// Gauge registers and returns a gauge.
func (r *Registry) Gauge(name, help string) *Gauge {
	g := &Gauge{}
	r.add(name, help, TypeGauge, nil, func(w *writer) { w.sample(name, nil, nil, g.Value()) })
	return g
}

// Histogram registers and returns a histogram with the given upper bounds
// (sorted, +Inf implied).
func (r *Registry) Histogram(name, help string, buckets []float64) *Histogram {
	h := newHistogram(buckets)
	r.add(name, help, TypeHistogram, nil, func(w *writer) { h.write(w, name, nil, nil) })
	return h
}

// CounterVec registers a counter with labels.
func (r *Registry) CounterVec(name, help string, labels ...string) *CounterVec {
	v := &CounterVec{vec[*Counter]{names: labels, make: func() *Counter { return &Counter{} }}}
	r.add(name, help, TypeCounter, labels, func(w *writer) {
		v.each(func(vals []string, c *Counter) { w.sample(name, labels, vals, c.Value()) })
	})
	return v
}

// HistogramVec registers a histogram with labels.
func (r *Registry) HistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	v := &HistogramVec{vec[*Histogram]{names: labels, make: func() *Histogram { return newHistogram(buckets) }}}
	newHistogram(buckets) // check the buckets now, not at the first With
	r.add(name, help, TypeHistogram, labels, func(w *writer) {
		v.each(func(vals []string, h *Histogram) { h.write(w, name, labels, vals) })
	})
	return v
}

// Func registers a counter or gauge family whose samples collect emits at
// each scrape, one call of emit per label set (values in the order of
// labels). A family that emits nothing is left out of the scrape.
func (r *Registry) Func(name, help string, typ Type, labels []string, collect func(emit func(v float64, values ...string))) {
	if typ != TypeCounter && typ != TypeGauge {
		panic(fmt.Sprintf("metrics: %s: Func is for counters and gauges", name))
	}
	r.add(name, help, typ, labels, func(w *writer) {
		w.name, w.labels = name, labels
		collect(w.emit)
	})
}

// BeforeScrape registers f to run at the start of every scrape, before any
// family is written, one scrape at a time: a place to take one snapshot
// that several Func families read.
func (r *Registry) BeforeScrape(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.before = append(r.before, f)
}

// raw registers a family that writes its own samples (summaries).
func (r *Registry) raw(name, help string, typ Type, write func(w *writer)) {
	r.add(name, help, typ, nil, write)
}

// WriteTo writes every family in the text format.
func (r *Registry) WriteTo(out io.Writer) (int64, error) {
	r.mu.Lock()
	fams, before := r.fams, r.before // append-only: these elements never change
	r.mu.Unlock()
	r.scrapeMu.Lock()
	defer r.scrapeMu.Unlock()
	for _, f := range before {
		f()
	}
	w := &r.w
	if w.emit == nil {
		w.emit = w.emitFunc
	}
	w.b = w.b[:0]
	for _, f := range fams {
		mark := len(w.b)
		w.header(f.name, f.help, f.typ)
		body := len(w.b)
		f.write(w)
		if len(w.b) == body { // no samples: no family
			w.b = w.b[:mark]
		}
	}
	n, err := out.Write(w.b)
	return int64(n), err
}

// ServeHTTP serves GET /metrics; any other path is 404, any other method 405.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/metrics" {
		http.NotFound(w, req)
		return
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	if req.Method == http.MethodHead {
		return
	}
	r.WriteTo(w)
}

// Counter is a value that only goes up.
type Counter struct{ bits atomic.Uint64 }

// Inc adds 1.
func (c *Counter) Inc() { c.Add(1) }

// Add adds v; a negative or NaN v is ignored.
func (c *Counter) Add(v float64) {
	if !(v > 0) {
		return
	}
	addFloat(&c.bits, v)
}

// Value returns the current value.
func (c *Counter) Value() float64 { return math.Float64frombits(c.bits.Load()) }

// Gauge is a value that goes up and down.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the value.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v (negative to subtract).
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Value returns the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

func addFloat(bits *atomic.Uint64, v float64) {
	for {
		old := bits.Load()
		if bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Histogram counts observations in buckets.
type Histogram struct {
	upper  []float64
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Uint64
	le     []string // the bounds as written
}

func newHistogram(buckets []float64) *Histogram {
	if len(buckets) == 0 || !sort.Float64sAreSorted(buckets) {
		panic(fmt.Sprintf("metrics: histogram buckets %v: want sorted upper bounds", buckets))
	}
	for i := 1; i < len(buckets); i++ {
		if buckets[i] == buckets[i-1] {
			panic(fmt.Sprintf("metrics: histogram buckets %v: duplicate bound", buckets))
		}
	}
	if math.IsInf(buckets[len(buckets)-1], +1) {
		buckets = buckets[:len(buckets)-1]
	}
	h := &Histogram{upper: append([]float64(nil), buckets...), counts: make([]atomic.Uint64, len(buckets)+1)}
	for _, u := range h.upper {
		h.le = append(h.le, string(appendFloat(nil, u)))
	}
	h.le = append(h.le, "+Inf")
	return h
}

// Observe adds one observation of v.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	h.counts[sort.SearchFloat64s(h.upper, v)].Add(1) // the first bound >= v
	addFloat(&h.sum, v)
}

func (h *Histogram) write(w *writer, name string, labels, values []string) {
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		w.sampleExtra(name, "_bucket", labels, values, "le", h.le[i], float64(cum))
	}
	w.sampleExtra(name, "_sum", labels, values, "", "", math.Float64frombits(h.sum.Load()))
	w.sampleExtra(name, "_count", labels, values, "", "", float64(cum))
}

// DefBuckets are upper bounds in seconds for operations from 5 ms to 10 min.
var DefBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// CounterVec is a counter per label set.
type CounterVec struct{ vec[*Counter] }

// HistogramVec is a histogram per label set.
type HistogramVec struct{ vec[*Histogram] }

type vec[T any] struct {
	names []string
	make  func() T
	mu    sync.Mutex // guards kids
	kids  map[string]*child[T]
}

type child[T any] struct {
	values []string
	m      T
}

// With returns the child for values (one per label, in order), creating it
// at the first call. Hold on to it on hot paths.
func (v *vec[T]) With(values ...string) T {
	if len(values) != len(v.names) {
		panic(fmt.Sprintf("metrics: %d label values for labels %v", len(values), v.names))
	}
	key := strings.Join(values, "\xff")
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.kids == nil {
		v.kids = map[string]*child[T]{}
	}
	c, ok := v.kids[key]
	if !ok {
		c = &child[T]{values: append([]string(nil), values...), m: v.make()}
		v.kids[key] = c
	}
	return c.m
}

func (v *vec[T]) each(f func(values []string, m T)) {
	v.mu.Lock()
	keys := make([]string, 0, len(v.kids))
	for k := range v.kids {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	kids := make([]*child[T], len(keys))
	for i, k := range keys {
		kids[i] = v.kids[k]
	}
	v.mu.Unlock()
	for _, c := range kids {
		f(c.values, c.m)
	}
}

// writer builds the exposition.
type writer struct {
	b []byte
	// The Func family being written, and its emit function, made once.
	name   string
	labels []string
	emit   func(v float64, values ...string)
}

func (w *writer) emitFunc(v float64, values ...string) {
	if len(values) != len(w.labels) {
		panic(fmt.Sprintf("metrics: %s: %d label values for %d labels", w.name, len(values), len(w.labels)))
	}
	w.sample(w.name, w.labels, values, v)
}

var helpEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

// appendEscaped appends a label value with \, " and newline escaped.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '"':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		default:
			b = append(b, c)
		}
	}
	return b
}

func (w *writer) header(name, help string, typ Type) {
	w.b = append(w.b, "# HELP "...)
	w.b = append(w.b, name...)
	w.b = append(w.b, ' ')
	w.b = append(w.b, help...) // escaped at registration
	w.b = append(w.b, "\n# TYPE "...)
	w.b = append(w.b, name...)
	w.b = append(w.b, ' ')
	w.b = append(w.b, typ...)
	w.b = append(w.b, '\n')
}

func (w *writer) sample(name string, labels, values []string, v float64) {
	w.sampleExtra(name, "", labels, values, "", "", v)
}

// sampleExtra writes one sample line of name+suffix; extra, if not "", is
// one more label (a bucket's le, a summary's quantile) with the value extraV.
func (w *writer) sampleExtra(name, suffix string, labels, values []string, extra, extraV string, v float64) {
	w.b = append(w.b, name...)
	w.b = append(w.b, suffix...)
	if len(labels) > 0 || extra != "" {
		w.b = append(w.b, '{')
		for i, l := range labels {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.b = append(w.b, l...)
			w.b = append(w.b, `="`...)
			w.b = appendEscaped(w.b, values[i])
			w.b = append(w.b, '"')
		}
		if extra != "" {
			if len(labels) > 0 {
				w.b = append(w.b, ',')
			}
			w.b = append(w.b, extra...)
			w.b = append(w.b, `="`...)
			w.b = append(w.b, extraV...)
			w.b = append(w.b, '"')
		}
		w.b = append(w.b, '}')
	}
	w.b = append(w.b, ' ')
	w.b = appendFloat(w.b, v)
	w.b = append(w.b, '\n')
}

func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
