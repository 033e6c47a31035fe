package main

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/handoff/handoff/cluster"
)

// Config is a validated deploy.toml.
type Config struct {
	Path         string // the file it was read from
	Root         string // absolute
	KeepReleases int
	Linked       []string
	App          AppConfig
	Listen       []ListenConfig
	Readiness    ReadinessConfig
	Restart      RestartConfig
	Fetch        FetchConfig
	Control      ControlConfig
	Hooks        HooksConfig
	Metrics      MetricsConfig
}

// MetricsConfig is [metrics]: the Prometheus endpoint (metrics.go).
type MetricsConfig struct {
	Address string  // "" = off; host:port or unix:/path
	Pos     Problem // where the address is, for an address in use at start; Msg unused
}

type AppConfig struct {
	Command      []string
	Workers      int
	Env          map[string]string
	StopSignal   syscall.Signal
	DrainTimeout time.Duration
	RescueLinger time.Duration
	Adapter      string        // none | node (nodeadapter.go)
	ListenCheck  time.Duration // period of the listen watch; 0 = off
}

type ListenConfig struct {
	Name    string
	Address string  // "" = must come from systemd socket activation
	Rescue  bool    // connection rescue when a generation stops (TCP; default true)
	NoDelay bool    // TCP_NODELAY on the listening socket (default true)
	Pos     Problem // where the address (or the [[listen]] entry) is, for errors found at start; Msg unused
}

type ReadinessConfig struct {
	Mode      string // listen | notify | delay
	Timeout   time.Duration
	Quorum    int // 0 = all
	Delay     time.Duration
	Probation time.Duration
	// The HTTP check: HTTPPath "" is off; the rest "" / nil / 0 take
	// cluster.HTTPCheck's defaults.
	HTTPPath    string
	HTTPHost    string
	HTTPStatus  []cluster.StatusRange
	HTTPTimeout time.Duration
}

type RestartConfig struct {
	BackoffMin, BackoffMax time.Duration
}

type FetchConfig struct {
	Allow           []string
	AllowHosts      []string // empty: any host
	RequireChecksum bool
	MaxBytes        int64
	MaxFiles        int
	Timeout         time.Duration
}

type ControlConfig struct {
	Socket    string // absolute
	AllowUIDs []int
	AllowGIDs []int
}

type HooksConfig struct {
	Timeout           time.Duration
	PreActivate       [][]string
	PostDeploy        [][]string
	PostRollback      [][]string
	OnFailure         [][]string
	PostDeployFailure string // rollback | warn
}

// EnvList returns App.Env as sorted KEY=VALUE strings.
func (a AppConfig) EnvList() []string {
	out := make([]string, 0, len(a.Env))
	for k, v := range a.Env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ErrNoConfig means no config file was found in the search order.
var ErrNoConfig = errors.New("no config file")

// ConfigError lists every problem found in one config file, each as
// "FILE:LINE:COL: message".
type ConfigError struct {
	Path     string
	Problems []Problem
}

// Problem is one refused key or value.
type Problem struct {
	Line, Col int
	Msg       string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s:%d:%d: %s", e.Path, p.Line, p.Col, msgEscaper.Replace(p.Msg))
	}
	return b.String()
}

// msgEscaper keeps each problem on one line: the TOML decoder's messages
// may quote a raw newline from the input.
var msgEscaper = strings.NewReplacer("\n", `\n`, "\r", `\r`, "\t", `\t`)

// FindConfig returns the config path to use: flagPath, then $AGENT_CONFIG,
// then ./deploy.toml, then /etc/agent/deploy.toml. An explicitly named file
// (flag or environment) is returned even when missing, so that reading it
// reports the real error; otherwise ErrNoConfig names the places tried.
func FindConfig(flagPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	if p := os.Getenv("AGENT_CONFIG"); p != "" {
		return p, nil
	}
	tried := []string{"./deploy.toml", "/etc/agent/deploy.toml"}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: give -c FILE or set AGENT_CONFIG (tried %s)", ErrNoConfig, strings.Join(tried, ", "))
}

