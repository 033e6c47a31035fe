package main

// Changing config and secrets without a restart: `agent reload` and SIGHUP
// re-read the config file the agent was started with (rereadConfig), and
// every generation reads its [app] env_file files when it starts
// (generationEnv).
//
// A re-read config is all or nothing: refused (a config error, or a change
// only a restart applies: config.RestartKeys) nothing changes; accepted, it
// is in force (cluster, fetch, hooks, control allow lists, the next deploy
// and rollback) once the new generation serves, and put back the way it was
// when that generation fails: the config in force is the one the serving
// generation started with.

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/handoff/handoff/cluster"
	"github.com/handoff/handoff/config"
	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/hooks"
	"github.com/handoff/handoff/release"
)

// clusterConfig is the cluster's view of cfg: [app] env, then the Node
// adapter's variables (its preload is written, once, at nodePreload).
func (d *daemon) clusterConfig(cfg *config.Config, prune bool) (cluster.Config, error) {
	env := cfg.App.EnvList()
	if cfg.App.Adapter == config.AdapterNode {
		path, extra, err := setupNodeAdapter(cfg.App, cfg.Root, d.socks.Names(), d.socks.Addrs(), d.socks.Inodes(), prune)
		if err != nil {
			return cluster.Config{}, err
		}
		env = append(env, extra...)
		d.nodePreload = path
	}
	r := cfg.Readiness
	return cluster.Config{
		Command: cfg.App.Command, Workers: cfg.App.Workers, Env: env, StopSignal: cfg.App.StopSignal,
		DrainTimeout: cfg.App.DrainTimeout, RescueLinger: cfg.App.RescueLinger,
		Readiness: cluster.Readiness{Mode: r.Mode, Timeout: r.Timeout, Quorum: r.Quorum, Delay: r.Delay, Probation: r.Probation,
			HTTP: cluster.HTTPCheck{Path: r.HTTPPath, Host: r.HTTPHost, Status: r.HTTPStatus, Timeout: r.HTTPTimeout}},
		BackoffMin: cfg.Restart.BackoffMin, BackoffMax: cfg.Restart.BackoffMax, Logger: d.log,
		ListenCheck: listenCheck(cfg.App.ListenCheck), OnSocketLost: d.socketLost,
	}, nil
}

func fetchOptions(f config.FetchConfig) release.Options {
	return release.Options{Allow: f.Allow, AllowHosts: f.AllowHosts, RequireChecksum: f.RequireChecksum,
		MaxBytes: f.MaxBytes, MaxFiles: f.MaxFiles, Timeout: f.Timeout}
}

// applyConfig puts cfg in force: the next generation's cluster config, the
// fetch options, the hook runner, the control socket's allow lists and
// group. Called by the running operation only. An error (the cluster or
// the store refusing its part) changes nothing.
func (d *daemon) applyConfig(cfg *config.Config) error {
	cc, err := d.clusterConfig(cfg, false)
	if err != nil {
		return err
	}
	old := d.cfg
	if err := d.store.SetOptions(fetchOptions(cfg.Fetch)); err != nil {
		return err
	}
	if err := d.master.SetConfig(cc); err != nil {
		d.store.SetOptions(fetchOptions(old.Fetch))
		return err
	}
	d.hooks = &hooks.Runner{Timeout: cfg.Hooks.Timeout, Logger: d.log}
	if d.srv != nil {
		d.srv.SetAllowed(cfg.Control.AllowUIDs, cfg.Control.AllowGIDs)
	}
	if gid := controlGID(cfg.Control); gid >= 0 && gid != controlGID(old.Control) {
		if err := os.Lchown(cfg.Control.Socket, -1, gid); err != nil {
			d.log.Warn("Cannot give the control socket to the allowed group", "path", cfg.Control.Socket, "gid", gid, "err", err)
		}
	}
	d.mu.Lock()
	d.cfg, d.cfgSince = cfg, time.Now()
	d.mu.Unlock()
	return nil
}

