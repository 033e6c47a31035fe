// Package releasetest builds release archives and serves them over HTTP on
// 127.0.0.1, for the tests of the packages that deploy them (agent,
// examples). Only _test.go files import it, so it never reaches the agent
// binary.
package releasetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// File is one regular file of an archive; Mode 0 is 0644.
type File struct {
	Mode int64
	Body []byte
}

// TarGz packs files (by slash-separated path) as a gzipped tar: entries in
// name order, each directory before what it holds, at the fastest gzip
// level (the race detector makes compression slow). The same files give the
// same bytes.
func TarGz(t testing.TB, files map[string]File) []byte {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var entries []Entry
	dirs := map[string]bool{}
	for _, name := range names {
		var parents []string
		for d := filepath.Dir(name); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			entries = append(entries, Entry{Header: tar.Header{Name: parents[i] + "/", Mode: 0o755, Typeflag: tar.TypeDir}})
		}
		f := files[name]
		entries = append(entries, Entry{Header: tar.Header{Name: name, Mode: f.Mode, Typeflag: tar.TypeReg}, Body: f.Body})
	}
	return RawTarGz(t, entries)
}

// Entry is one tar entry written as it is, for hostile archives: a regular
// file's Size is len(Body), a Mode of 0 is 0644; nothing else is checked.
type Entry struct {
	Header tar.Header
	Body   []byte
}

// RawTarGz packs entries, in order, as a gzipped tar.
func RawTarGz(t testing.TB, entries []Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Server serves published blobs over HTTP on 127.0.0.1, and whatever
// handlers a test adds for misbehaving endpoints. It closes at the test's
// end.
type Server struct {
	URL string

	srv *httptest.Server
	mu  sync.Mutex
	// blobs and handlers by path without the leading "/", and the query
	// check; guarded by mu.
	blobs    map[string][]byte
	handlers map[string]http.HandlerFunc
	query    func(r *http.Request) bool
}

// NewServer starts a server with nothing published.
func NewServer(t testing.TB) *Server {
	t.Helper()
	s := &Server{blobs: map[string][]byte{}, handlers: map[string]http.HandlerFunc{}}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	s.mu.Lock()
	b, ok := s.blobs[name]
	h := s.handlers[name]
	query := s.query
	s.mu.Unlock()
	if query != nil && !query(r) {
		http.Error(w, "bad query "+r.URL.RawQuery, http.StatusForbidden)
		return
	}
	switch {
	case h != nil:
		h(w, r)
	case ok:
		if strings.HasSuffix(name, ".gz") {
			w.Header().Set("Content-Type", "application/gzip")
		}
		w.Write(b)
	default:
		http.NotFound(w, r)
	}
}

// CheckQuery makes the server refuse (403) a request f returns false for,
// like storage that checks a pre-signed URL's signature.
func (s *Server) CheckQuery(f func(r *http.Request) bool) {
	s.mu.Lock()
	s.query = f
	s.mu.Unlock()
}

// Publish serves b at /name and returns its URL with ?checksum=sha256:….
func (s *Server) Publish(name string, b []byte) string {
	return s.Put(name, b) + "?checksum=" + Checksum(b)
}

// Put serves b at /name and returns the URL, without a checksum.
func (s *Server) Put(name string, b []byte) string {
	s.mu.Lock()
	s.blobs[name] = b
	s.mu.Unlock()
	return s.URL + "/" + name
}

// BlobBytes is the size of every blob published, summed.
func (s *Server) BlobBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, b := range s.blobs {
		n += int64(len(b))
	}
	return n
}

// Handle serves /name with h (ahead of a blob of that name).
func (s *Server) Handle(name string, h http.HandlerFunc) {
	s.mu.Lock()
	s.handlers[name] = h
	s.mu.Unlock()
}

// CloseClientConnections closes every connection to the server.
func (s *Server) CloseClientConnections() { s.srv.CloseClientConnections() }

// Checksum is b's go-getter checksum value: "sha256:<hex>".
func Checksum(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Close stops the server before the test's end (Close may be called again).
func (s *Server) Close() { s.srv.Close() }
