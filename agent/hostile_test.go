package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/proctest"
	"github.com/handoff/handoff/internal/releasetest"
)

// rawEntry is one tar entry written as is (hostile archives).
type rawEntry struct {
	hdr  tar.Header
	body []byte
}

func rawTarGz(t *testing.T, entries []rawEntry) []byte {
	t.Helper()
	re := make([]releasetest.Entry, len(entries))
	for i, e := range entries {
		re[i] = releasetest.Entry{Header: e.hdr, Body: e.body}
	}
	return releasetest.RawTarGz(t, re)
}

// hostileServer serves fixed blobs and a few misbehaving endpoints.
type hostileServer struct {
	srv   *releasetest.Server
	stall chan struct{}
}

func newHostileServer(t *testing.T) *hostileServer {
	h := &hostileServer{srv: releasetest.NewServer(t), stall: make(chan struct{})}
	h.srv.Handle("500.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	h.srv.Handle("redirect-file.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
	})
	h.srv.Handle("redirect-host.tar.gz", func(w http.ResponseWriter, r *http.Request) { // the same server under another name
		http.Redirect(w, r, "http://"+strings.Replace(r.Host, "127.0.0.1", "localhost", 1)+"/good.tar.gz", http.StatusFound)
	})
	h.srv.Handle("stall.tar.gz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.Write(bytes.Repeat([]byte{0x1f}, 1000))
		w.(http.Flusher).Flush()
		select {
		case <-h.stall:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(h.stall); h.srv.CloseClientConnections(); h.srv.Close() })
	return h
}

// add publishes b and returns its URL with a checksum.
func (h *hostileServer) add(name string, b []byte) string {
	return h.srv.Publish(name, b)
}

