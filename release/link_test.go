package release

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStore_Link(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	p := sb.write(t, "app.tgz", gz(t, buildTar(t, []tarEntry{
		{Name: "server.js", Body: "x"},
		{Name: "storage/seed.txt", Body: "from release"},
		{Name: "config/.env", Body: "SHIPPED=1"},
		{Name: "lnk", Type: tar.TypeSymlink, Link: "server.js"},
	})))
	for _, id := range []string{"a", "b"} {
		if _, err := s.Fetch(context.Background(), FetchRequest{URL: p, ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(sb.root, "shared/config"), 0o755)
	os.WriteFile(filepath.Join(sb.root, "shared/config/.env"), []byte("SECRET=1"), 0o600)

	linked := []string{"storage", "config/.env", "logs/app"}
	if err := s.Link("a", linked); err != nil {
		t.Fatalf("Link a: %v", err)
	}
	// storage: missing in shared, seeded from the release.
	if got := readFile(t, filepath.Join(s.Dir("a"), "storage/seed.txt")); got != "from release" {
		t.Errorf("storage/seed.txt through the link = %q", got)
	}
	// config/.env: shared wins over what the release shipped.
	if got := readFile(t, filepath.Join(s.Dir("a"), "config/.env")); got != "SECRET=1" {
		t.Errorf("config/.env = %q, want the shared one", got)
	}
	// logs/app: neither exists: an empty shared dir, parents created.
	if fi, err := os.Stat(filepath.Join(sb.root, "shared/logs/app")); err != nil || !fi.IsDir() {
		t.Errorf("shared/logs/app not created as a directory: %v", err)
	}
	for _, l := range linked {
		target, err := os.Readlink(filepath.Join(s.Dir("a"), l))
		if err != nil {
			t.Fatalf("%s is not a symlink: %v", l, err)
		}
		if filepath.IsAbs(target) || !strings.Contains(target, "shared/"+l) {
			t.Errorf("%s -> %q, want a relative link to shared/%s", l, target, l)
		}
	}
	// Idempotent, and a second release shares the same data.
	if err := s.Link("a", linked); err != nil {
		t.Fatalf("Link a again: %v", err)
	}
	if err := s.Link("b", linked); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(s.Dir("b"), "storage/new.txt"), []byte("written by b"), 0o644)
	if got := readFile(t, filepath.Join(s.Dir("a"), "storage/new.txt")); got != "written by b" {
		t.Errorf("a does not see b's write to shared storage: %q", got)
	}

	tests := []struct {
		name, path string
	}{
		{name: "traversal", path: "../x"},
		{name: "absolute", path: "/etc"},
		{name: "root", path: "."},
		{name: "through a symlink", path: "lnk/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Link("b", []string{tt.path})
			if err == nil || !strings.HasPrefix(err.Error(), "link b: ") {
				t.Fatalf("Link %q = %v, want an error", tt.path, err)
			}
		})
	}
	if err := s.Activate("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Link("a", linked); !errors.Is(err, ErrInUse) {
		t.Errorf("Link on current = %v, want ErrInUse", err)
	}
	if err := s.Link("nope", linked); !errors.Is(err, ErrNotFound) {
		t.Errorf("Link on missing = %v, want ErrNotFound", err)
	}
}
