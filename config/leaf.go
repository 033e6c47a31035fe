package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

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

// tPaths are non-empty paths, absolute or relative (resolved by the
// checker).
type tPaths []string

func (t *tPaths) UnmarshalTOML(v any) error {
	l, err := stringList(v, "strings")
	if err != nil {
		return err
	}
	for _, p := range l {
		if strings.TrimSpace(p) == "" {
			return fmt.Errorf("%q: want a path", p)
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

// SignalName is the name of a signal stop_signal accepts ("SIGTERM").
func SignalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return "SIGTERM"
}