// LoadConfig reads and validates the config file at path. Every syntax
// error, unknown key, wrong type or invalid value is a *ConfigError.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parseConfig(path, string(b))
}

// rawConfig mirrors deploy.toml; each leaf type checks its own TOML type and
// value, so the decoder reports the key's position with the error.
type rawConfig struct {
	Root         tString   `toml:"root"`
	KeepReleases tCount    `toml:"keep_releases"`
	Linked       tRelPaths `toml:"linked"`
	App          struct {
		Command      tCommand   `toml:"command"`
		Workers      tCount     `toml:"workers"`
		Env          tEnv       `toml:"env"`
		StopSignal   tSignal    `toml:"stop_signal"`
		DrainTimeout tDuration  `toml:"drain_timeout"`
		RescueLinger tDuration  `toml:"rescue_linger"`
		Adapter      tEnum      `toml:"adapter"`
		ListenCheck  tDuration0 `toml:"listen_check"`
	} `toml:"app"`
	Listen []struct {
		Name    tName    `toml:"name"`
		Address tAddress `toml:"address"`
		Rescue  tOptBool `toml:"rescue"`
		NoDelay tOptBool `toml:"nodelay"`
	} `toml:"listen"`
	Readiness struct {
		Mode      tEnum      `toml:"mode"`
		Timeout   tDuration  `toml:"timeout"`
		Quorum    tQuorum    `toml:"quorum"`
		Delay     tDuration  `toml:"delay"`
		Probation tDuration0 `toml:"probation"`
		// config_readiness.go
		HTTPPath    tHTTPPath `toml:"http_path"`
		HTTPHost    tHTTPHost `toml:"http_host"`
		HTTPStatus  tStatuses `toml:"http_status"`
		HTTPTimeout tDuration `toml:"http_timeout"`
	} `toml:"readiness"`
	Restart struct {
		BackoffMin tDuration `toml:"backoff_min"`
		BackoffMax tDuration `toml:"backoff_max"`
	} `toml:"restart"`
	Fetch struct {
		Allow           tSchemes  `toml:"allow"`
		AllowHosts      tHosts    `toml:"allow_hosts"`
		RequireChecksum tBool     `toml:"require_checksum"`
		MaxBytes        tSize     `toml:"max_bytes"`
		MaxFiles        tCount    `toml:"max_files"`
		Timeout         tDuration `toml:"timeout"`
	} `toml:"fetch"`
	Control struct {
		Socket    tString `toml:"socket"`
		AllowUIDs tIDs    `toml:"allow_uids"`
		AllowGIDs tIDs    `toml:"allow_gids"`
	} `toml:"control"`
	Hooks struct {
		Timeout           tDuration `toml:"timeout"`
		PreActivate       tCommands `toml:"pre-activate"`
		PostDeploy        tCommands `toml:"post-deploy"`
		PostRollback      tCommands `toml:"post-rollback"`
		OnFailure         tCommands `toml:"on-failure"`
		PostDeployFailure tEnum     `toml:"post_deploy_failure"`
	} `toml:"hooks"`
	Metrics struct {
		Address tOptAddress `toml:"address"`
	} `toml:"metrics"`
}

