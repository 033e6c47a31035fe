package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzParseConfig feeds arbitrary text to the config loader. It must never
// panic; a refusal is a *Error whose every problem has a position
// inside the file and prints as "deploy.toml:LINE:COL: …"; an accepted
// config satisfies every invariant the daemon relies on.
// Seeds: testdata/fuzz/FuzzParseConfig (among them the agent end-to-end
// tests' config, and its template with root = %q unformatted) and the
// repository's deploy.toml.example.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("../deploy.toml.example"); err == nil {
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, src string) {
		const path = "deploy.toml"
		cfg, err := parseConfig(path, src)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("refusal is a %T, not a *Error: %v", err, err)
			}
			if len(ce.Problems) == 0 {
				t.Fatalf("Error with no problem")
			}
			lines := strings.Count(src, "\n") + 1
			for _, p := range ce.Problems {
				if p.Line < 1 || p.Line > lines || p.Col < 1 || p.Msg == "" {
					t.Fatalf("problem %+v outside the file (%d lines): %v", p, lines, err)
				}
			}
			for _, l := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(l, path+":") {
					t.Fatalf("error line %q does not start with %s:", l, path)
				}
			}
			return
		}
		if cfg.Path != path || !filepath.IsAbs(cfg.Root) || !filepath.IsAbs(cfg.Control.Socket) {
			t.Fatalf("paths: %q %q %q", cfg.Path, cfg.Root, cfg.Control.Socket)
		}
		if len(cfg.App.Command) == 0 || cfg.App.Command[0] == "" {
			t.Fatalf("accepted an empty command: %q", cfg.App.Command)
		}
		if cfg.App.Workers < 1 || cfg.KeepReleases < 1 || cfg.Fetch.MaxFiles < 1 || cfg.Fetch.MaxBytes < 1 {
			t.Fatalf("accepted a count below 1: workers %d keep %d max_files %d max_bytes %d", cfg.App.Workers, cfg.KeepReleases, cfg.Fetch.MaxFiles, cfg.Fetch.MaxBytes)
		}
		for name, d := range map[string]time.Duration{
			"drain_timeout": cfg.App.DrainTimeout, "readiness.timeout": cfg.Readiness.Timeout, "readiness.delay": cfg.Readiness.Delay,
			"backoff_min": cfg.Restart.BackoffMin, "backoff_max": cfg.Restart.BackoffMax, "fetch.timeout": cfg.Fetch.Timeout, "hooks.timeout": cfg.Hooks.Timeout,
		} {
			if d <= 0 {
				t.Fatalf("accepted %s = %s", name, d)
			}
		}
		if cfg.Readiness.Probation < 0 || cfg.Restart.BackoffMin > cfg.Restart.BackoffMax {
			t.Fatalf("accepted probation %s, backoff %s..%s", cfg.Readiness.Probation, cfg.Restart.BackoffMin, cfg.Restart.BackoffMax)
		}
		if cfg.Readiness.Quorum < 0 || cfg.Readiness.Quorum > cfg.App.Workers {
			t.Fatalf("accepted quorum %d with %d workers", cfg.Readiness.Quorum, cfg.App.Workers)
		}
		switch cfg.Readiness.Mode {
		case "listen", "notify", "delay":
		default:
			t.Fatalf("accepted readiness mode %q", cfg.Readiness.Mode)
		}
		switch cfg.Hooks.PostDeployFailure {
		case "rollback", "warn":
		default:
			t.Fatalf("accepted post_deploy_failure %q", cfg.Hooks.PostDeployFailure)
		}
		if cfg.App.StopSignal <= 0 {
			t.Fatalf("accepted stop signal %d", cfg.App.StopSignal)
		}
		seen := map[string]bool{}
		for _, l := range cfg.Listen {
			if l.Name == "" || seen[l.Name] {
				t.Fatalf("listen names %+v", cfg.Listen)
			}
			seen[l.Name] = true
		}
		for _, s := range cfg.Fetch.Allow {
			if s != "http" && s != "https" && s != "file" && s != "s3" {
				t.Fatalf("accepted scheme %q", s)
			}
		}
		for _, cmds := range [][][]string{cfg.Hooks.PreActivate, cfg.Hooks.PostDeploy, cfg.Hooks.PostRollback, cfg.Hooks.OnFailure} {
			for _, c := range cmds {
				if len(c) == 0 || c[0] == "" {
					t.Fatalf("accepted an empty hook command in %q", cmds)
				}
			}
		}
	})
}
