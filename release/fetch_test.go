package release

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func appTgz(t testing.TB, version string) []byte {
	return gz(t, buildTar(t, []tarEntry{
		{Name: "app/", Type: tar.TypeDir},
		{Name: "app/VERSION", Body: version},
		{Name: "app/server.js", Body: "listen(3)"},
	}))
}

// files serves fixed bodies by path on 127.0.0.1.
func files(m map[string][]byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := m[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	})
}

func TestStore_FetchHTTP(t *testing.T) {
	good := appTgz(t, "1")
	sums := fmt.Sprintf("%s  app.tgz\n%s  other.tgz\n", sha(good), strings.Repeat("0", 64))
	srv := httptest.NewServer(files(map[string][]byte{"/app.tgz": good, "/SHA256SUMS": []byte(sums)}))
	defer srv.Close()
	tls := httptest.NewUnstartedServer(files(map[string][]byte{"/app.tgz": good}))
	tls.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted case fails the handshake on purpose
	tls.StartTLS()
	defer tls.Close()
	wrong := strings.Repeat("ab", 32)

	tests := []struct {
		name     string
		url      string
		opts     Options
		want     error  // nil: success
		wantText string // in the error
	}{
		{name: "right checksum", url: srv.URL + "/app.tgz?checksum=sha256:" + sha(good)},
		{name: "no checksum", url: srv.URL + "/app.tgz"},
		{name: "checksum file", url: srv.URL + "/app.tgz?checksum=file:" + srv.URL + "/SHA256SUMS"},
		{name: "tls", url: tls.URL + "/app.tgz?checksum=sha256:" + sha(good), opts: Options{HTTPClient: tls.Client()}},
		{name: "wrong checksum", url: srv.URL + "/app.tgz?checksum=sha256:" + wrong,
			want:     ErrChecksumMismatch,
			wantText: "fetch " + srv.URL + "/app.tgz?checksum=sha256:" + wrong + ": checksum mismatch: want sha256:" + wrong + ", got sha256:" + sha(good)},
		{name: "404", url: srv.URL + "/missing.tgz",
			wantText: "fetch " + srv.URL + "/missing.tgz: server answered HTTP 404"},
		{name: "tls untrusted", url: tls.URL + "/app.tgz",
			wantText: "certificate"},
		{name: "checksum required", url: srv.URL + "/app.tgz", opts: Options{RequireChecksum: true},
			want:     ErrChecksumRequired,
			wantText: "checksum required: add ?checksum=sha256:<hex> to the URL"},
		{name: "scheme not allowed", url: srv.URL + "/app.tgz", opts: Options{Allow: []string{"https"}},
			want:     ErrSchemeNotAllowed,
			wantText: `scheme "http" is not allowed (allowed: https)`},
		{name: "unknown scheme", url: "ftp://127.0.0.1/app.tgz",
			want:     ErrSchemeNotAllowed,
			wantText: `fetch ftp://127.0.0.1/app.tgz: scheme "ftp" is not allowed (allowed: file, http, https)`},
		{name: "forced getter", url: "git::https://127.0.0.1/app.git",
			want:     ErrSchemeNotAllowed,
			wantText: `forced getter "git" is not allowed`},
		{name: "checksum file scheme", url: srv.URL + "/app.tgz?checksum=file:ftp://127.0.0.1/SUMS",
			want:     ErrSchemeNotAllowed,
			wantText: `checksum file: scheme "ftp" is not allowed`},
		{name: "unsupported type", url: srv.URL + "/app.tar.xz",
			want:     ErrUnsupportedArchive,
			wantText: `unsupported archive type "tar.xz"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, tt.opts)
			before := snapshot(t, sb.dir)
			var mu sync.Mutex
			var last [2]int64
			id, err := s.Fetch(context.Background(), FetchRequest{URL: tt.url, ID: "r1", Progress: func(done, total int64) {
				mu.Lock()
				last = [2]int64{done, total}
				mu.Unlock()
			}})
			if tt.want == nil && tt.wantText == "" {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				if got := readFile(t, filepath.Join(s.Dir(id), "app/VERSION")); got != "1" {
					t.Errorf("VERSION = %q", got)
				}
				if last != [2]int64{int64(len(good)), int64(len(good))} {
					t.Errorf("last progress = %v, want done = total = %d", last, len(good))
				}
				return
			}
			if err == nil {
				t.Fatalf("Fetch succeeded, want error %q", tt.wantText)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %q does not wrap %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q\n does not contain %q", err, tt.wantText)
			}
			assertUntouched(t, sb, before)
		})
	}
}

func TestStore_FetchRedirect(t *testing.T) {
	good := appTgz(t, "1")
	tls := httptest.NewTLSServer(files(map[string][]byte{"/app.tgz": good}))
	defer tls.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/to-https.tgz":
			http.Redirect(w, r, tls.URL+"/app.tgz", http.StatusFound)
		case "/to-file.tgz":
			http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
		case "/to-self.tgz":
			http.Redirect(w, r, "/app.tgz", http.StatusFound)
		case "/app.tgz":
			w.Write(good)
		}
	}))
	defer srv.Close()
	tests := []struct {
		name     string
		path     string
		allow    []string
		wantText string
	}{
		{name: "https not allowed", path: "/to-https.tgz", allow: []string{"http"},
			wantText: `redirect to ` + tls.URL + `/app.tgz: scheme "https" is not allowed (allowed: http)`},
		{name: "file never", path: "/to-file.tgz",
			wantText: `redirect to file:///etc/passwd: scheme "file" is not allowed`},
		{name: "same scheme ok", path: "/to-self.tgz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{Allow: tt.allow, HTTPClient: tls.Client()})
			before := snapshot(t, sb.dir)
			_, err := s.Fetch(context.Background(), FetchRequest{URL: srv.URL + tt.path, ID: "r1"})
			if tt.wantText == "" {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrSchemeNotAllowed) || !strings.Contains(fmt.Sprint(err), tt.wantText) {
				t.Fatalf("Fetch error = %v\nwant ErrSchemeNotAllowed containing %q", err, tt.wantText)
			}
			assertUntouched(t, sb, before)
		})
	}
}