func defaultRaw() rawConfig {
	var r rawConfig
	r.KeepReleases = 5
	r.App.Workers = tCount(runtime.NumCPU())
	r.App.StopSignal = tSignal(syscall.SIGTERM)
	r.App.DrainTimeout = tDuration(30 * time.Second)
	r.App.RescueLinger = tDuration(cluster.DefaultRescueLinger)
	r.App.Adapter = tEnum{allowed: []string{adapterNone, adapterNode}, V: adapterNone}
	r.App.ListenCheck = tDuration0(cluster.DefaultListenCheck)
	r.Readiness.Mode = tEnum{allowed: []string{"listen", "notify", "delay"}, V: "listen"}
	r.Readiness.Timeout = tDuration(60 * time.Second)
	r.Readiness.Delay = tDuration(2 * time.Second)
	r.Restart.BackoffMin = tDuration(100 * time.Millisecond)
	r.Restart.BackoffMax = tDuration(30 * time.Second)
	r.Fetch.Allow = tSchemes{"https", "http", "file"}
	r.Fetch.MaxBytes = 2 << 30
	r.Fetch.MaxFiles = 200000
	r.Fetch.Timeout = tDuration(10 * time.Minute)
	r.Hooks.Timeout = tDuration(5 * time.Minute)
	r.Hooks.PostDeployFailure = tEnum{allowed: []string{"rollback", "warn"}, V: "rollback"}
	return r
}

