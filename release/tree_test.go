package release

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestResolveInside(t *testing.T) {
	tests := []struct {
		name  string
		links map[string]string // link path -> target, created in order of sorted keys
		dirs  []string
		check string
		want  string // "" = inside
	}{
		{name: "sibling", links: map[string]string{"a": "b"}, check: "a"},
		{name: "dangling inside", links: map[string]string{"a": "nope/deeper"}, check: "a"},
		{name: "up and back", dirs: []string{"d"}, links: map[string]string{"d/l": "../d"}, check: "d/l"},
		{name: "direct escape", links: map[string]string{"a": "../x"}, check: "a", want: "outside the release"},
		{name: "chain escape", dirs: []string{"a"}, links: map[string]string{"a/l": "..", "b": "a/l/.."}, check: "b", want: "outside the release"},
		{name: "chain to absolute", links: map[string]string{"a": "/etc", "b": "a/passwd"}, check: "b", want: `absolute path "/etc"`},
		{name: "deep chain inside", dirs: []string{"x/y/z"}, links: map[string]string{"p": "x/y/z", "q": "p/../../y"}, check: "q"},
		{name: "loop", links: map[string]string{"a": "b", "b": "a"}, check: "a", want: "symlink loop"},
		{name: "through a file", links: map[string]string{"f": "file/../.."}, check: "f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			os.WriteFile(filepath.Join(root, "file"), []byte("x"), 0o644)
			for _, d := range tt.dirs {
				os.MkdirAll(filepath.Join(root, d), 0o755)
			}
			for l, target := range tt.links {
				if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
					t.Fatal(err)
				}
			}
			err := resolveInside(root, tt.check)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("resolveInside(%s) = %v, want inside", tt.check, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrUnsafeArchive)):
				t.Fatalf("resolveInside(%s) = %v, want ErrUnsafeArchive containing %q", tt.check, err, tt.want)
			}
		})
	}
}

func TestVerifyTree(t *testing.T) {
	lim := limits{maxBytes: 1 << 20, maxFiles: 100}
	mk := func(t *testing.T, version string) string {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "app/bin"), 0o755)
		os.WriteFile(filepath.Join(root, "app/VERSION"), []byte(version), 0o644)
		os.Symlink("../VERSION", filepath.Join(root, "app/bin/v"))
		return root
	}
	a, err := verifyTree(context.Background(), mk(t, "1"), lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.files != 4 || a.bytes != 1 || !strings.HasPrefix(a.digest, "sha256:") {
		t.Errorf("stats = %+v", a)
	}
	b, _ := verifyTree(context.Background(), mk(t, "1"), lim, nil)
	c, _ := verifyTree(context.Background(), mk(t, "2"), lim, nil)
	if a.digest != b.digest || a.digest == c.digest {
		t.Errorf("digests: same content %s / %s, different content %s", a.digest, b.digest, c.digest)
	}
	// A socket or FIFO found in the tree (whatever put it there) is refused.
	root := mk(t, "1")
	if err := mkfifo(filepath.Join(root, "app/fifo")); err != nil {
		t.Fatal(err)
	}
	if _, err := verifyTree(context.Background(), root, lim, nil); !errors.Is(err, ErrUnsafeArchive) || !strings.Contains(err.Error(), `entry "app/fifo": FIFO`) {
		t.Errorf("verifyTree with a FIFO = %v", err)
	}
	if _, err := verifyTree(context.Background(), mk(t, "1"), limits{maxBytes: 1 << 20, maxFiles: 3}, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("verifyTree over maxFiles = %v", err)
	}
}

func mkfifo(p string) error { return syscall.Mkfifo(p, 0o644) }
