package config

import (
	"reflect"
	"strings"
	"testing"
)

const compareBase = `root = "/srv/app"
[app]
command = ["./server"]
workers = 2
env = { GREETING = "hello", KEEP = "same", GONE = "x" }
[[listen]]
name = "http"
address = "127.0.0.1:8080"
`

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := parseConfig("deploy.toml", src)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(string) string
		keys    []string
		restart []string // substrings, one per Restart line
	}{
		{name: "unchanged", edit: func(s string) string { return s }},
		{name: "comment only", edit: func(s string) string { return "# edited\n" + s }},
		{name: "workers and env", edit: func(s string) string {
			s = strings.Replace(s, "workers = 2", "workers = 3", 1)
			return strings.Replace(s, `GREETING = "hello", KEEP = "same", GONE = "x"`, `GREETING = "bye", KEEP = "same", NEW = "y"`, 1)
		}, keys: []string{"app.env.GONE", "app.env.GREETING", "app.env.NEW", "app.workers"}},
		{name: "env file and hooks", edit: func(s string) string {
			s = strings.Replace(s, "workers = 2", "workers = 2\nenv_file = [\"shared/app.env\"]", 1)
			return s + "[hooks]\ntimeout = \"1m\"\n[fetch]\nallow = [\"file\"]\n[control]\nallow_uids = [1001]\n"
		}, keys: []string{"app.env_file", "control.allow_uids", "fetch.allow", "hooks.timeout"}},
		{name: "listen address", edit: func(s string) string {
			return strings.Replace(s, "127.0.0.1:8080", "127.0.0.1:8081", 1)
		}, keys: []string{"listen"}, restart: []string{`deploy.toml:8:1: listen.address: "http" changed (was 127.0.0.1:8080, now 127.0.0.1:8081): the agent must be restarted`}},
		{name: "listen added", edit: func(s string) string {
			return s + "[[listen]]\nname = \"admin\"\naddress = \"127.0.0.1:9000\"\n"
		}, keys: []string{"listen"}, restart: []string{`listen: "admin" added`}},
		{name: "root and socket", edit: func(s string) string {
			return strings.Replace(s, "/srv/app", "/srv/other", 1) + "[control]\nsocket = \"/srv/app/.agent/agent.sock\"\n"
		}, keys: []string{"root"}, restart: []string{`deploy.toml: root: changed (was /srv/app, now /srv/other)`}},
		{name: "listen check", edit: func(s string) string {
			return strings.Replace(s, "workers = 2", "workers = 2\nlisten_check = \"1s\"", 1)
		}, keys: []string{"app.listen_check"}, restart: []string{"app.listen_check: changed"}},
		{name: "metrics on", edit: func(s string) string {
			return s + "[metrics]\naddress = \"127.0.0.1:9100\"\n"
		}, keys: []string{"metrics.address"}, restart: []string{`deploy.toml: metrics.address: changed (was "", now 127.0.0.1:9100): the agent must be restarted`}},
		{name: "metrics off written out", edit: func(s string) string {
			return s + "[metrics]\naddress = \"\"\n"
		}},
	}
	old := mustParse(t, compareBase)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := Compare(old, mustParse(t, tt.edit(compareBase)))
			if !sameValue(ch.Keys, tt.keys) {
				t.Errorf("Keys %q, want %q", ch.Keys, tt.keys)
			}
			if len(ch.Restart) != len(tt.restart) {
				t.Fatalf("Restart %q, want %d lines", ch.Restart, len(tt.restart))
			}
			for i, want := range tt.restart {
				if !strings.Contains(ch.Restart[i], want) {
					t.Errorf("Restart[%d] = %q, want it to contain %q", i, ch.Restart[i], want)
				}
			}
			for _, k := range ch.Keys {
				if strings.Contains(k, "hello") || strings.Contains(k, "bye") {
					t.Errorf("a value in the keys: %q", k)
				}
			}
		})
	}
}

// TestCompare_everyField: a field added to Config must be added to Compare.
func TestCompare_everyField(t *testing.T) {
	// Pos fields say where a key is written, not what it holds.
	skip := map[string]bool{"Path": true, "Digest": true, "Env": true, "Listen": true, "Pos": true}
	var count func(reflect.Type) int
	count = func(t reflect.Type) int {
		n := 0
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			switch {
			case skip[f.Name]:
			case f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath():
				n += count(f.Type)
			default:
				n++
			}
		}
		return n
	}
	c := &Config{}
	if got, want := len(compared(c, c))-1, count(reflect.TypeOf(*c)); got != want { // -1: listen
		t.Errorf("Compare covers %d fields, Config has %d", got, want)
	}
}

func TestLoad_envFileAndDigest(t *testing.T) {
	c := mustParse(t, strings.Replace(compareBase, "workers = 2", `workers = 2
env_file = ["shared/app.env", "/etc/app/secrets.env"]`, 1))
	want := []string{"/srv/app/shared/app.env", "/etc/app/secrets.env"}
	if !reflect.DeepEqual(c.App.EnvFiles, want) {
		t.Errorf("EnvFiles %q, want %q", c.App.EnvFiles, want)
	}
	_, err := parseConfig("deploy.toml", strings.Replace(compareBase, "workers = 2", `workers = 2
env_file = "shared/app.env"`, 1))
	if err == nil || !strings.Contains(err.Error(), "deploy.toml:5:12: app.env_file:") {
		t.Errorf("env_file as a string: %v", err)
	}
}