// TestHostile_deployInputs sends one hostile artifact or URL of each class
// through `agent deploy` to an agent serving v1 under load: each is refused
// with a one-line cause, nothing in the root changes, and no request fails.
// A URL with credentials deploys, and the secret appears nowhere.
func TestHostile_deployInputs(t *testing.T) {
	t.Parallel()
	s := newSetup(t, `
[fetch]
allow = ["http", "https"]
allow_hosts = ["127.0.0.1"]
require_checksum = true
max_bytes = "8MiB"
timeout = "3s"
`)
	hs := newHostileServer(t)
	app := func(extra ...rawEntry) []byte {
		return rawTarGz(t, append([]rawEntry{{hdr: tar.Header{Name: "server.js", Typeflag: tar.TypeReg}, body: []byte(nodeServer(t))}}, extra...))
	}
	v1 := hs.add("v1.tar.gz", app())
	good := app(rawEntry{hdr: tar.Header{Name: "VERSION", Typeflag: tar.TypeReg}, body: []byte("2")})
	goodURL := hs.add("good.tar.gz", good)
	good2URL := hs.add("good2.tar.gz", app(rawEntry{hdr: tar.Header{Name: "VERSION", Typeflag: tar.TypeReg}, body: []byte("3")}))
	sum := sha256.Sum256(good)
	cases := []struct {
		name string
		url  string
		want string // in the one-line cause
	}{
		{name: "path traversal", url: hs.add("traversal.tar.gz", app(rawEntry{hdr: tar.Header{Name: "../../evil", Typeflag: tar.TypeReg}, body: []byte("x")})), want: `entry "../../evil": path escapes the release`},
		{name: "absolute path", url: hs.add("absolute.tar.gz", app(rawEntry{hdr: tar.Header{Name: "/tmp/evil", Typeflag: tar.TypeReg}, body: []byte("x")})), want: `entry "/tmp/evil": absolute path`},
		{name: "symlink escape", url: hs.add("symlink.tar.gz", app(
			rawEntry{hdr: tar.Header{Name: "etc", Typeflag: tar.TypeSymlink, Linkname: "/etc"}},
			rawEntry{hdr: tar.Header{Name: "etc/evil", Typeflag: tar.TypeReg}, body: []byte("x")})), want: `entry "etc": symlink to absolute path "/etc"`},
		{name: "chained symlink escape", url: hs.add("chained.tar.gz", app(
			rawEntry{hdr: tar.Header{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "b/../.."}},
			rawEntry{hdr: tar.Header{Name: "b", Typeflag: tar.TypeSymlink, Linkname: "."}})), want: `entry "a": symlink to "b/../.." escapes the release`},
		{name: "hardlink escape", url: hs.add("hardlink.tar.gz", app(rawEntry{hdr: tar.Header{Name: "passwd", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"}})), want: `entry "passwd": hard link to "../../../../etc/passwd" escapes the release`},
		{name: "device node", url: hs.add("device.tar.gz", app(rawEntry{hdr: tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}})), want: `entry "null": device file`},
		{name: "gzip bomb", url: hs.add("bomb.tar.gz", app(rawEntry{hdr: tar.Header{Name: "zeros", Typeflag: tar.TypeReg}, body: make([]byte, 64<<20)})), want: `entry "zeros": release exceeds 8388608 bytes unpacked`},
		{name: "wrong checksum", url: hs.srv.URL + "/good.tar.gz?checksum=sha256:" + strings.Repeat("0", 64), want: "checksum mismatch"},
		{name: "missing checksum", url: hs.srv.URL + "/good.tar.gz", want: "checksum required"},
		{name: "404", url: hs.srv.URL + "/missing.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: "404"},
		{name: "500", url: hs.srv.URL + "/500.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: "500"},
		{name: "stall mid-body", url: hs.srv.URL + "/stall.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: "timed out after 3s"},
		{name: "redirect to file", url: hs.srv.URL + "/redirect-file.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: `redirect to file:///etc/passwd: scheme "file" is not allowed`},
		{name: "redirect to another host", url: hs.srv.URL + "/redirect-host.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: `host "localhost" is not allowed (allowed: 127.0.0.1)`},
		{name: "host not allowed", url: strings.Replace(hs.srv.URL, "127.0.0.1", "localhost", 1) + "/good.tar.gz?checksum=sha256:" + hex.EncodeToString(sum[:]), want: `host "localhost" is not allowed (allowed: 127.0.0.1)`},
		{name: "scheme not allowed", url: "file:///etc/passwd", want: `scheme "file" is not allowed (allowed: http, https)`},
	}

	p := s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	addr, load, snap := s.loadApp()
	before := rootSnapshot(t, s.root)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.do("deploy", "--id", "bad", c.url)
			if r.code != 1 && r.code != 2 {
				t.Errorf("want exit 1 or 2, got %v", r)
			}
			if !strings.Contains(r.stderr, c.want) {
				t.Errorf("stderr lacks %q: %v", c.want, r)
			}
			if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "deploy failed: ") ||
				!strings.Contains(lines[0], c.want) || lines[1] != "nothing changed: current is v1" {
				t.Errorf("want \"deploy failed: …%s\" and \"nothing changed: current is v1\", got %q", c.want, r.stderr)
			}
			if after := rootSnapshot(t, s.root); after != before {
				t.Errorf("the root changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	if got := proctest.Get(t, addr); got != "hello from v1" {
		t.Errorf("after the hostile deploys: %q", got)
	}
	h := s.status().LastDeploys
	for _, e := range h[1:] {
		if e.ID != "bad" || e.Result != "refused" && e.Result != "failed" {
			t.Errorf("history entry of a hostile deploy: %+v", e)
		}
	}

	// Credentials in the URL: they reach the server, and appear nowhere.
	const secret = "s3cr3t-pa55"
	u := strings.Replace(goodURL, "http://", "http://deployer:"+secret+"@", 1)
	r := s.mustDo("deploy", "--id", "v2", u)
	rj := s.mustDo("deploy", "--json", "--id", "v2b", strings.Replace(good2URL, "http://", "http://deployer:"+secret+"@", 1))
	rf := s.do("deploy", "--id", "v3", strings.Replace(u, "good.tar.gz", "missing.tar.gz", 1))
	if rf.code != 1 {
		t.Errorf("404 with credentials: %v", rf)
	}
	st := s.mustDo("status", "--json")
	hist := s.mustDo("history")
	state := mustRead(t, filepath.Join(s.root, ".agent", "state.json"))
	for what, text := range map[string]string{
		"deploy output": r.stdout + r.stderr, "deploy --json output": rj.stdout + rj.stderr, "failed deploy output": rf.stdout + rf.stderr,
		"status --json": st.stdout, "history": hist.stdout, "state.json": state, "agent log": p.log(),
	} {
		if strings.Contains(text, secret) {
			t.Errorf("%s shows the URL's password:\n%s", what, text)
		}
		if !strings.Contains(text, "deployer") && what != "deploy output" && what != "deploy --json output" {
			t.Errorf("%s does not name the (redacted) URL at all:\n%s", what, text)
		}
	}
	checkLoad(t, "hostile deploys", load, snap)
}

// TestHostile_configRefused starts a second `agent run` (and a client) on
// broken configs next to a running agent: each is refused with
// FILE:LINE:COL and exit 2, and the running agent serves on untouched.
func TestHostile_configRefused(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	v1 := s.art.app(t, "v1", nil)
	s.start(nil)
	s.mustDo("deploy", "--id", "v1", v1)
	addr, load, snap := s.loadApp()
	pid := s.status().PID
	before := rootSnapshot(t, s.root)

	head := fmt.Sprintf("root = %q\n", s.root)
	cases := []struct {
		name, text, want string
	}{
		{name: "unknown key", text: head + "[app]\ncommand = [\"node\"]\nworkerz = 2\n", want: `:4:1: unknown key "app.workerz"`},
		{name: "wrong type", text: head + "keep_releases = \"five\"\n[app]\ncommand = [\"node\"]\n", want: ":2:17: keep_releases:"},
		{name: "zero workers", text: head + "[app]\ncommand = [\"node\"]\nworkers = 0\n", want: ":4:11: app.workers:"},
		{name: "negative count", text: head + "keep_releases = -1\n[app]\ncommand = [\"node\"]\n", want: ":2:17: keep_releases:"},
		{name: "zero duration", text: head + "[app]\ncommand = [\"node\"]\ndrain_timeout = \"0s\"\n", want: ":4:17: app.drain_timeout:"},
		{name: "negative duration", text: head + "[app]\ncommand = [\"node\"]\n[hooks]\ntimeout = \"-1m\"\n", want: ":5:11: hooks.timeout:"},
		{name: "missing command", text: head + "[app]\nworkers = 2\n", want: `:2:2: missing required key "app.command"`},
		{name: "empty command", text: head + "[app]\ncommand = []\n", want: ":3:11: app.command:"},
		{name: "duplicate listen names", text: head + "[app]\ncommand = [\"node\"]\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n", want: `:8:1: listen.name: duplicate name "http" (first at line 5)`},
		{name: "address in use", text: head + "[app]\ncommand = [\"node\"]\n[control]\nsocket = \"" + filepath.Join(s.dir, "other.sock") + "\"\n[[listen]]\nname = \"http\"\naddress = \"" + addr + "\"\n", want: ":8:1: listen.address: open socket \"http\": listen tcp " + addr + ": bind: address already in use"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(s.dir, "deploy-"+strings.ReplaceAll(c.name, " ", "-")+".toml")
			if err := os.WriteFile(path, []byte(c.text), 0o644); err != nil {
				t.Fatal(err)
			}
			r := cli(t, nil, "run", "-c", path)
			if r.code != 2 || !strings.Contains(r.stderr, path+c.want) {
				t.Errorf("agent run: want exit 2 and %q, got %v", path+c.want, r)
			}
			if c.name != "address in use" {
				if r := cli(t, nil, "status", "-c", path); r.code != 2 || !strings.Contains(r.stderr, path+c.want) {
					t.Errorf("agent status: want exit 2 and %q, got %v", path+c.want, r)
				}
			}
		})
	}
	st := s.status()
	if st.PID != pid || st.Current != "v1" || len(st.Generations) != 1 {
		t.Errorf("the running agent changed: %+v", st)
	}
	if after := rootSnapshot(t, s.root); after != before {
		t.Errorf("the root changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	checkLoad(t, "refused configs", load, snap)
}

// TestHostile_controlSocket sends malformed and oversized requests and
// holds silent connections open: each gets a usage result (the silent ones
// after the request timeout), and the agent's fds and threads return to
// their baseline.
func TestHostile_controlSocket(t *testing.T) {
	t.Parallel()
	s := newSetup(t, "")
	p := s.start(nil)
	pid := p.cmd.Process.Pid
	s.status()
	base := readProc(t, pid)

	send := func(payload []byte) string {
		c, err := net.Dial("unix", s.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		go func() { c.Write(payload); c.(*net.UnixConn).CloseWrite() }()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for _, c := range []struct {
		name    string
		payload []byte
		want    string
	}{
		{name: "malformed", payload: []byte("{\"op\": deploy}\n"), want: `"code":"usage","error":"bad request: invalid character`},
		{name: "unknown field", payload: []byte(`{"op":"status","evil":1}`), want: `"code":"usage","error":"bad request: json: unknown field \"evil\""`},
		{name: "unknown op", payload: []byte(`{"op":"rm -rf"}`), want: `"code":"usage","error":"unknown op \"rm -rf\""`},
		{name: "oversized", payload: []byte(`{"op":"deploy","url":"` + strings.Repeat("a", 200<<10) + `"}`), want: `"code":"usage","error":"bad request: incomplete or larger than 65536 bytes"`},
		{name: "binary", payload: []byte{0, 1, 2, 0xff, 0xfe}, want: `"code":"usage"`},
	} {
		if got := send(c.payload); !strings.Contains(got, c.want) || strings.Count(got, "\n") != 1 {
			t.Errorf("%s: want one result line with %q, got %q", c.name, c.want, got)
		}
	}

	// Silent clients: each is answered once the request timeout passes.
	const silent = 20
	conns := make([]net.Conn, silent)
	for i := range conns {
		c, err := net.Dial("unix", s.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	proctest.WaitFor(t, 10*time.Second, "the silent connections to be accepted", func() bool { return readProc(t, pid).fds >= base.fds+silent })
	held := readProc(t, pid)
	// The agent serves others meanwhile.
	if st := s.status(); st.PID != pid {
		t.Errorf("status while silent clients wait: %+v", st)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(control.RequestTimeout + 20*time.Second))
		b, _ := io.ReadAll(c)
		if !strings.Contains(string(b), "bad request: no request within "+control.RequestTimeout.String()) {
			t.Errorf("silent client %d got %q", i, b)
		}
	}
	proctest.WaitFor(t, 10*time.Second, "the agent's fds to return to their baseline", func() bool { return readProc(t, pid).fds <= base.fds })
	after := readProc(t, pid)
	t.Logf("agent fds %d -> %d with %d silent clients -> %d; threads %d -> %d -> %d", base.fds, held.fds, silent, after.fds, base.threads, held.threads, after.threads)
	if after.threads > base.threads+4 {
		t.Errorf("threads grew from %d to %d", base.threads, after.threads)
	}
	if r := s.mustDo("status", "--json"); !strings.Contains(r.stdout, `"pid": `+strconv.Itoa(pid)) && !strings.Contains(r.stdout, `"pid":`+strconv.Itoa(pid)) {
		t.Errorf("status after the hostile clients: %s", r.stdout)
	}
}