func TestStore_FetchStalledServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // stall until the client gives up
	}))
	defer srv.Close()
	sb := newSandbox(t)
	s := sb.open(t, Options{Timeout: 300 * time.Millisecond})
	before := snapshot(t, sb.dir)
	start := time.Now()
	_, err := s.Fetch(context.Background(), FetchRequest{URL: srv.URL + "/app.tgz", ID: "r1"})
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "fetch "+srv.URL+"/app.tgz: timed out after 300ms") {
		t.Fatalf("Fetch error = %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
	assertUntouched(t, sb, before)
}

func TestStore_FetchDownloadTooLarge(t *testing.T) {
	big := make([]byte, 3<<20)
	rand.Read(big)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big.tgz" {
			w.Header().Set("Content-Length", fmt.Sprint(len(big))) // refused before reading
		}
		w.Write(big)
	}))
	defer srv.Close()
	tests := []struct{ name, path, wantText string }{
		{name: "content-length", path: "/big.tgz", wantText: "download is 3145728 bytes, more than the 1051648 allowed"},
		{name: "chunked", path: "/chunked.tgz", wantText: "download exceeds 1051648 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{MaxBytes: 1 << 10, MaxFiles: 1})
			before := snapshot(t, sb.dir)
			_, err := s.Fetch(context.Background(), FetchRequest{URL: srv.URL + tt.path, ID: "r1"})
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("Fetch error = %v, want ErrTooLarge %q", err, tt.wantText)
			}
			assertUntouched(t, sb, before)
		})
	}
}

func TestStore_FetchRelativePath(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	_, err := s.Fetch(context.Background(), FetchRequest{URL: "build/app.tgz", ID: "r1"})
	if err == nil || err.Error() != `fetch build/app.tgz: local path "build/app.tgz" is not absolute` {
		t.Fatalf("Fetch relative path = %v", err)
	}
}