func parseConfig(path, src string) (*Config, error) {
	cerr := &ConfigError{Path: path}
	// First pass: syntax, then every type and value problem and every
	// unknown key at once (the decoder stops at the first). A clean file
	// then decodes into the struct pre-filled with defaults.
	var doc map[string]any
	docMD, err := toml.Decode(src, &doc)
	if err == nil {
		// With only unknown keys, go on: the decode below reports them
		// (md.Undecoded) together with the checks across keys.
		if checkDocument(src, doc, docMD.Keys(), cerr) > 0 {
			sortProblems(cerr.Problems)
			return nil, cerr
		}
		cerr.Problems = nil
	}
	raw := defaultRaw()
	md, err := toml.Decode(src, &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			start := pe.Position.Start
			// Value positions point inside a string's quotes or past an
			// array's or table's opening bracket: point at the value itself.
			if start > 0 && start <= len(src) && strings.ContainsRune(`"'[{`, rune(src[start-1])) && pe.LastKey != "" {
				start--
			}
			p := posAt(src, start)
			if pe.Position.Start == 0 && pe.Position.Line > 1 {
				p = pos{Line: pe.Position.Line, Col: 1}
			}
			msg := pe.Message
			if pe.LastKey != "" && !strings.HasPrefix(pe.Message, "toml:") {
				msg = pe.LastKey + ": " + msg
			}
			cerr.Problems = append(cerr.Problems, Problem{p.Line, p.Col, msg})
		} else {
			// Type mismatches on tables and arrays of tables come without a
			// Position; report them at the start of their line.
			line := 1
			if m := regexp.MustCompile(`line (\d+)`).FindStringSubmatch(err.Error()); m != nil {
				line, _ = strconv.Atoi(m[1])
			}
			cerr.Problems = append(cerr.Problems, Problem{line, 1, strings.TrimPrefix(err.Error(), "toml: ")})
		}
		return nil, cerr
	}

	keys := md.Keys()
	kpos := keyPositions(src, keys)
	at := map[string][]pos{}
	for i, k := range keys {
		at[k.String()] = append(at[k.String()], kpos[i].Key)
	}
	where := func(key string, n int) pos {
		if ps := at[key]; n < len(ps) {
			return ps[n]
		}
		return pos{1, 1}
	}
	add := func(p pos, format string, args ...any) {
		cerr.Problems = append(cerr.Problems, Problem{p.Line, p.Col, fmt.Sprintf(format, args...)})
	}

	// Unknown keys: report the outermost one of each unknown subtree.
	var reported []string
	undecodedN := map[string]int{}
	for _, k := range md.Undecoded() {
		ks := k.String()
		n := undecodedN[ks]
		undecodedN[ks]++
		dup := false
		for _, r := range reported {
			if strings.HasPrefix(ks, r+".") {
				dup = true
			}
		}
		if dup {
			continue
		}
		reported = append(reported, ks)
		// The n-th undecoded occurrence is not always the n-th occurrence,
		// but unknown keys in arrays of tables are rare; take the n-th.
		add(where(ks, n), "unknown key %q", ks)
	}

	c := &Config{
		Path:         path,
		Root:         string(raw.Root),
		KeepReleases: int(raw.KeepReleases),
		Linked:       []string(raw.Linked),
		App: AppConfig{
			Command:      []string(raw.App.Command),
			Workers:      int(raw.App.Workers),
			Env:          map[string]string(raw.App.Env),
			StopSignal:   syscall.Signal(raw.App.StopSignal),
			DrainTimeout: time.Duration(raw.App.DrainTimeout),
			RescueLinger: time.Duration(raw.App.RescueLinger),
			Adapter:      raw.App.Adapter.V,
			ListenCheck:  time.Duration(raw.App.ListenCheck),
		},
		Readiness: ReadinessConfig{
			Mode:        raw.Readiness.Mode.V,
			Timeout:     time.Duration(raw.Readiness.Timeout),
			Quorum:      int(raw.Readiness.Quorum),
			Delay:       time.Duration(raw.Readiness.Delay),
			Probation:   time.Duration(raw.Readiness.Probation),
			HTTPPath:    string(raw.Readiness.HTTPPath),
			HTTPHost:    string(raw.Readiness.HTTPHost),
			HTTPStatus:  []cluster.StatusRange(raw.Readiness.HTTPStatus),
			HTTPTimeout: time.Duration(raw.Readiness.HTTPTimeout),
		},
		Restart: RestartConfig{
			BackoffMin: time.Duration(raw.Restart.BackoffMin),
			BackoffMax: time.Duration(raw.Restart.BackoffMax),
		},
		Fetch: FetchConfig{
			Allow:           []string(raw.Fetch.Allow),
			AllowHosts:      []string(raw.Fetch.AllowHosts),
			RequireChecksum: bool(raw.Fetch.RequireChecksum),
			MaxBytes:        int64(raw.Fetch.MaxBytes),
			MaxFiles:        int(raw.Fetch.MaxFiles),
			Timeout:         time.Duration(raw.Fetch.Timeout),
		},
		Control: ControlConfig{
			Socket:    string(raw.Control.Socket),
			AllowUIDs: []int(raw.Control.AllowUIDs),
			AllowGIDs: []int(raw.Control.AllowGIDs),
		},
		Hooks: HooksConfig{
			Timeout:           time.Duration(raw.Hooks.Timeout),
			PreActivate:       [][]string(raw.Hooks.PreActivate),
			PostDeploy:        [][]string(raw.Hooks.PostDeploy),
			PostRollback:      [][]string(raw.Hooks.PostRollback),
			OnFailure:         [][]string(raw.Hooks.OnFailure),
			PostDeployFailure: raw.Hooks.PostDeployFailure.V,
		},
	}
	base := filepath.Dir(path)
	if abs, err := filepath.Abs(base); err == nil {
		base = abs
	}

	if !md.IsDefined("root") {
		add(pos{1, 1}, `missing required key "root"`)
	} else if c.Root == "" {
		add(where("root", 0), "root: must not be empty")
	} else if !filepath.IsAbs(c.Root) {
		c.Root = filepath.Join(base, c.Root)
	}
	if c.Root != "" {
		c.Root = filepath.Clean(c.Root)
	}
	if !md.IsDefined("app", "command") {
		p := pos{1, 1}
		if md.IsDefined("app") {
			p = where("app", 0)
		}
		add(p, `missing required key "app.command"`)
	}
	seen := map[string]int{}
	addrN := 0
	for i, l := range raw.Listen {
		lp := where("listen", i)
		if l.Address != "" {
			lp = where("listen.address", addrN)
			addrN++
		}
		if l.Name == "" {
			add(where("listen", i), "listen: name is required in every [[listen]]")
			continue
		}
		if j, ok := seen[string(l.Name)]; ok {
			add(where("listen.name", i), "listen.name: duplicate name %q (first at line %d)", l.Name, where("listen.name", j).Line)
			continue
		}
		seen[string(l.Name)] = i
		c.Listen = append(c.Listen, ListenConfig{Name: string(l.Name), Address: string(l.Address),
			Rescue: l.Rescue.or(true), NoDelay: l.NoDelay.or(true), Pos: Problem{Line: lp.Line, Col: lp.Col}})
	}
	if a := string(raw.Metrics.Address); a != "" {
		mp := where("metrics.address", 0)
		c.Metrics = MetricsConfig{Address: a, Pos: Problem{Line: mp.Line, Col: mp.Col}}
		for _, l := range c.Listen {
			if l.Address == a && !strings.HasSuffix(a, ":0") {
				add(mp, "metrics.address: %q is the address of [[listen]] %q: the endpoint never shares the app's sockets", a, l.Name)
			}
		}
	}
	if c.Readiness.Quorum > c.App.Workers {
		add(where("readiness.quorum", 0), "readiness.quorum: %d is more than app.workers (%d)", c.Readiness.Quorum, c.App.Workers)
	}
	if c.Restart.BackoffMin > c.Restart.BackoffMax {
		p := where("restart.backoff_max", 0)
		if !md.IsDefined("restart", "backoff_max") {
			p = where("restart.backoff_min", 0)
		}
		add(p, "restart: backoff_min (%s) is more than backoff_max (%s)", c.Restart.BackoffMin, c.Restart.BackoffMax)
	}
	if c.Control.Socket == "" {
		if c.Root != "" {
			c.Control.Socket = filepath.Join(c.Root, ".agent", "agent.sock")
		}
	} else if !filepath.IsAbs(c.Control.Socket) {
		c.Control.Socket = filepath.Join(base, c.Control.Socket)
	}
	if p, ok := strings.CutPrefix(c.Metrics.Address, "unix:"); ok {
		if !filepath.IsAbs(p) {
			c.Metrics.Address = "unix:" + filepath.Join(base, p)
		}
		if c.Metrics.Address == "unix:"+c.Control.Socket {
			add(pos{c.Metrics.Pos.Line, c.Metrics.Pos.Col}, "metrics.address: %q is the control socket", c.Metrics.Address)
		}
	}
	if len(cerr.Problems) > 0 {
		sortProblems(cerr.Problems)
		return nil, cerr
	}
	return c, nil
}

