package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/hooks"
	"github.com/handoff/handoff/release"
)

// Adapters ([app] adapter).
const (
	AdapterNone = "none" // workers run as they are
	AdapterNode = "node" // every Node worker loads the agent's preload
)

// What a failed post-deploy hook does ([hooks] post_deploy_failure).
const (
	PostDeployRollback = "rollback" // back to the previous release through a reload
	PostDeployWarn     = "warn"     // keep the new release, warn
)

// Config is a validated deploy.toml.
type Config struct {
	Path         string // the file it was read from
	Digest       string // "sha256:" + hex of the file's bytes
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
	EnvFiles     []string // absolute; read when each generation starts (envfile.go)
	StopSignal   syscall.Signal
	DrainTimeout time.Duration
	RescueLinger time.Duration
	Adapter      string        // AdapterNone or AdapterNode
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

// Error lists every problem found in one config file, each as
// "FILE:LINE:COL: message".
type Error struct {
	Path     string
	Problems []Problem
}

// Problem is one refused key or value.
type Problem struct {
	Line, Col int
	Msg       string
}

func (e *Error) Error() string {
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

// Find returns the config path to use: flagPath, then $AGENT_CONFIG,
// then ./deploy.toml, then /etc/agent/deploy.toml. An explicitly named file
// (flag or environment) is returned even when missing, so that reading it
// reports the real error; otherwise ErrNoConfig names the places tried.
func Find(flagPath string) (string, error) {
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

// Load reads and validates the config file at path. Every syntax
// error, unknown key, wrong type or invalid value is a *Error.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := parseConfig(path, string(b))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	c.Digest = "sha256:" + hex.EncodeToString(sum[:])
	return c, nil
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
		EnvFile      tPaths     `toml:"env_file"`
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
		// readiness.go
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

// defaultRaw is every default of deploy.toml: those of the package that
// takes the value (cluster, release, hooks) where it has one.
func defaultRaw() rawConfig {
	var r rawConfig
	r.KeepReleases = 5
	r.App.Workers = tCount(cluster.DefaultWorkers())
	r.App.StopSignal = tSignal(cluster.DefaultStopSignal)
	r.App.DrainTimeout = tDuration(cluster.DefaultDrainTimeout)
	r.App.RescueLinger = tDuration(cluster.DefaultRescueLinger)
	r.App.Adapter = tEnum{allowed: []string{AdapterNone, AdapterNode}, V: AdapterNone}
	r.App.ListenCheck = tDuration0(cluster.DefaultListenCheck)
	r.Readiness.Mode = tEnum{allowed: []string{cluster.ModeListen, cluster.ModeNotify, cluster.ModeDelay}, V: cluster.ModeListen}
	r.Readiness.Timeout = tDuration(cluster.DefaultReadyTimeout)
	r.Readiness.Delay = tDuration(cluster.DefaultReadyDelay)
	r.Restart.BackoffMin = tDuration(cluster.DefaultBackoffMin)
	r.Restart.BackoffMax = tDuration(cluster.DefaultBackoffMax)
	r.Fetch.Allow = tSchemes{"https", "http", "file"}
	r.Fetch.MaxBytes = tSize(release.DefaultMaxBytes)
	r.Fetch.MaxFiles = release.DefaultMaxFiles
	r.Fetch.Timeout = tDuration(release.DefaultTimeout)
	r.Hooks.Timeout = tDuration(hooks.DefaultTimeout)
	r.Hooks.PostDeployFailure = tEnum{allowed: []string{PostDeployRollback, PostDeployWarn}, V: PostDeployRollback}
	return r
}

// parseConfig is Load on src: types and values first (every problem at
// once), then the decode into the defaults, then unknown keys and the checks
// across keys.
func parseConfig(path, src string) (*Config, error) {
	cerr := &Error{Path: path}
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
		cerr.Problems = append(cerr.Problems, decodeProblem(src, err))
		return nil, cerr
	}
	ck := newChecker(src, md, cerr)
	ck.unknownKeys()
	c := raw.config(path)
	ck.resolvePaths(c)
	ck.required()
	ck.listen(c, raw)
	ck.metrics(c, raw)
	ck.acrossKeys(c)
	if len(cerr.Problems) > 0 {
		sortProblems(cerr.Problems)
		return nil, cerr
	}
	return c, nil
}

// decodeProblem positions an error of the decoder.
func decodeProblem(src string, err error) Problem {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		// Type mismatches on tables and arrays of tables come without a
		// Position; report them at the start of their line.
		line := 1
		if m := regexp.MustCompile(`line (\d+)`).FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
		}
		return Problem{line, 1, strings.TrimPrefix(err.Error(), "toml: ")}
	}
	start := pe.Position.Start
	// Value positions point inside a string's quotes or past an array's or
	// table's opening bracket: point at the value itself.
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
	return Problem{p.Line, p.Col, msg}
}