func TestStore_FetchRedactsCredentials(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	u := strings.Replace(srv.URL, "http://", "http://deployer:hunter22@", 1) + "/app.tgz?token=tok-s3cr3t&x=1"
	_, err := s.Fetch(context.Background(), FetchRequest{URL: u, ID: "r1"})
	if err == nil {
		t.Fatal("Fetch succeeded against a 404")
	}
	msg := err.Error()
	if strings.Contains(msg, "hunter22") || strings.Contains(msg, "tok-s3cr3t") {
		t.Fatalf("error leaks credentials: %s", msg)
	}
	if !strings.Contains(msg, "deployer:xxxxx@") || !strings.Contains(msg, "token=xxxxx") {
		t.Errorf("error does not show the redacted URL: %s", msg)
	}
}

func TestStore_FetchLocal(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	tgz := sb.write(t, "app.tgz", appTgz(t, "7"))
	sb.write(t, "dir/app/VERSION", []byte("8"))
	sb.write(t, "dir/app/server.js", []byte("x"))
	if err := os.Symlink("VERSION", filepath.Join(sb.src, "dir/app/V")); err != nil {
		t.Fatal(err)
	}
	plain := sb.write(t, "server-binary", []byte("ELF"))

	tests := []struct {
		name, url, id, file, want string
	}{
		{name: "path to archive", url: tgz, id: "a", file: "app/VERSION", want: "7"},
		{name: "file URL to archive", url: "file://" + tgz, id: "b", file: "app/VERSION", want: "7"},
		{name: "directory", url: filepath.Join(sb.src, "dir"), id: "c", file: "app/V", want: "8"},
		{name: "file URL to directory", url: "file://" + filepath.Join(sb.src, "dir"), id: "d", file: "app/VERSION", want: "8"},
		{name: "plain file", url: plain, id: "e", file: "server-binary", want: "ELF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := s.Fetch(context.Background(), FetchRequest{URL: tt.url, ID: tt.id})
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			p := filepath.Join(s.Dir(id), tt.file)
			if got := readFile(t, p); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.file, got, tt.want)
			}
			// Copied, never linked: the release holds its own inode.
			src, _ := os.Stat(filepath.Join(sb.src, "dir/app/VERSION"))
			dst, _ := os.Stat(p)
			if os.SameFile(src, dst) {
				t.Errorf("%s shares its inode with the source", tt.file)
			}
			if fi, _ := os.Lstat(s.Dir(id)); fi.Mode()&os.ModeSymlink != 0 {
				t.Errorf("release dir is a symlink")
			}
		})
	}
}

func TestStore_FetchLocalDirRefusals(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T, dir string)
		want     error
		wantText string
	}{
		{name: "symlink escape", want: ErrUnsafeArchive, wantText: `entry "l": symlink to "../../victim" escapes the release`,
			setup: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644)
				if err := os.Symlink("../../victim", filepath.Join(dir, "l")); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "symlink absolute", want: ErrUnsafeArchive, wantText: `symlink to absolute path "/etc/passwd"`,
			setup: func(t *testing.T, dir string) {
				if err := os.Symlink("/etc/passwd", filepath.Join(dir, "p")); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "fifo", want: ErrUnsafeArchive, wantText: `entry "sub/fifo": FIFO`,
			setup: func(t *testing.T, dir string) {
				os.Mkdir(filepath.Join(dir, "sub"), 0o755)
				if err := syscall.Mkfifo(filepath.Join(dir, "sub/fifo"), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "empty", want: ErrBadArchive, wantText: `directory is empty`,
			setup: func(t *testing.T, dir string) {}},
		{name: "too many files", want: ErrTooLarge, wantText: `more than 10 entries`,
			setup: func(t *testing.T, dir string) {
				for i := 0; i < 20; i++ {
					os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{MaxFiles: 10})
			dir := filepath.Join(sb.src, "dir")
			os.Mkdir(dir, 0o755)
			tt.setup(t, dir)
			before := snapshot(t, sb.dir)
			_, err := s.Fetch(context.Background(), FetchRequest{URL: dir, ID: "r1"})
			if !errors.Is(err, tt.want) || !strings.Contains(fmt.Sprint(err), tt.wantText) {
				t.Fatalf("Fetch error = %v\nwant %v containing %q", err, tt.want, tt.wantText)
			}
			if !strings.HasPrefix(err.Error(), "copy "+dir+": ") {
				t.Errorf("error %q does not name the directory", err)
			}
			assertUntouched(t, sb, before)
		})
	}
}

func TestStore_FetchExistingID(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	v1 := sb.write(t, "v1.tgz", appTgz(t, "1"))
	v1again := sb.write(t, "again/v1.tgz", appTgz(t, "1"))
	v2 := sb.write(t, "v2.tgz", appTgz(t, "2"))
	if _, err := s.Fetch(context.Background(), FetchRequest{URL: v1, ID: "42"}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, sb.dir)
	_, err := s.Fetch(context.Background(), FetchRequest{URL: v1, ID: "42"})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "release already exists: releases/42") {
		t.Fatalf("second Fetch error = %v, want ErrExists", err)
	}
	id, err := s.Fetch(context.Background(), FetchRequest{URL: v1again, ID: "42", Force: true})
	if err != nil || id != "42" {
		t.Fatalf("forced Fetch of identical content = %q, %v; want 42, nil", id, err)
	}
	_, err = s.Fetch(context.Background(), FetchRequest{URL: v2, ID: "42", Force: true})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "with different content") {
		t.Fatalf("forced Fetch of different content error = %v, want ErrExists", err)
	}
	assertUntouched(t, sb, before)
	if _, err := s.Fetch(context.Background(), FetchRequest{URL: v1, ID: "../x"}); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Fetch with id ../x: %v, want ErrInvalidID", err)
	}
}

