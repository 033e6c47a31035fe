package release

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// bigApp is an archive large enough that the download and the unpack take
// several reads and several files, so a kill lands in the middle of them.
func bigApp(t *testing.T, version string) []byte {
	noise := make([]byte, 256<<10)
	rand.Read(noise)
	var es []tarEntry
	es = append(es, tarEntry{Name: "app/VERSION", Body: version})
	for i := 0; i < 6; i++ {
		es = append(es, tarEntry{Name: fmt.Sprintf("app/blob%d", i), Body: string(noise)})
	}
	return gz(t, buildTar(t, es))
}

// TestStore_CrashConsistency SIGKILLs a helper process at each step of a
// deploy (fetch → unpack → rename → activate → state write). After every
// kill a fresh Open recovers: current names a complete release (the old
// one before the swap, the new one after), state.json parses, staging and
// temporary files are gone, and the deploy can be completed.
func TestStore_CrashConsistency(t *testing.T) {
	a, b := bigApp(t, "a"), bigApp(t, "b")
	srv := httptest.NewServer(files(map[string][]byte{"/a.tgz": a, "/b.tgz": b}))
	defer srv.Close()

	// Reference digests of the two complete releases.
	ref := newSandbox(t)
	rs := ref.open(t, Options{})
	want := map[string]string{}
	for _, id := range []string{"a", "b"} {
		if _, err := rs.Fetch(context.Background(), FetchRequest{URL: srv.URL + "/" + id + ".tgz", ID: id}); err != nil {
			t.Fatal(err)
		}
		d, err := verifyTree(context.Background(), rs.Dir(id), limits{maxBytes: DefaultMaxBytes, maxFiles: DefaultMaxFiles}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = d.digest
	}

	tests := []struct {
		step    string
		current string // what current must name after the kill
	}{
		{step: "fetch", current: "a"},
		{step: "unpack", current: "a"},
		{step: "digest", current: "a"},
		{step: "rename", current: "a"},
		{step: "renamed", current: "a"},
		{step: "activate", current: "a"},
		{step: "activated", current: "b"},
		{step: "state", current: "b"},
	}
	for _, tt := range tests {
		t.Run(tt.step, func(t *testing.T) {
			sb := newSandbox(t)
			s := sb.open(t, Options{})
			if _, err := s.Fetch(context.Background(), FetchRequest{URL: srv.URL + "/a.tgz", ID: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := s.Activate("a"); err != nil {
				t.Fatal(err)
			}
			if err := s.Record(Event{Op: "deploy", ID: "a", Result: "ok"}); err != nil {
				t.Fatal(err)
			}

			h := startHelper(t, roleRun, rootEnv+"="+sb.root, urlEnv+"="+srv.URL+"/b.tgz", idEnv+"=b", stepEnv+"="+tt.step)
			h.expect(t, "STEP "+tt.step)
			h.kill(t)

			s2 := sb.open(t, Options{})
			cur, err := s2.Current()
			if err != nil {
				t.Fatalf("Current after kill at %s: %v", tt.step, err)
			}
			if cur != tt.current {
				t.Errorf("current = %s after kill at %s, want %s", cur, tt.step, tt.current)
			}
			got, err := verifyTree(context.Background(), filepath.Join(sb.root, "current"), limits{maxBytes: DefaultMaxBytes, maxFiles: DefaultMaxFiles}, nil)
			if err != nil || got.digest != want[cur] {
				t.Errorf("current (%s) is not the complete release: %v", cur, err)
			}
			if _, err := s2.History(); err != nil {
				t.Errorf("state.json after kill at %s: %v", tt.step, err)
			}
			if ents, _ := os.ReadDir(filepath.Join(sb.root, releasesDir, incomingDir)); len(ents) != 0 {
				t.Errorf(".incoming not empty after recovery: %v", ents)
			}
			for _, pat := range []string{currentTmpPfx + "*", ".agent/*.tmp-*", ".agent/digests/*.tmp-*"} {
				if m, _ := filepath.Glob(filepath.Join(sb.root, pat)); len(m) != 0 {
					t.Errorf("temporary files left: %v", m)
				}
			}
			// Every release on disk is complete; every digest has its release.
			rels, _ := s2.Releases()
			for _, id := range rels {
				if d, err := verifyTree(context.Background(), s2.Dir(id), limits{maxBytes: DefaultMaxBytes, maxFiles: DefaultMaxFiles}, nil); err != nil || d.digest != want[id] {
					t.Errorf("release %s on disk is incomplete: %v", id, err)
				}
			}
			// The deploy can be finished from here.
			if _, err := s2.Fetch(context.Background(), FetchRequest{URL: srv.URL + "/b.tgz", ID: "b", Force: true}); err != nil {
				t.Fatalf("re-Fetch b after kill at %s: %v", tt.step, err)
			}
			if err := s2.Activate("b"); err != nil {
				t.Fatal(err)
			}
			if err := s2.Record(Event{Op: "deploy", ID: "b", From: cur, Result: "ok"}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