// rereadConfig re-reads the config file for reload o and, when it is
// accepted, puts it in force; restore puts the previous one back (a no-op
// when nothing was applied). refused is the result when the reload must
// stop here, with nothing changed.
func (d *daemon) rereadConfig(o *op) (ch *control.ConfigChange, restore func(), refused *control.Message) {
	old := d.cfg
	ch = &control.ConfigChange{Path: old.Path, Before: old.Digest, After: old.Digest}
	restore = func() {}
	cfg, err := config.Load(old.Path)
	if err != nil {
		d.log.Error("Config refused: the running config stays in force", "path", old.Path, "err", err)
		return ch, restore, &control.Message{Code: control.CodeConfig, Error: err.Error(), Config: ch}
	}
	ch.Read = cfg.Digest
	diff := config.Compare(old, cfg)
	ch.Changed = diff.Keys
	if len(diff.Restart) > 0 {
		msg := strings.Join(diff.Restart, "\n")
		d.log.Error("Config refused: a restart is needed; the running config stays in force", "path", old.Path, "err", msg)
		return ch, restore, &control.Message{Code: control.CodeRestartNeeded, Error: msg, Config: ch}
	}
	if cfg.Digest == old.Digest {
		d.emit(o, control.StageConfig, control.KindDone, "%s re-read: unchanged (%s)", old.Path, shortDigest(cfg.Digest))
		return ch, restore, nil
	}
	if err := d.applyConfig(cfg); err != nil {
		d.log.Error("Config refused: the running config stays in force", "path", old.Path, "err", err)
		return ch, restore, &control.Message{Code: control.CodeConfig, Error: fmt.Sprintf("%s: %v", old.Path, err), Config: ch}
	}
	ch.After, ch.Applied = cfg.Digest, true
	changed := "no key changed"
	if len(diff.Keys) > 0 {
		changed = "changed " + strings.Join(diff.Keys, ", ")
	}
	d.log.Info("Config re-read", "path", old.Path, "changed", diff.Keys, "before", old.Digest, "after", cfg.Digest)
	d.emit(o, control.StageConfig, control.KindDone, "%s re-read: %s (%s -> %s)", old.Path, changed, shortDigest(old.Digest), shortDigest(cfg.Digest))
	restore = func() {
		if err := d.applyConfig(old); err != nil {
			d.log.Error("Cannot put the previous config back", "err", err)
			return
		}
		ch.After, ch.Applied = old.Digest, false
		d.log.Warn("The new generation failed: the previous config is in force again", "digest", old.Digest)
		d.emit(o, control.StageConfig, control.KindWarn, "the new generation failed: the previous config (%s) is in force again", shortDigest(old.Digest))
	}
	return ch, restore, nil
}

// shortDigest is a digest for human lines: "sha256:" and 12 hex digits.
func shortDigest(s string) string {
	if len(s) > len("sha256:")+12 {
		return s[:len("sha256:")+12]
	}
	return s
}

// generationEnv reads cfg's env files for a generation about to start: the
// KEY=VALUE pairs its workers get after [app] env (a file wins over [app]
// env, a later file over an earlier one), and what status may show of them.
// A file readable by others than the agent's user is a warning, logged and
// in o's output. With the Node adapter, a NODE_OPTIONS from a file keeps
// the preload's --require.
func (d *daemon) generationEnv(o *op, cfg *config.Config) (env []string, docs []control.EnvFileDoc, err error) {
	idx := map[string]int{}
	for _, p := range cfg.App.EnvFiles {
		f, err := config.ReadEnvFile(p)
		if err != nil {
			return nil, nil, err
		}
		if f.Exposed != "" {
			d.log.Warn("Env file readable by others than the agent's user", "path", p, "readable_by", f.Exposed)
			d.emit(o, control.StageConfig, control.KindWarn, "env file %s is readable by %s: chmod 600 (or 640 with the agent's group)", p, f.Exposed)
		}
		for _, v := range f.Vars {
			kv := v.Key + "=" + v.Value
			if i, ok := idx[v.Key]; ok {
				env[i] = kv
				continue
			}
			idx[v.Key] = len(env)
			env = append(env, kv)
		}
		docs = append(docs, control.EnvFileDoc{Path: p, Digest: f.Digest, Keys: f.Keys()})
	}
	if i, ok := idx["NODE_OPTIONS"]; ok && cfg.App.Adapter == config.AdapterNode && d.nodePreload != "" {
		env[i] += " --require " + nodeOptionQuote(d.nodePreload)
	}
	return env, docs, nil
}

// envFileFailed says that a generation did not start because an env file
// was refused.
func envFileFailed(err error) bool { return errors.Is(err, config.ErrEnvFile) }

// configDoc is the config in force, for status; call with d.mu held.
func (d *daemon) configDocLocked() *control.ConfigDoc {
	return &control.ConfigDoc{Path: d.cfg.Path, Digest: d.cfg.Digest, Since: d.cfgSince, EnvFiles: slices.Clone(d.envFiles)}
}