func TestStore_FetchGeneratedID(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	p := sb.write(t, "app.tgz", appTgz(t, "1"))
	id, err := s.Fetch(context.Background(), FetchRequest{URL: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateID(id); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, time.Now().UTC().Format("20060102T")) {
		t.Errorf("generated id %q does not start with the UTC date", id)
	}
}

// TestStore_FetchWritesOnlyStaging checks that a fetch leaves nothing in
// os.TempDir, where go-getter keeps its copy of a checksum file.
func TestStore_FetchWritesOnlyStaging(t *testing.T) {
	good := appTgz(t, "1")
	srv := httptest.NewServer(files(map[string][]byte{
		"/app.tgz":    good,
		"/SHA256SUMS": []byte(sha(good) + "  app.tgz\n"),
	}))
	defer srv.Close()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	for i, u := range []string{
		srv.URL + "/app.tgz",
		srv.URL + "/app.tgz?checksum=file:" + srv.URL + "/SHA256SUMS",
		sb.write(t, "local.tgz", good),
	} {
		if _, err := s.Fetch(context.Background(), FetchRequest{URL: u, ID: fmt.Sprint("r", i)}); err != nil {
			t.Fatalf("Fetch %s: %v", u, err)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			t.Fatalf("Fetch %s left files in TMPDIR: %v", u, ents)
		}
	}
}

func TestStore_FetchProgress(t *testing.T) {
	body := make([]byte, 1<<20)
	rand.Read(body)
	tgz := gz(t, buildTar(t, []tarEntry{{Name: "blob", Body: string(body)}}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized.tgz" {
			w.Header().Set("Content-Length", fmt.Sprint(len(tgz)))
		}
		w.Write(tgz)
	}))
	defer srv.Close()
	for _, tt := range []struct {
		path  string
		total int64
	}{
		{path: "/sized.tgz", total: int64(len(tgz))},
		{path: "/chunked.tgz", total: -1},
	} {
		t.Run(tt.path, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{})
			var calls [][2]int64
			_, err := s.Fetch(context.Background(), FetchRequest{URL: srv.URL + tt.path, ID: "r1", Progress: func(done, total int64) {
				calls = append(calls, [2]int64{done, total})
			}})
			if err != nil {
				t.Fatal(err)
			}
			if len(calls) < 3 {
				t.Fatalf("only %d progress calls: %v", len(calls), calls)
			}
			for i, c := range calls {
				if c[1] != tt.total {
					t.Errorf("call %d total = %d, want %d", i, c[1], tt.total)
				}
				if i > 0 && c[0] < calls[i-1][0] {
					t.Errorf("progress went backwards: %v", calls)
				}
			}
			if last := calls[len(calls)-1]; last[0] != int64(len(tgz)) {
				t.Errorf("last progress done = %d, want %d", last[0], len(tgz))
			}
		})
	}
}
