package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/handoff/handoff/cluster"
)

// designExample is the design's deploy.toml, verbatim: a file written for
// the first release must keep loading to the same values.
const designExample = `root = "/srv/myapp"                 # the release root (required)
keep_releases = 5
linked = ["storage", ".env"]        # shared/<path> linked into each release

[app]
command = ["node", "server.js"]     # run in the resolved release dir (required)
workers = 2                         # default: number of CPUs
env = { NODE_ENV = "production" }
stop_signal = "SIGTERM"
drain_timeout = "30s"

[[listen]]                          # one or more; or from systemd socket units, by name
name = "http"
address = "127.0.0.1:8080"          # tcp host:port, or unix:/path

[readiness]
mode = "listen"                     # listen | notify | delay
timeout = "60s"                     # no quorum by then: the deploy fails and rolls back
quorum = "all"                      # or a number
delay = "2s"                        # for mode = "delay"
probation = "0s"                    # old generation keeps serving beside the new one this long;
                                    # a new worker that dies in the window fails the deploy

[restart]
backoff_min = "100ms"
backoff_max = "30s"

[fetch]
allow = ["https", "http", "file"]     # "s3" where built in (see pitfalls)
require_checksum = false            # true: a remote URL without ?checksum= is refused
max_bytes = "2GiB"
max_files = 200000
timeout = "10m"

[control]
socket = "/srv/myapp/.agent/agent.sock"   # default: <root>/.agent/agent.sock
allow_uids = [1001]
allow_gids = [1001]

[hooks]
timeout = "5m"
pre-activate  = [["npm", "ci", "--omit=dev"]]
post-deploy   = [["./scripts/warm-cache.sh"]]
post-rollback = []
on-failure    = [["/usr/local/bin/notify-chat"]]
post_deploy_failure = "rollback"    # or "warn"
`

