package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// releaseFile is one file of a release archive.
type releaseFile struct {
	Name string
	Data []byte
	Mode int64
}

// buildArchive packs files into a tar.gz in memory, with fixed times so that
// the same files give the same bytes.
func buildArchive(files []releaseFile) ([]byte, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: f.Name, Mode: mode, Size: int64(len(f.Data)), ModTime: mtime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("pack %s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("pack %s: %w", f.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	return buf.Bytes(), nil
}

// artifactServer serves release archives over HTTP on 127.0.0.1, as CI's
// artifact store would.
type artifactServer struct {
	ln   net.Listener
	srv  *http.Server
	done chan error
	mu   sync.Mutex
	blob map[string][]byte // "/<name>" -> bytes
}

func newArtifactServer() (*artifactServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("artifact server: %w", err)
	}
	a := &artifactServer{ln: ln, done: make(chan error, 1), blob: map[string][]byte{}}
	a.srv = &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { a.done <- a.srv.Serve(ln) }()
	return a, nil
}

func (a *artifactServer) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	b, ok := a.blob[r.URL.Path]
	a.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Write(b)
}

// add publishes a release archive of files under name (e.g. "r1.tar.gz") and
// returns its URL with the sha256 checksum go-getter verifies.
func (a *artifactServer) add(name string, files []releaseFile) (string, error) {
	b, err := buildArchive(files)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	a.mu.Lock()
	a.blob["/"+name] = b
	a.mu.Unlock()
	return fmt.Sprintf("http://%s/%s?checksum=sha256:%s", a.ln.Addr(), name, hex.EncodeToString(sum[:])), nil
}

func (a *artifactServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.srv.Shutdown(ctx)
	if serr := <-a.done; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// appRelease is the fixture app as a release: main is the file the
// configured command runs (app.js), from src; RELEASE names the id.
func appRelease(id string, src string) ([]releaseFile, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("read fixture: %w", err)
	}
	return []releaseFile{
		{Name: "app.js", Data: b},
		{Name: "RELEASE", Data: []byte(id + "\n")},
	}, nil
}
