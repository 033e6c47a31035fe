package config

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/handoff/handoff/cluster"
)

// The leaf types of [readiness] http_*.

// tHTTPPath is "" (the check is off) or a request path starting with "/".
type tHTTPPath string

func (t *tHTTPPath) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr(`a path like "/up"`, v)
	}
	if s != "" && (!strings.HasPrefix(s, "/") || strings.ContainsAny(s, " \t\r\n")) {
		return fmt.Errorf(`invalid path %q, want "" (off) or a path like "/up"`, s)
	}
	*t = tHTTPPath(s)
	return nil
}

// tHTTPHost is a Host header value.
type tHTTPHost string

func (t *tHTTPHost) UnmarshalTOML(v any) error {
	s, ok := v.(string)
	if !ok {
		return wantErr(`a host name like "localhost"`, v)
	}
	if s == "" || strings.ContainsAny(s, " \t\r\n/") {
		return fmt.Errorf(`invalid host %q, want a host name like "localhost" or "example.com:8080"`, s)
	}
	*t = tHTTPHost(s)
	return nil
}

// tStatuses is a list of accepted HTTP status codes: numbers (301), classes
// ("2xx") and ranges ("200-399").
type tStatuses []cluster.StatusRange

const statusesWant = `status codes like ["2xx", 301, "400-404"]`

func (t *tStatuses) UnmarshalTOML(v any) error {
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		if ok {
			return fmt.Errorf("want %s, got an empty array", statusesWant)
		}
		return wantErr(statusesWant, v)
	}
	var out tStatuses
	for _, e := range list {
		r, err := parseStatus(e)
		if err != nil {
			return err
		}
		out = append(out, r)
	}
	*t = out
	return nil
}

func parseStatus(e any) (cluster.StatusRange, error) {
	bad := func() (cluster.StatusRange, error) {
		return cluster.StatusRange{}, fmt.Errorf("invalid status %v, want %s (100-599)", e, statusesWant)
	}
	valid := func(r cluster.StatusRange) (cluster.StatusRange, error) {
		if r.Min < 100 || r.Max > 599 || r.Min > r.Max {
			return bad()
		}
		return r, nil
	}
	switch x := e.(type) {
	case int64:
		return valid(cluster.StatusRange{Min: int(x), Max: int(x)})
	case string:
		if len(x) == 3 && x[0] >= '1' && x[0] <= '5' && strings.EqualFold(x[1:], "xx") {
			base := int(x[0]-'0') * 100
			return cluster.StatusRange{Min: base, Max: base + 99}, nil
		}
		lo, hi, isRange := strings.Cut(x, "-")
		a, err1 := strconv.Atoi(strings.TrimSpace(lo))
		b, err2 := a, error(nil)
		if isRange {
			b, err2 = strconv.Atoi(strings.TrimSpace(hi))
		}
		if err1 != nil || err2 != nil {
			return bad()
		}
		return valid(cluster.StatusRange{Min: a, Max: b})
	}
	return bad()
}
