package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// What re-reading the config file of a running agent may change: every key
// applies to the next generation and the next operation, except the few
// that shape what the agent opened at start (its listening sockets, its
// release root, its control socket, its listen watch, its metrics endpoint),
// which take a restart.

// Change is what a re-read config changes against the one in force.
type Change struct {
	// Keys names every changed key, sorted, as dotted TOML paths; [app]
	// env changes as app.env.NAME. Never a value.
	Keys []string
	// Restart lists, one line each, the changes that cannot apply to a
	// running agent: FILE[:LINE:COL]: key: what changed: a restart is
	// needed. A config with any is refused whole.
	Restart []string
}

// restartKeys are the keys whose change takes a restart of the agent.
var restartKeys = map[string]bool{"root": true, "listen": true, "control.socket": true, "app.listen_check": true, "metrics.address": true}

// RestartKeys returns the keys whose change takes a restart of the agent,
// sorted; every other key applies live.
func RestartKeys() []string {
	out := make([]string, 0, len(restartKeys))
	for k := range restartKeys {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Compare returns what cur (the re-read file) changes against old (the
// config in force).
func Compare(old, cur *Config) Change {
	var ch Change
	for _, f := range compared(old, cur) {
		if sameValue(f.a, f.b) {
			continue
		}
		ch.Keys = append(ch.Keys, f.key)
		if restartKeys[f.key] && f.key != "listen" { // compareListen says which
			ch.Restart = append(ch.Restart, fmt.Sprintf("%s: %s: changed (was %s, now %s): the agent must be restarted to apply it", cur.Path, f.key, show(f.a), show(f.b)))
		}
	}
	ch.Restart = append(ch.Restart, compareListen(old, cur)...)
	for k := range old.App.Env {
		if v, ok := cur.App.Env[k]; !ok || v != old.App.Env[k] {
			ch.Keys = append(ch.Keys, "app.env."+k)
		}
	}
	for k := range cur.App.Env {
		if _, ok := old.App.Env[k]; !ok {
			ch.Keys = append(ch.Keys, "app.env."+k)
		}
	}
	sort.Strings(ch.Keys)
	return ch
}

// compareListen says, at the new address's position, which [[listen]]
// entries changed.
func compareListen(old, cur *Config) []string {
	var out []string
	was := map[string]ListenConfig{}
	for _, l := range old.Listen {
		was[l.Name] = l
	}
	now := map[string]bool{}
	for _, l := range cur.Listen {
		now[l.Name] = true
		o, ok := was[l.Name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s:%d:%d: listen: %q added: the agent must be restarted to listen on it", cur.Path, l.Pos.Line, l.Pos.Col, l.Name))
		case o.Address != l.Address:
			out = append(out, fmt.Sprintf("%s:%d:%d: listen.address: %q changed (was %s, now %s): the agent must be restarted to apply it", cur.Path, l.Pos.Line, l.Pos.Col, l.Name, show(o.Address), show(l.Address)))
		case o.Rescue != l.Rescue || o.NoDelay != l.NoDelay:
			out = append(out, fmt.Sprintf("%s:%d:%d: listen: %q: rescue or nodelay changed: the agent must be restarted to apply it", cur.Path, l.Pos.Line, l.Pos.Col, l.Name))
		}
	}
	for _, l := range old.Listen {
		if !now[l.Name] {
			out = append(out, fmt.Sprintf("%s: listen: %q removed: the agent must be restarted to stop listening on it", cur.Path, l.Name))
		}
	}
	return out
}

func show(v any) string {
	if s, ok := v.(string); ok {
		if s == "" {
			return `""`
		}
		return s
	}
	return fmt.Sprint(v)
}

// sameValue is reflect.DeepEqual with empty and nil slices alike.
func sameValue(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() == reflect.Slice && vb.Kind() == reflect.Slice && va.Len() == 0 && vb.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

type comparedKey struct {
	key  string
	a, b any
}

// compared lists every key of Config but [app] env (compared by name) and
// [[listen]] (compareListen); TestCompare_everyField keeps it complete.
func compared(o, n *Config) []comparedKey {
	oa, na := o.App, n.App
	or, nr := o.Readiness, n.Readiness
	of, nf := o.Fetch, n.Fetch
	oh, nh := o.Hooks, n.Hooks
	listenKey := func(c *Config) string {
		var b strings.Builder
		for _, l := range c.Listen {
			fmt.Fprintf(&b, "%s=%s,%v,%v;", l.Name, l.Address, l.Rescue, l.NoDelay)
		}
		return b.String()
	}
	return []comparedKey{
		{"root", o.Root, n.Root},
		{"keep_releases", o.KeepReleases, n.KeepReleases},
		{"linked", o.Linked, n.Linked},
		{"app.command", oa.Command, na.Command},
		{"app.workers", oa.Workers, na.Workers},
		{"app.env_file", oa.EnvFiles, na.EnvFiles},
		{"app.stop_signal", oa.StopSignal, na.StopSignal},
		{"app.drain_timeout", oa.DrainTimeout, na.DrainTimeout},
		{"app.rescue_linger", oa.RescueLinger, na.RescueLinger},
		{"app.adapter", oa.Adapter, na.Adapter},
		{"app.listen_check", oa.ListenCheck, na.ListenCheck},
		{"listen", listenKey(o), listenKey(n)},
		{"readiness.mode", or.Mode, nr.Mode},
		{"readiness.timeout", or.Timeout, nr.Timeout},
		{"readiness.quorum", or.Quorum, nr.Quorum},
		{"readiness.delay", or.Delay, nr.Delay},
		{"readiness.probation", or.Probation, nr.Probation},
		{"readiness.http_path", or.HTTPPath, nr.HTTPPath},
		{"readiness.http_host", or.HTTPHost, nr.HTTPHost},
		{"readiness.http_status", or.HTTPStatus, nr.HTTPStatus},
		{"readiness.http_timeout", or.HTTPTimeout, nr.HTTPTimeout},
		{"restart.backoff_min", o.Restart.BackoffMin, n.Restart.BackoffMin},
		{"restart.backoff_max", o.Restart.BackoffMax, n.Restart.BackoffMax},
		{"fetch.allow", of.Allow, nf.Allow},
		{"fetch.allow_hosts", of.AllowHosts, nf.AllowHosts},
		{"fetch.require_checksum", of.RequireChecksum, nf.RequireChecksum},
		{"fetch.max_bytes", of.MaxBytes, nf.MaxBytes},
		{"fetch.max_files", of.MaxFiles, nf.MaxFiles},
		{"fetch.timeout", of.Timeout, nf.Timeout},
		{"control.socket", o.Control.Socket, n.Control.Socket},
		{"control.allow_uids", o.Control.AllowUIDs, n.Control.AllowUIDs},
		{"control.allow_gids", o.Control.AllowGIDs, n.Control.AllowGIDs},
		{"hooks.timeout", oh.Timeout, nh.Timeout},
		{"hooks.pre-activate", oh.PreActivate, nh.PreActivate},
		{"hooks.post-deploy", oh.PostDeploy, nh.PostDeploy},
		{"hooks.post-rollback", oh.PostRollback, nh.PostRollback},
		{"hooks.on-failure", oh.OnFailure, nh.OnFailure},
		{"hooks.post_deploy_failure", oh.PostDeployFailure, nh.PostDeployFailure},
		{"metrics.address", o.Metrics.Address, n.Metrics.Address},
	}
}