func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		return a.Line < b.Line || a.Line == b.Line && a.Col < b.Col
	})
}

// checkDocument walks the parsed document against rawConfig: it runs each
// present leaf's UnmarshalTOML (on a copy of the defaults, so enums know
// their values) and reports, at the value's position, every wrong type or
// bad value; and, at the key's position, every key rawConfig does not have
// (the outermost one of an unknown table). It returns the number of type
// and value problems.
func checkDocument(src string, doc map[string]any, keys []toml.Key, cerr *ConfigError) (bad int) {
	locs := keyPositions(src, keys)
	at := map[string][]keyLoc{}
	for i, k := range keys {
		at[k.String()] = append(at[k.String()], locs[i])
	}
	seen := map[string]int{} // occurrences consumed per key, for arrays of tables
	loc := func(key toml.Key) keyLoc {
		ks := key.String()
		n := seen[ks]
		seen[ks]++
		if l := at[ks]; n < len(l) {
			return l[n]
		}
		return keyLoc{pos{1, 1}, pos{1, 1}}
	}
	add := func(p pos, format string, a ...any) {
		cerr.Problems = append(cerr.Problems, Problem{p.Line, p.Col, fmt.Sprintf(format, a...)})
	}
	defaults := defaultRaw()
	var walk func(prefix toml.Key, table map[string]any, rv reflect.Value)
	walk = func(prefix toml.Key, table map[string]any, rv reflect.Value) {
		names := make([]string, 0, len(table))
		for k := range table {
			names = append(names, k)
		}
		sort.Strings(names) // occurrences are per key, so any fixed order works
		for _, name := range names {
			val := table[name]
			key := append(append(toml.Key{}, prefix...), name)
			f, ok := fieldByTag(rv.Type(), name)
			if !ok {
				add(loc(key).Key, "unknown key %q", key.String())
				skipSubtree(key, val, seen)
				continue
			}
			fv := rv.FieldByIndex(f.Index)
			if u, ok := fv.Addr().Interface().(toml.Unmarshaler); ok {
				l := loc(key)
				if err := u.UnmarshalTOML(val); err != nil {
					add(l.Value, "%s: %v", key, err)
					bad++
				}
				skipSubtree(key, val, seen)
				continue
			}
			switch fv.Kind() {
			case reflect.Struct:
				l := loc(key)
				sub, ok := val.(map[string]any)
				if !ok {
					add(l.Value, "%s: %v", key, wantErr("a table", val))
					bad++
					continue
				}
				walk(key, sub, fv)
			case reflect.Slice:
				l := loc(key)
				elems, ok := val.([]map[string]any)
				if !ok {
					add(l.Value, "%s: %v", key, wantErr("an array of tables ([["+name+"]])", val))
					bad++
					continue
				}
				for i, e := range elems {
					if i > 0 {
						loc(key) // each [[name]] header is one occurrence
					}
					walk(key, e, reflect.New(fv.Type().Elem()).Elem())
				}
			}
		}
	}
	walk(nil, doc, reflect.ValueOf(&defaults).Elem())
	return bad
}

