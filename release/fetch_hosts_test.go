package release

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// With AllowHosts set, the artifact, its checksum file and every redirect
// must come from a listed host; the two names of loopback stand for two hosts.
func TestStore_FetchAllowHosts(t *testing.T) {
	good := appTgz(t, "1")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-localhost.tgz":
			http.Redirect(w, r, strings.Replace("http://"+r.Host, "127.0.0.1", "localhost", 1)+"/app.tgz", http.StatusFound)
		case "/to-self.tgz":
			http.Redirect(w, r, "/app.tgz", http.StatusFound)
		case "/app.tgz":
			w.Write(good)
		}
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	tests := []struct {
		name     string
		url      string
		hosts    []string
		wantText string
	}{
		{name: "listed host", url: srv.URL + "/app.tgz", hosts: []string{"127.0.0.1"}},
		{name: "redirect within the host", url: srv.URL + "/to-self.tgz", hosts: []string{"127.0.0.1"}},
		{name: "no list: any host", url: srv.URL + "/to-localhost.tgz"},
		{name: "unlisted host", url: "http://localhost:" + port + "/app.tgz", hosts: []string{"127.0.0.1", "*.example.com"},
			wantText: `host "localhost" is not allowed (allowed: 127.0.0.1, *.example.com)`},
		{name: "redirect to an unlisted host", url: srv.URL + "/to-localhost.tgz", hosts: []string{"127.0.0.1"},
			wantText: `redirect to http://localhost:` + port + `/app.tgz: host "localhost" is not allowed (allowed: 127.0.0.1)`},
		{name: "checksum file from an unlisted host", url: srv.URL + "/app.tgz?checksum=file:http://localhost:" + port + "/SUMS", hosts: []string{"127.0.0.1"},
			wantText: `checksum file: host "localhost" is not allowed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{AllowHosts: tt.hosts})
			before := snapshot(t, sb.dir)
			_, err := s.Fetch(context.Background(), FetchRequest{URL: tt.url, ID: "r1"})
			if tt.wantText == "" {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrHostNotAllowed) || !strings.Contains(fmt.Sprint(err), tt.wantText) {
				t.Fatalf("Fetch error = %v\nwant ErrHostNotAllowed containing %q", err, tt.wantText)
			}
			assertUntouched(t, sb, before)
		})
	}
}

func TestStore_checkHostPatterns(t *testing.T) {
	s := &Store{opts: Options{AllowHosts: []string{"ci.example.com", "*.s3.example.net", "10.1.2.3"}}}
	tests := []struct {
		url string
		ok  bool
	}{
		{url: "https://ci.example.com/a.tgz", ok: true},
		{url: "https://CI.Example.com.:8443/a.tgz", ok: true},
		{url: "https://bucket.s3.example.net/a.tgz", ok: true},
		{url: "https://a.b.s3.example.net/a.tgz", ok: true},
		{url: "https://s3.example.net/a.tgz", ok: false}, // the wildcard covers names below it only
		{url: "https://evils3.example.net/a.tgz", ok: false},
		{url: "https://ci.example.com.evil.org/a.tgz", ok: false},
		{url: "http://10.1.2.3:9000/a.tgz", ok: true},
		{url: "http://10.1.2.4/a.tgz", ok: false},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.checkHost(u); (err == nil) != tt.ok {
			t.Errorf("checkHost(%s) = %v, want ok=%v", tt.url, err, tt.ok)
		}
	}
}