func TestParseConfig_designExample(t *testing.T) {
	c, err := parseConfig("deploy.toml", designExample)
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	want := &Config{
		Path:         "deploy.toml",
		Root:         "/srv/myapp",
		KeepReleases: 5,
		Linked:       []string{"storage", ".env"},
		App: AppConfig{Command: []string{"node", "server.js"}, Workers: 2, Env: map[string]string{"NODE_ENV": "production"},
			StopSignal: syscall.SIGTERM, DrainTimeout: 30 * time.Second, Adapter: "none",
			RescueLinger: cluster.DefaultRescueLinger, ListenCheck: cluster.DefaultListenCheck},
		Listen:    []ListenConfig{{Name: "http", Address: "127.0.0.1:8080", Rescue: true, NoDelay: true, Pos: Problem{Line: 14, Col: 1}}},
		Readiness: ReadinessConfig{Mode: "listen", Timeout: 60 * time.Second, Quorum: 0, Delay: 2 * time.Second},
		Restart:   RestartConfig{BackoffMin: 100 * time.Millisecond, BackoffMax: 30 * time.Second},
		Fetch:     FetchConfig{Allow: []string{"https", "http", "file"}, MaxBytes: 2 << 30, MaxFiles: 200000, Timeout: 10 * time.Minute},
		Control:   ControlConfig{Socket: "/srv/myapp/.agent/agent.sock", AllowUIDs: []int{1001}, AllowGIDs: []int{1001}},
		Hooks: HooksConfig{Timeout: 5 * time.Minute, PreActivate: [][]string{{"npm", "ci", "--omit=dev"}},
			PostDeploy: [][]string{{"./scripts/warm-cache.sh"}}, PostRollback: [][]string{}, OnFailure: [][]string{{"/usr/local/bin/notify-chat"}},
			PostDeployFailure: "rollback"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestParseConfig_defaults(t *testing.T) {
	c, err := parseConfig("/etc/agent/deploy.toml", "root = \"/srv/a\"\n[app]\ncommand = [\"./app\"]\n[readiness]\nquorum = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Control.Socket != "/srv/a/.agent/agent.sock" || c.KeepReleases != 5 || c.App.Workers < 1 ||
		c.Readiness.Mode != "listen" || c.Readiness.Quorum != 1 || c.Hooks.PostDeployFailure != "rollback" ||
		c.App.StopSignal != syscall.SIGTERM || c.Fetch.MaxBytes != 2<<30 || c.Hooks.Timeout != 5*time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	rel, err := parseConfig("/x/y/deploy.toml", "root = \"srv\"\n[app]\ncommand = [\"a\"]\nworkers = 3\n[control]\nsocket = \"run/a.sock\"\n[fetch]\nmax_bytes = 1048576\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Address != "" {
		t.Errorf("metrics on by default: %q", c.Metrics.Address)
	}
	m, err := parseConfig("/x/deploy.toml", "root = \"/a\"\n[app]\ncommand = [\"a\"]\n[metrics]\naddress = \"unix:run/m.sock\"\n")
	if err != nil || m.Metrics.Address != "unix:/x/run/m.sock" || m.Metrics.Pos.Line != 5 {
		t.Errorf("metrics: %+v, %v", m.Metrics, err)
	}
	if rel.Root != "/x/y/srv" || rel.Control.Socket != "/x/y/run/a.sock" || rel.Fetch.MaxBytes != 1<<20 {
		t.Errorf("relative paths resolve against the config's dir: root %q socket %q", rel.Root, rel.Control.Socket)
	}
}

func TestParseConfig_errors(t *testing.T) {
	const ok = "root = \"/srv/a\"\n[app]\ncommand = [\"node\", \"s.js\"]\nworkers = 2\n"
	tests := []struct {
		name string
		src  string
		want []string // every problem, in order, as printed
	}{
		{name: "unknown top-level key", src: "rot = \"/x\"\n" + ok, want: []string{`deploy.toml:1:1: unknown key "rot"`}},
		{name: "unknown key in table", src: ok + "comand = [\"x\"]\n", want: []string{`deploy.toml:5:1: unknown key "app.comand"`}},
		{name: "unknown table reported once", src: ok + "[extra]\na = 1\nb = 2\n", want: []string{`deploy.toml:5:2: unknown key "extra"`}},
		{name: "unknown hook stage", src: ok + "[hooks]\n  pre_activate = [[\"x\"]]\n", want: []string{`deploy.toml:6:3: unknown key "hooks.pre_activate"`}},
		{name: "two unknown keys", src: ok + "[readiness]\nmodee = \"x\"\n[fetch]\n\"max files\" = 3\n", want: []string{
			`deploy.toml:6:1: unknown key "readiness.modee"`, `deploy.toml:8:1: unknown key "fetch.\"max files\""`}},
		{name: "syntax", src: ok + "workers = \n", want: []string{"deploy.toml:5:11: app.workers: expected value but found '\\n' instead"}},
		{name: "wrong type int", src: "root = \"/a\"\n[app]\ncommand = [\"x\"]\nworkers = \"two\"\n", want: []string{`deploy.toml:4:11: app.workers: want a positive integer, got a string`}},
		{name: "wrong type root", src: "root = 3\n[app]\ncommand = [\"x\"]\n", want: []string{`deploy.toml:1:8: root: want a string, got an integer`}},
		{name: "zero workers", src: "root = \"/a\"\n[app]\ncommand = [\"x\"]\nworkers = 0\n", want: []string{`deploy.toml:4:11: app.workers: want a positive integer, got 0`}},
		{name: "negative keep", src: "root = \"/a\"\nkeep_releases = -1\n[app]\ncommand = [\"x\"]\n", want: []string{`deploy.toml:2:17: keep_releases: want a positive integer, got -1`}},
		{name: "bad duration", src: ok + "drain_timeout = \"30\"\n", want: []string{`deploy.toml:5:17: app.drain_timeout: invalid duration "30" (want e.g. "500ms", "30s", "5m")`}},
		{name: "unknown adapter", src: ok + "adapter = \"deno\"\n", want: []string{`deploy.toml:5:11: app.adapter: unknown value "deno", want one of "none", "node"`}},
		{name: "zero duration", src: ok + "[readiness]\ntimeout = \"0s\"\n", want: []string{`deploy.toml:6:11: readiness.timeout: duration must be positive, got "0s"`}},
		{name: "negative duration", src: ok + "[restart]\nbackoff_min = \"-1s\"\n", want: []string{`deploy.toml:6:15: restart.backoff_min: duration must be positive, got "-1s"`}},
		{name: "missing root", src: "[app]\ncommand = [\"x\"]\n", want: []string{`deploy.toml:1:1: missing required key "root"`}},
		{name: "missing command", src: "root = \"/a\"\n[app]\nworkers = 2\n", want: []string{`deploy.toml:2:2: missing required key "app.command"`}},
		{name: "empty command", src: "root = \"/a\"\n[app]\ncommand = []\n", want: []string{`deploy.toml:3:11: app.command: command must not be empty (e.g. ["node", "server.js"])`}},
		{name: "duplicate listen", src: ok + "[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:1\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:2\"\n",
			want: []string{`deploy.toml:9:1: listen.name: duplicate name "http" (first at line 6)`}},
		{name: "listen without name", src: ok + "[[listen]]\naddress = \"127.0.0.1:1\"\n", want: []string{`deploy.toml:5:3: listen: name is required in every [[listen]]`}},
		{name: "bad address", src: ok + "[[listen]]\nname = \"a\"\naddress = \"8080\"\n", want: []string{`deploy.toml:7:11: listen.address: invalid address "8080", want "host:port" or "unix:/path"`}},
		{name: "bad quorum", src: ok + "[readiness]\nquorum = \"most\"\n", want: []string{`deploy.toml:6:10: readiness.quorum: invalid quorum "most", want "all" or a positive number`}},
		{name: "zero quorum", src: ok + "[readiness]\nquorum = 0\n", want: []string{`deploy.toml:6:10: readiness.quorum: invalid quorum 0, want "all" or a positive number`}},
		{name: "quorum over workers", src: ok + "[readiness]\nquorum = 3\n", want: []string{`deploy.toml:6:1: readiness.quorum: 3 is more than app.workers (2)`}},
		{name: "unknown mode", src: ok + "[readiness]\nmode = \"tcp\"\n", want: []string{`deploy.toml:6:8: readiness.mode: unknown value "tcp", want one of "listen", "notify", "delay"`}},
		{name: "bad signal", src: ok + "stop_signal = \"SIGFOO\"\n", want: []string{`deploy.toml:5:15: app.stop_signal: unknown signal "SIGFOO", want one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, SIGKILL`}},
		{name: "bad post_deploy_failure", src: ok + "[hooks]\npost_deploy_failure = \"ignore\"\n", want: []string{`deploy.toml:6:23: hooks.post_deploy_failure: unknown value "ignore", want one of "rollback", "warn"`}},
		{name: "bad hook command", src: ok + "[hooks]\npost-deploy = [\"./x.sh\"]\n", want: []string{`deploy.toml:6:15: hooks.post-deploy: command 0: want an array of strings, got a string (want e.g. [["npm", "ci"]])`}},
		{name: "bad scheme", src: ok + "[fetch]\nallow = [\"ftp\"]\n", want: []string{`deploy.toml:6:9: fetch.allow: unsupported scheme "ftp", want any of "https", "http", "file"`}},
		{name: "host with a port", src: ok + "[fetch]\nallow_hosts = [\"ci.example.com:443\"]\n", want: []string{`deploy.toml:6:15: fetch.allow_hosts: invalid host "ci.example.com:443": want a host name or IP without scheme, port or path, or "*.example.com"`}},
		{name: "host with a scheme", src: ok + "[fetch]\nallow_hosts = [\"https://ci.example.com\"]\n", want: []string{`deploy.toml:6:15: fetch.allow_hosts: invalid host "https://ci.example.com": want a host name or IP without scheme, port or path, or "*.example.com"`}},
		{name: "bad size", src: ok + "[fetch]\nmax_bytes = \"lots\"\n", want: []string{`deploy.toml:6:13: fetch.max_bytes: invalid size "lots", want e.g. "2GiB", "500MB" or a number of bytes`}},
		{name: "bad uid", src: ok + "[control]\nallow_uids = [-1]\n", want: []string{`deploy.toml:6:14: control.allow_uids: element 0: want a non-negative numeric id, got -1`}},
		{name: "linked escapes", src: "root = \"/a\"\nlinked = [\"../etc\"]\n[app]\ncommand = [\"x\"]\n", want: []string{`deploy.toml:2:10: linked: "../etc": want a relative path inside the release`}},
		{name: "env value type", src: ok + "env = { PORT = 3 }\n", want: []string{`deploy.toml:5:7: app.env: PORT: want a string, got an integer`}},
		{name: "backoff order", src: ok + "[restart]\nbackoff_min = \"10s\"\nbackoff_max = \"1s\"\n", want: []string{`deploy.toml:7:1: restart: backoff_min (10s) is more than backoff_max (1s)`}},
		{name: "every bad value at once", src: "root = 1\nkeep_releases = 0\nbogus = 2\n[app]\ncommand = \"x\"\nworkers = -2\n[[listen]]\nname = \"a\"\naddress = \"x\"\n[[listen]]\nname = \"b\"\naddress = \"y\"\n[readiness]\nmode = \"z\"\n[extra]\nk = 1\n", want: []string{
			`deploy.toml:1:8: root: want a string, got an integer`,
			`deploy.toml:2:17: keep_releases: want a positive integer, got 0`,
			`deploy.toml:3:1: unknown key "bogus"`,
			`deploy.toml:5:11: app.command: want an array of strings, got a string (e.g. ["node", "server.js"])`,
			`deploy.toml:6:11: app.workers: want a positive integer, got -2`,
			`deploy.toml:9:11: listen.address: invalid address "x", want "host:port" or "unix:/path"`,
			`deploy.toml:12:11: listen.address: invalid address "y", want "host:port" or "unix:/path"`,
			`deploy.toml:14:8: readiness.mode: unknown value "z", want one of "listen", "notify", "delay"`,
			`deploy.toml:15:2: unknown key "extra"`}},
		{name: "bad metrics address", src: ok + "[metrics]\naddress = \"9100\"\n", want: []string{`deploy.toml:6:11: metrics.address: invalid address "9100", want "host:port" or "unix:/path"`}},
		{name: "metrics on the app's address", src: ok + "[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n[metrics]\naddress = \"127.0.0.1:8080\"\n",
			want: []string{`deploy.toml:9:1: metrics.address: "127.0.0.1:8080" is the address of [[listen]] "http": the endpoint never shares the app's sockets`}},
		{name: "metrics on the control socket", src: ok + "[metrics]\naddress = \"unix:/srv/a/.agent/agent.sock\"\n", want: []string{`deploy.toml:6:1: metrics.address: "unix:/srv/a/.agent/agent.sock" is the control socket`}},
		{name: "table expected", src: "root = \"/a\"\napp = 3\n", want: []string{`deploy.toml:2:7: app: want a table, got an integer`}},
		{name: "array of tables expected", src: "root = \"/a\"\nlisten = 3\n[app]\ncommand = [\"x\"]\n", want: []string{`deploy.toml:2:10: listen: want an array of tables ([[listen]]), got an integer`}},
		{name: "several problems", src: "[app]\nworkers = 2\nfoo = 1\n", want: []string{
			`deploy.toml:1:1: missing required key "root"`, `deploy.toml:1:2: missing required key "app.command"`, `deploy.toml:3:1: unknown key "app.foo"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig("deploy.toml", tt.src)
			if err == nil {
				t.Fatalf("accepted:\n%s", tt.src)
			}
			ce, ok := err.(*Error)
			if !ok {
				t.Fatalf("err %T %v, want *Error", err, err)
			}
			if got := strings.Split(ce.Error(), "\n"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestFindConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("AGENT_CONFIG", "")
	if _, err := Find(""); err == nil && !fileExists("/etc/agent/deploy.toml") {
		t.Fatal("Find found a config in an empty dir")
	}
	if err := os.WriteFile(filepath.Join(dir, "deploy.toml"), []byte(""), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := Find(""); err != nil || p != "./deploy.toml" {
		t.Errorf("Find = %q, %v; want ./deploy.toml", p, err)
	}
	t.Setenv("AGENT_CONFIG", "/from/env.toml")
	if p, _ := Find(""); p != "/from/env.toml" {
		t.Errorf("Find = %q, want $AGENT_CONFIG", p)
	}
	if p, _ := Find("/from/flag.toml"); p != "/from/flag.toml" {
		t.Errorf("Find = %q, want the flag", p)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestConfig_exampleDocumentsEveryKey parses ../deploy.toml.example and
// checks that it sets every key the loader knows.
func TestConfig_exampleDocumentsEveryKey(t *testing.T) {
	b, err := os.ReadFile("../deploy.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseConfig("deploy.toml.example", string(b)); err != nil {
		t.Fatalf("the example does not load:\n%v", err)
	}
	md, err := toml.Decode(string(b), new(map[string]any))
	if err != nil {
		t.Fatal(err)
	}
	var walk func(prefix []string, typ reflect.Type)
	walk = func(prefix []string, typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag := f.Tag.Get("toml")
			if tag == "" {
				continue
			}
			key := append(append([]string{}, prefix...), tag)
			if !md.IsDefined(key...) {
				t.Errorf("deploy.toml.example lacks %s", strings.Join(key, "."))
			}
			ft := f.Type
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && !strings.HasPrefix(ft.Name(), "t") {
				ft = ft.Elem()
				if l, ok := md.Keys(), true; ok && len(l) > 0 {
					// Array of tables: check the fields on the first element.
					for j := 0; j < ft.NumField(); j++ {
						if ft.Field(j).Tag.Get("toml") == "" {
							continue // a value type such as a status range, not a table
						}
						found := false
						for _, k := range l {
							if len(k) == 2 && k[0] == tag && k[1] == ft.Field(j).Tag.Get("toml") {
								found = true
							}
						}
						if !found {
							t.Errorf("deploy.toml.example lacks %s.%s", tag, ft.Field(j).Tag.Get("toml"))
						}
					}
				}
				continue
			}
			if ft.Kind() == reflect.Struct && !strings.HasPrefix(ft.Name(), "t") {
				walk(key, ft)
			}
		}
	}
	walk(nil, reflect.TypeOf(rawConfig{}))
}