// skipSubtree consumes the occurrences of the keys under key (an inline or
// unknown table), so later occurrences of the same names stay aligned.
func skipSubtree(key toml.Key, val any, seen map[string]int) {
	switch v := val.(type) {
	case map[string]any:
		for k, sub := range v {
			sk := append(append(toml.Key{}, key...), k)
			seen[sk.String()]++
			skipSubtree(sk, sub, seen)
		}
	case []map[string]any:
		for i, e := range v {
			if i > 0 {
				seen[key.String()]++
			}
			skipSubtree(key, e, seen)
		}
	}
}

func fieldByTag(t reflect.Type, tag string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.Tag.Get("toml") == tag {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// The leaf types below implement toml.Unmarshaler: a returned error becomes a
// toml.ParseError positioned at the key's value.

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func wantErr(want string, got any) error {
	return fmt.Errorf("want %s, got %s", want, typeName(got))
}

type tString string

func (t *tString) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr("a string", v)
	}
	*t = tString(s)
	return nil
}

type tBool bool

func (t *tBool) UnmarshalTOML(v any) error {
	b, ok := v.(bool)
	if !ok {
		return wantErr("a boolean (true or false)", v)
	}
	*t = tBool(b)
	return nil
}

// tCount is a positive integer.
type tCount int

func (t *tCount) UnmarshalTOML(v any) error {
	n, ok := v.(int64)
	if !ok {
		return wantErr("a positive integer", v)
	}
	if n <= 0 || n > math.MaxInt32 {
		return fmt.Errorf("want a positive integer, got %d", n)
	}
	*t = tCount(n)
	return nil
}

func parseDuration(v any) (time.Duration, error) {
	s, ok := v.(string)
	if !ok {
		return 0, wantErr(`a duration string like "30s"`, v)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (want e.g. \"500ms\", \"30s\", \"5m\")", s)
	}
	return d, nil
}

// tDuration is a positive duration string.
type tDuration time.Duration

func (t *tDuration) UnmarshalTOML(v any) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("duration must be positive, got %q", v)
	}
	*t = tDuration(d)
	return nil
}

// tOptBool is a boolean whose absence is told apart, for a default that
// differs per table of an array ([[listen]]).
type tOptBool struct{ set, v bool }

func (t *tOptBool) UnmarshalTOML(v any) error {
	b, ok := v.(bool)
	if !ok {
		return wantErr("a boolean", v)
	}
	*t = tOptBool{set: true, v: b}
	return nil
}

// or returns the value, or def when the key is absent.
func (t tOptBool) or(def bool) bool {
	if t.set {
		return t.v
	}
	return def
}

// tDuration0 is a duration string that may be zero.
type tDuration0 time.Duration

