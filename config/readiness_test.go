package config

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/cluster"
)

func TestParseConfig_readinessHTTP(t *testing.T) {
	const ok = "root = \"/srv/a\"\n[app]\ncommand = [\"a\"]\n[readiness]\n"
	c, err := parseConfig("deploy.toml", ok+"http_path = \"/up\"\nhttp_host = \"app.example\"\nhttp_status = [\"2xx\", 301, \"400-404\"]\nhttp_timeout = \"750ms\"\n")
	if err != nil {
		t.Fatal(err)
	}
	r := c.Readiness
	want := []cluster.StatusRange{{Min: 200, Max: 299}, {Min: 301, Max: 301}, {Min: 400, Max: 404}}
	if r.HTTPPath != "/up" || r.HTTPHost != "app.example" || !reflect.DeepEqual(r.HTTPStatus, want) || r.HTTPTimeout != 750*time.Millisecond {
		t.Errorf("parsed %+v", r)
	}
	if c, err := parseConfig("deploy.toml", ok); err != nil || c.Readiness.HTTPPath != "" {
		t.Errorf("default: %+v, %v", c, err)
	}

	for _, tt := range []struct{ name, src, want string }{
		{"path without slash", "http_path = \"up\"\n", `deploy.toml:5:13: readiness.http_path: invalid path "up", want "" (off) or a path like "/up"`},
		{"path not a string", "http_path = 1\n", `deploy.toml:5:13: readiness.http_path: want a path like "/up", got an integer`},
		{"empty host", "http_host = \"\"\n", `deploy.toml:5:13: readiness.http_host: invalid host "", want a host name like "localhost" or "example.com:8080"`},
		{"status out of range", "http_status = [200, 700]\n", `deploy.toml:5:15: readiness.http_status: invalid status 700, want status codes like ["2xx", 301, "400-404"] (100-599)`},
		{"status class", "http_status = [\"6xx\"]\n", `deploy.toml:5:15: readiness.http_status: invalid status 6xx, want status codes like ["2xx", 301, "400-404"] (100-599)`},
		{"status reversed range", "http_status = [\"299-200\"]\n", `deploy.toml:5:15: readiness.http_status: invalid status 299-200, want status codes like ["2xx", 301, "400-404"] (100-599)`},
		{"status empty", "http_status = []\n", `deploy.toml:5:15: readiness.http_status: want status codes like ["2xx", 301, "400-404"], got an empty array`},
		{"status not a list", "http_status = 200\n", `deploy.toml:5:15: readiness.http_status: want status codes like ["2xx", 301, "400-404"], got an integer`},
		{"zero timeout", "http_timeout = \"0s\"\n", `deploy.toml:5:16: readiness.http_timeout: duration must be positive, got "0s"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig("deploy.toml", ok+tt.src)
			if err == nil || strings.TrimSpace(err.Error()) != tt.want {
				t.Errorf("got  %v\nwant %s", err, tt.want)
			}
		})
	}
}