// config converts the decoded file into a Config (paths not resolved yet).
func (raw *rawConfig) config(path string) *Config {
	return &Config{
		Path:         path,
		Root:         string(raw.Root),
		KeepReleases: int(raw.KeepReleases),
		Linked:       []string(raw.Linked),
		App: AppConfig{
			Command:      []string(raw.App.Command),
			Workers:      int(raw.App.Workers),
			Env:          map[string]string(raw.App.Env),
			EnvFiles:     []string(raw.App.EnvFile),
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
}

// checker reports the problems found after the decode, at the position of
// the key they concern.
type checker struct {
	md   toml.MetaData
	at   map[string][]pos // every occurrence of each key, in order
	cerr *Error
	base string // the config file's directory, absolute
}

func newChecker(src string, md toml.MetaData, cerr *Error) *checker {
	keys := md.Keys()
	kpos := keyPositions(src, keys)
	ck := &checker{md: md, at: map[string][]pos{}, cerr: cerr, base: filepath.Dir(cerr.Path)}
	for i, k := range keys {
		ck.at[k.String()] = append(ck.at[k.String()], kpos[i].Key)
	}
	if abs, err := filepath.Abs(ck.base); err == nil {
		ck.base = abs
	}
	return ck
}

// where is the n-th occurrence of key.
func (ck *checker) where(key string, n int) pos {
	if ps := ck.at[key]; n < len(ps) {
		return ps[n]
	}
	return pos{1, 1}
}

func (ck *checker) add(p pos, format string, args ...any) {
	ck.cerr.Problems = append(ck.cerr.Problems, Problem{p.Line, p.Col, fmt.Sprintf(format, args...)})
}

// unknownKeys reports the outermost key of each unknown subtree.
func (ck *checker) unknownKeys() {
	var reported []string
	undecodedN := map[string]int{}
	for _, k := range ck.md.Undecoded() {
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
		ck.add(ck.where(ks, n), "unknown key %q", ks)
	}
}

// resolvePaths makes root and control.socket absolute, against the config
// file's directory (app.env_file: against root); the socket defaults to
// <root>/.agent/agent.sock.
func (ck *checker) resolvePaths(c *Config) {
	if !ck.md.IsDefined("root") {
		ck.add(pos{1, 1}, `missing required key "root"`)
	} else if c.Root == "" {
		ck.add(ck.where("root", 0), "root: must not be empty")
	} else if !filepath.IsAbs(c.Root) {
		c.Root = filepath.Join(ck.base, c.Root)
	}
	if c.Root != "" {
		c.Root = filepath.Clean(c.Root)
		for i, p := range c.App.EnvFiles {
			if !filepath.IsAbs(p) {
				c.App.EnvFiles[i] = filepath.Join(c.Root, p)
			}
		}
	}
	if c.Control.Socket == "" {
		if c.Root != "" {
			c.Control.Socket = filepath.Join(c.Root, ".agent", "agent.sock")
		}
	} else if !filepath.IsAbs(c.Control.Socket) {
		c.Control.Socket = filepath.Join(ck.base, c.Control.Socket)
	}
}

// required reports a missing app.command (root: resolvePaths).
func (ck *checker) required() {
	if !ck.md.IsDefined("app", "command") {
		p := pos{1, 1}
		if ck.md.IsDefined("app") {
			p = ck.where("app", 0)
		}
		ck.add(p, `missing required key "app.command"`)
	}
}

// listen fills c.Listen from the [[listen]] tables: each needs a name, no
// name twice; each keeps where its address (or its table) is, for errors
// found at start.
func (ck *checker) listen(c *Config, raw rawConfig) {
	seen := map[string]int{}
	addrN := 0
	for i, l := range raw.Listen {
		lp := ck.where("listen", i)
		if l.Address != "" {
			lp = ck.where("listen.address", addrN)
			addrN++
		}
		if l.Name == "" {
			ck.add(ck.where("listen", i), "listen: name is required in every [[listen]]")
			continue
		}
		if j, ok := seen[string(l.Name)]; ok {
			ck.add(ck.where("listen.name", i), "listen.name: duplicate name %q (first at line %d)", l.Name, ck.where("listen.name", j).Line)
			continue
		}
		seen[string(l.Name)] = i
		c.Listen = append(c.Listen, ListenConfig{Name: string(l.Name), Address: string(l.Address),
			Rescue: l.Rescue.or(true), NoDelay: l.NoDelay.or(true), Pos: Problem{Line: lp.Line, Col: lp.Col}})
	}
}

// metrics fills c.Metrics: a unix path resolves against the config file's
// directory; the endpoint shares no [[listen]] address (port 0 aside) and
// is not the control socket.
func (ck *checker) metrics(c *Config, raw rawConfig) {
	written := string(raw.Metrics.Address)
	a := written
	if a == "" {
		return
	}
	mp := ck.where("metrics.address", 0)
	if p, ok := strings.CutPrefix(a, "unix:"); ok && !filepath.IsAbs(p) {
		a = "unix:" + filepath.Join(ck.base, p)
	}
	c.Metrics = MetricsConfig{Address: a, Pos: Problem{Line: mp.Line, Col: mp.Col}}
	for _, l := range c.Listen {
		if (l.Address == written || l.Address == a) && !strings.HasSuffix(a, ":0") {
			ck.add(mp, "metrics.address: %q is the address of [[listen]] %q: the endpoint never shares the app's sockets", a, l.Name)
		}
	}
	if c.Control.Socket != "" && a == "unix:"+c.Control.Socket {
		ck.add(mp, "metrics.address: %q is the control socket", a)
	}
}

// acrossKeys checks values against each other: quorum ≤ workers,
// backoff_min ≤ backoff_max.
func (ck *checker) acrossKeys(c *Config) {
	if c.Readiness.Quorum > c.App.Workers {
		ck.add(ck.where("readiness.quorum", 0), "readiness.quorum: %d is more than app.workers (%d)", c.Readiness.Quorum, c.App.Workers)
	}
	if c.Restart.BackoffMin > c.Restart.BackoffMax {
		p := ck.where("restart.backoff_max", 0)
		if !ck.md.IsDefined("restart", "backoff_max") {
			p = ck.where("restart.backoff_min", 0)
		}
		ck.add(p, "restart: backoff_min (%s) is more than backoff_max (%s)", c.Restart.BackoffMin, c.Restart.BackoffMax)
	}
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
func checkDocument(src string, doc map[string]any, keys []toml.Key, cerr *Error) (bad int) {
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