func (t *tDuration0) UnmarshalTOML(v any) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("duration must not be negative, got %q", v)
	}
	*t = tDuration0(d)
	return nil
}

type tEnum struct {
	allowed []string
	V       string
}

func (t *tEnum) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr("one of "+quoteList(t.allowed), v)
	}
	for _, a := range t.allowed {
		if s == a {
			t.V = s
			return nil
		}
	}
	return fmt.Errorf("unknown value %q, want one of %s", s, quoteList(t.allowed))
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// tQuorum is "all" (0) or a positive count.
type tQuorum int

func (t *tQuorum) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		if x == "all" {
			*t = 0
			return nil
		}
		if n, err := strconv.Atoi(x); err == nil && n > 0 {
			*t = tQuorum(n)
			return nil
		}
		return fmt.Errorf(`invalid quorum %q, want "all" or a positive number`, x)
	case int64:
		if x <= 0 || x > math.MaxInt32 {
			return fmt.Errorf(`invalid quorum %d, want "all" or a positive number`, x)
		}
		*t = tQuorum(x)
		return nil
	}
	return wantErr(`"all" or a positive number`, v)
}

var signals = map[string]syscall.Signal{
	"SIGTERM": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGHUP": syscall.SIGHUP, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGKILL": syscall.SIGKILL, "SIGWINCH": syscall.SIGWINCH,
}

// tSignal is a signal name: "SIGTERM" or "TERM".
type tSignal syscall.Signal

func (t *tSignal) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr(`a signal name like "SIGTERM"`, v)
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	sig, ok := signals[name]
	if !ok {
		return fmt.Errorf("unknown signal %q, want one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGKILL", s)
	}
	*t = tSignal(sig)
	return nil
}

func stringList(v any, what string) ([]string, error) {
	a, ok := v.([]any)
	if !ok {
		return nil, wantErr("an array of "+what, v)
	}
	out := make([]string, 0, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("element %d: %w", i, wantErr(what, e))
		}
		out = append(out, s)
	}
	return out, nil
}

// tCommand is a non-empty argv.
type tCommand []string

func (t *tCommand) UnmarshalTOML(v any) error {
	l, err := stringList(v, "strings")
	if err != nil {
		return fmt.Errorf(`%w (e.g. ["node", "server.js"])`, err)
	}
	if len(l) == 0 || l[0] == "" {
		return errors.New(`command must not be empty (e.g. ["node", "server.js"])`)
	}
	*t = l
	return nil
}

// tCommands is a list of argvs.
type tCommands [][]string

func (t *tCommands) UnmarshalTOML(v any) error {
	a, ok := v.([]any)
	if !ok {
		return wantErr(`an array of commands like [["npm", "ci"]]`, v)
	}
	out := make([][]string, 0, len(a))
	for i, e := range a {
		l, err := stringList(e, "strings")
		if err != nil {
			return fmt.Errorf(`command %d: %w (want e.g. [["npm", "ci"]])`, i, err)
		}
		if len(l) == 0 || l[0] == "" {
			return fmt.Errorf("command %d is empty", i)
		}
		out = append(out, l)
	}
	*t = out
	return nil
}

// tRelPaths are relative paths that stay inside the release.
type tRelPaths []string

func (t *tRelPaths) UnmarshalTOML(v any) error {
	l, err := stringList(v, "strings")
	if err != nil {
		return err
	}
	for _, p := range l {
		c := filepath.Clean(p)
		if p == "" || filepath.IsAbs(p) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
			return fmt.Errorf("%q: want a relative path inside the release", p)
		}
	}
	*t = l
	return nil
}

var envKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

type tEnv map[string]string

