package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestE2E_usageAndVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{name: "no args", args: nil, code: 2, stderr: "usage: agent COMMAND"},
		{name: "help", args: []string{"help"}, code: 0, stdout: "deploy"},
		{name: "unknown command", args: []string{"deplo"}, code: 2, stderr: `unknown command "deplo"`},
		{name: "version", args: []string{"version"}, code: 0, stdout: "agent "},
		{name: "version with args", args: []string{"version", "x"}, code: 2, stderr: "no arguments"},
		{name: "deploy without URL", args: []string{"deploy", "--id", "42"}, code: 2, stderr: "exactly one URL"},
		{name: "deploy flag after URL", args: []string{"deploy", "http://x/a.tgz", "--id", "42"}, code: 2, stderr: "exactly one URL"},
		{name: "deploy bad id", args: []string{"deploy", "--id", "../x", "http://x/a.tgz"}, code: 2, stderr: `--id "../x"`},
		{name: "rollback bad target", args: []string{"rollback", "--to", "a b"}, code: 2, stderr: `--to "a b"`},
		{name: "unknown flag", args: []string{"status", "--jsn"}, code: 2, stderr: "flag provided but not defined: -jsn"},
		{name: "command help", args: []string{"deploy", "-h"}, code: 0, stderr: "usage: agent deploy [flags] URL"},
		{name: "run bad log level", args: []string{"run", "-log-level", "loud"}, code: 2, stderr: "-log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cli(t, nil, tt.args...)
			if r.code != tt.code || !strings.Contains(r.stdout, tt.stdout) || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("agent %v: want exit %d, stdout ~%q, stderr ~%q; got %v", tt.args, tt.code, tt.stdout, tt.stderr, r)
			}
		})
	}
}

func TestE2E_configErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name string
		text string
		want string
	}{
		{name: "unknown key", text: "root = \"/srv/a\"\n[app]\ncommand = [\"x\"]\nwrkers = 2\n", want: `:4:1: unknown key "app.wrkers"`},
		{name: "wrong type", text: "root = \"/srv/a\"\n[app]\ncommand = \"node server.js\"\n", want: `:3:11: app.command: want an array of strings, got a string`},
		{name: "bad duration", text: "root = \"/srv/a\"\n[app]\ncommand = [\"x\"]\n[readiness]\ntimeout = \"-5s\"\n", want: `:5:11: readiness.timeout: duration must be positive`},
		{name: "missing command", text: "root = \"/srv/a\"\n", want: `:1:1: missing required key "app.command"`},
		{name: "syntax", text: "root = \"/srv/a\n", want: `:1:15: root: strings cannot contain newlines`},
		{name: "bad hook key", text: "root = \"/srv/a\"\n[app]\ncommand = [\"x\"]\n[hooks]\npre_deploy = []\n", want: `:5:1: unknown key "hooks.pre_deploy"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".toml")
			os.WriteFile(path, []byte(tt.text), 0o644)
			for _, cmd := range []string{"run", "status", "deploy"} {
				args := []string{cmd, "-c", path}
				if cmd == "deploy" {
					args = append(args, "http://127.0.0.1:1/a.tgz")
				}
				r := cli(t, nil, args...)
				if r.code != 2 || !strings.Contains(r.stderr, path+tt.want) {
					t.Errorf("agent %s: want exit 2 and %q; got %v", cmd, path+tt.want, r)
				}
			}
		})
	}
	t.Run("nothing to listen on", func(t *testing.T) {
		path := filepath.Join(dir, "no-listen.toml")
		os.WriteFile(path, []byte("root = \"root\"\n[app]\ncommand = [\"x\"]\n"), 0o644)
		r := cli(t, nil, "run", "-c", path)
		if r.code != 2 || !strings.Contains(r.stderr, path+": open sockets: no sockets configured or inherited") {
			t.Errorf("agent run with no [[listen]] and no systemd socket: want exit 2 naming the file; got %v", r)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		r := cli(t, nil, "status", "-c", filepath.Join(dir, "nope.toml"))
		if r.code != 2 || !strings.Contains(r.stderr, "nope.toml: no such file") {
			t.Errorf("got %v", r)
		}
	})
}

func TestE2E_configSearchOrderAndUnreachable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := func(name, sock string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("root = \"/srv/a\"\n[app]\ncommand = [\"x\"]\n[control]\nsocket = \""+sock+"\"\n"), 0o644)
		return p
	}
	flagCfg := cfg("flag.toml", filepath.Join(dir, "from-flag.sock"))
	envCfg := cfg("env.toml", filepath.Join(dir, "from-env.sock"))
	cfg("deploy.toml", filepath.Join(dir, "from-cwd.sock"))

	run := func(env []string, args ...string) cliResult {
		t.Helper()
		cmd := append([]string{"status"}, args...)
		r := cliIn(t, dir, env, cmd...)
		if r.code != 3 {
			t.Fatalf("status with no agent: want exit 3, got %v", r)
		}
		return r
	}
	if r := run([]string{"AGENT_CONFIG="}); !strings.Contains(r.stderr, "from-cwd.sock") {
		t.Errorf("./deploy.toml not used: %v", r)
	}
	if r := run([]string{"AGENT_CONFIG=" + envCfg}); !strings.Contains(r.stderr, "from-env.sock") {
		t.Errorf("$AGENT_CONFIG not used: %v", r)
	}
	if r := run([]string{"AGENT_CONFIG=" + envCfg}, "-c", flagCfg); !strings.Contains(r.stderr, "from-flag.sock") {
		t.Errorf("-c not used: %v", r)
	}
	if r := run(nil, "--socket", filepath.Join(dir, "explicit.sock")); !strings.Contains(r.stderr, "explicit.sock") || !strings.Contains(r.stderr, "agent not reachable") {
		t.Errorf("--socket not used: %v", r)
	}
	empty := t.TempDir()
	if _, err := os.Stat("/etc/agent/deploy.toml"); err == nil {
		t.Log("/etc/agent/deploy.toml exists: skipping the no-config case")
		return
	}
	if r := cliIn(t, empty, []string{"AGENT_CONFIG="}, "status"); r.code != 2 || !strings.Contains(r.stderr, "no config file") {
		t.Errorf("no config anywhere: want exit 2, got %v", r)
	}
}
