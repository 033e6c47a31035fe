package release

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fetchV fetches a small release with the given id and version.
func fetchV(t *testing.T, s *Store, sb *sandbox, id, version string) {
	t.Helper()
	p := sb.write(t, id+".tgz", appTgz(t, version))
	if _, err := s.Fetch(context.Background(), FetchRequest{URL: p, ID: id}); err != nil {
		t.Fatalf("Fetch %s: %v", id, err)
	}
}

func TestStore_ActivateCurrent(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	if _, err := s.Current(); !errors.Is(err, ErrNoCurrent) {
		t.Fatalf("Current on a new root: %v, want ErrNoCurrent", err)
	}
	fetchV(t, s, sb, "a", "1")
	fetchV(t, s, sb, "b", "2")
	for _, id := range []string{"a", "b", "a"} {
		if err := s.Activate(id); err != nil {
			t.Fatalf("Activate %s: %v", id, err)
		}
		got, err := s.Current()
		if err != nil || got != id {
			t.Fatalf("Current = %q, %v; want %q", got, err, id)
		}
		target, _ := os.Readlink(filepath.Join(sb.root, "current"))
		if target != "releases/"+id {
			t.Errorf("current -> %q, want relative releases/%s", target, id)
		}
		if v := readFile(t, filepath.Join(sb.root, "current/app/VERSION")); v == "" {
			t.Error("current/app/VERSION empty")
		}
	}
	if err := s.Activate("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Activate missing: %v, want ErrNotFound", err)
	}
	if err := s.Activate("../a"); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Activate ../a: %v, want ErrInvalidID", err)
	}
	m, _ := filepath.Glob(filepath.Join(sb.root, currentTmpPfx+"*"))
	if len(m) != 0 {
		t.Errorf("temporary links left: %v", m)
	}
}

func TestStore_ReleasesRemove(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	for _, id := range []string{"zz", "aa", "mm"} {
		fetchV(t, s, sb, id, id)
		time.Sleep(10 * time.Millisecond) // distinct mtimes: simulates deploys at different moments
	}
	if err := s.Link("zz", []string{"storage"}); err != nil { // must not reorder
		t.Fatal(err)
	}
	got, err := s.Releases()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"zz", "aa", "mm"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Releases = %v, want %v (oldest first)", got, want)
	}
	if err := s.Activate("aa"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("aa"); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove current: %v, want ErrInUse", err)
	}
	if err := s.Remove("zz"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("zz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove twice: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(s.digestPath("zz")); !os.IsNotExist(err) {
		t.Errorf("digest of removed release still there: %v", err)
	}
	got, _ = s.Releases()
	if want := []string{"aa", "mm"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Releases after Remove = %v, want %v", got, want)
	}
	if ents, _ := os.ReadDir(filepath.Join(sb.root, releasesDir, incomingDir)); len(ents) != 0 {
		t.Errorf(".incoming not empty after Remove: %v", ents)
	}
}

func TestOpen_Recovery(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	fetchV(t, s, sb, "a", "1")
	if err := s.Activate("a"); err != nil {
		t.Fatal(err)
	}
	// What a crash leaves behind.
	leftovers := []string{
		filepath.Join(sb.root, releasesDir, incomingDir, "b-123/tree/app/VERSION"),
		filepath.Join(sb.root, agentDir, stateFile+".tmp-abcd"),
		filepath.Join(sb.root, agentDir, digestsDir, "gone"),
	}
	for _, p := range leftovers {
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("partial"), 0o644)
	}
	tmpLink := filepath.Join(sb.root, currentTmpPfx+"dead")
	os.Symlink("releases/b", tmpLink)

	s2 := sb.open(t, Options{})
	for _, p := range append(leftovers, tmpLink) {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived recovery (%v)", p, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(sb.root, releasesDir, incomingDir)); len(ents) != 0 {
		t.Errorf(".incoming not empty: %v", ents)
	}
	if id, err := s2.Current(); err != nil || id != "a" {
		t.Errorf("Current after recovery = %q, %v", id, err)
	}
	if _, err := os.Stat(s2.digestPath("a")); err != nil {
		t.Errorf("digest of a removed by recovery: %v", err)
	}
}

func TestOpen_RecoverySkippedWhileLocked(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	l, err := s.Lock("deploy", "b")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	inflight := filepath.Join(sb.root, releasesDir, incomingDir, "b-1")
	os.Mkdir(inflight, 0o755)
	sb.open(t, Options{})
	if _, err := os.Stat(inflight); err != nil {
		t.Fatalf("Open removed another holder's staging: %v", err)
	}
}

func TestOpen_CurrentBroken(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	fetchV(t, s, sb, "a", "1")
	if err := s.Activate("a"); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(s.Dir("a")) // an operator's rm -rf
	var logs bytes.Buffer
	s2, err := Open(sb.root, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open with a broken current: %v", err)
	}
	_, err = s2.Current()
	if !errors.Is(err, ErrCurrentBroken) || !strings.Contains(err.Error(), "release a is missing") {
		t.Fatalf("Current = %v, want ErrCurrentBroken naming a", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "release a is missing") {
		t.Errorf("Open did not log the broken current loudly: %s", logs.String())
	}
	os.Remove(filepath.Join(sb.root, "current"))
	os.Symlink("/etc", filepath.Join(sb.root, "current"))
	if _, err := s2.Current(); !errors.Is(err, ErrCurrentBroken) {
		t.Errorf("Current -> /etc: %v, want ErrCurrentBroken", err)
	}
}

func TestOpen_Options(t *testing.T) {
	sb := newSandbox(t)
	if _, err := Open(sb.root, Options{Allow: []string{"s3"}}); !errors.Is(err, ErrSchemeNotAllowed) {
		t.Errorf("Open with s3: %v, want ErrSchemeNotAllowed", err)
	}
	s := sb.open(t, Options{})
	if s.opts.MaxBytes != DefaultMaxBytes || s.opts.MaxFiles != DefaultMaxFiles || s.opts.Timeout != DefaultTimeout {
		t.Errorf("defaults not applied: %+v", s.opts)
	}
	for _, d := range []string{"releases/.incoming", "shared", ".agent"} {
		if fi, err := os.Stat(filepath.Join(sb.root, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s not created: %v", d, err)
		}
	}
	if !filepath.IsAbs(s.Root()) || s.Dir("x") != filepath.Join(s.Root(), "releases/x") {
		t.Errorf("Root %q / Dir %q", s.Root(), s.Dir("x"))
	}
}