func (t *tEnv) UnmarshalTOML(v any) error {
	m, ok := v.(map[string]any)
	if !ok {
		return wantErr(`a table like { NODE_ENV = "production" }`, v)
	}
	out := make(map[string]string, len(m))
	for k, e := range m {
		if !envKey.MatchString(k) {
			return fmt.Errorf("invalid variable name %q", k)
		}
		s, ok := e.(string)
		if !ok {
			return fmt.Errorf("%s: %w", k, wantErr("a string", e))
		}
		out[k] = s
	}
	*t = out
	return nil
}

var fdName = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,255}$`)

type tName string

func (t *tName) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr("a string", v)
	}
	if !fdName.MatchString(s) {
		return fmt.Errorf("invalid name %q, want letters, digits, '.', '_', '-', '@'", s)
	}
	*t = tName(s)
	return nil
}

type tAddress string

func (t *tAddress) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr(`a string like "127.0.0.1:8080" or "unix:/path"`, v)
	}
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		if p == "" {
			return fmt.Errorf("invalid address %q: empty unix socket path", s)
		}
	} else {
		_, port, err := net.SplitHostPort(s)
		if err != nil {
			return fmt.Errorf(`invalid address %q, want "host:port" or "unix:/path"`, s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("invalid address %q: bad port %q", s, port)
		}
	}
	*t = tAddress(s)
	return nil
}

// tOptAddress is a tAddress, or "" for none.
type tOptAddress string

func (t *tOptAddress) UnmarshalTOML(v any) error {
	if s, ok := v.(string); ok && s == "" {
		*t = ""
		return nil
	}
	var a tAddress
	if err := a.UnmarshalTOML(v); err != nil {
		return err
	}
	*t = tOptAddress(a)
	return nil
}

type tSchemes []string

func (t *tSchemes) UnmarshalTOML(v any) error {
	l, err := stringList(v, "strings")
	if err != nil {
		return err
	}
	for _, s := range l {
		switch s {
		case "https", "http", "file":
		default:
			return fmt.Errorf(`unsupported scheme %q, want any of "https", "http", "file"`, s)
		}
	}
	*t = l
	return nil
}

// tHosts lists host names or IPs, or "*.domain" for any name below domain.
type tHosts []string

var hostRe = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$`)

func (t *tHosts) UnmarshalTOML(v any) error {
	l, err := stringList(v, "strings")
	if err != nil {
		return err
	}
	for _, s := range l {
		if !hostRe.MatchString(s) || strings.Count(s, ":") == 1 { // one colon: a port, not IPv6
			return fmt.Errorf(`invalid host %q: want a host name or IP without scheme, port or path, or "*.example.com"`, s)
		}
	}
	*t = l
	return nil
}

// tSize is a byte count: an integer, or a string like "2GiB", "500MB", "1024".
type tSize int64

var sizeRe = regexp.MustCompile(`^\s*(\d+)\s*([KMGT]i?B|B)?\s*$`)

func (t *tSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x <= 0 {
			return fmt.Errorf("size must be positive, got %d", x)
		}
		*t = tSize(x)
		return nil
	case string:
		m := sizeRe.FindStringSubmatch(x)
		if m == nil {
			return fmt.Errorf(`invalid size %q, want e.g. "2GiB", "500MB" or a number of bytes`, x)
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return fmt.Errorf("invalid size %q: %v", x, err)
		}
		mult := map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
			"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[m[2]]
		if n <= 0 || n > math.MaxInt64/mult {
			return fmt.Errorf("size %q out of range", x)
		}
		*t = tSize(n * mult)
		return nil
	}
	return wantErr(`a size like "2GiB"`, v)
}

// tIDs are uids or gids.
type tIDs []int

func (t *tIDs) UnmarshalTOML(v any) error {
	a, ok := v.([]any)
	if !ok {
		return wantErr("an array of numeric ids", v)
	}
	out := make([]int, 0, len(a))
	for i, e := range a {
		n, ok := e.(int64)
		if !ok || n < 0 || n > math.MaxUint32-1 {
			return fmt.Errorf("element %d: want a non-negative numeric id, got %v", i, e)
		}
		out = append(out, int(n))
	}
	*t = out
	return nil
}
