package release

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestStore_RecordHistory(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	h, err := s.History()
	if err != nil || len(h) != 0 {
		t.Fatalf("History of a new root = %v, %v", h, err)
	}
	ev := Event{Op: "deploy", ID: "a", URL: "https://u:secret@h/a.tgz", Result: "ok", Duration: time.Second}
	if err := s.Record(ev); err != nil {
		t.Fatal(err)
	}
	if err := s.Record(Event{Op: "deploy", ID: "b", From: "a", Result: "failed", Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	h, err = s.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].ID != "a" || h[1].Error != "boom" || h[0].Time.IsZero() {
		t.Fatalf("History = %+v", h)
	}
	if h[0].URL != "https://u:xxxxx@h/a.tgz" {
		t.Errorf("URL stored as %q", h[0].URL)
	}
	raw := readFile(t, s.statePath())
	if strings.Contains(raw, "secret") {
		t.Errorf("state.json holds a credential: %s", raw)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatalf("state.json does not parse: %v", err)
	}
}

func TestStore_HistoryCorrupt(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	if err := os.WriteFile(s.statePath(), []byte(`{"version":1,"events":[{"id":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.History(); !errors.Is(err, ErrStateCorrupt) {
		t.Fatalf("History = %v, want ErrStateCorrupt", err)
	}
	if err := s.Record(Event{Op: "deploy", ID: "a", Result: "ok"}); !errors.Is(err, ErrStateCorrupt) {
		t.Fatalf("Record on corrupt state = %v, want ErrStateCorrupt", err)
	}
	if got := readFile(t, s.statePath()); got != `{"version":1,"events":[{"id":` {
		t.Errorf("corrupt state was rewritten: %q", got)
	}
	if _, err := s.Prune(1); !errors.Is(err, ErrStateCorrupt) {
		t.Errorf("Prune on corrupt state = %v, want ErrStateCorrupt", err)
	}
}

func TestStore_HistoryCapped(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	evs := make([]Event, MaxHistory+5)
	for i := range evs {
		evs[i] = Event{Op: "deploy", ID: "x", Result: "ok", Time: time.Unix(int64(i), 0).UTC()}
	}
	b, _ := json.Marshal(state{Version: stateVersion, Events: evs[:MaxHistory]})
	os.WriteFile(s.statePath(), b, 0o644)
	for _, e := range evs[MaxHistory:] {
		if err := s.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := s.History()
	if len(h) != MaxHistory || !h[len(h)-1].Time.Equal(evs[len(evs)-1].Time) || !h[0].Time.Equal(evs[5].Time) {
		t.Fatalf("history len %d, first %v, last %v", len(h), h[0].Time, h[len(h)-1].Time)
	}
}

// deployed fetches, activates and records each id in turn with result.
func deployed(t *testing.T, s *Store, sb *sandbox, steps ...[2]string) {
	t.Helper()
	for _, st := range steps {
		id, result := st[0], st[1]
		if ok, _ := s.exists(id); !ok {
			fetchV(t, s, sb, id, id)
		}
		if result == "ok" {
			if err := s.Activate(id); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Record(Event{Op: "deploy", ID: id, Result: Result(result)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // distinct release mtimes
	}
}

func TestStore_RollbackTarget(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	if _, err := s.RollbackTarget(); !errors.Is(err, ErrNoRollbackTarget) {
		t.Fatalf("RollbackTarget with no current: %v", err)
	}
	deployed(t, s, sb, [2]string{"a", "ok"})
	if _, err := s.RollbackTarget(); !errors.Is(err, ErrNoRollbackTarget) {
		t.Fatalf("RollbackTarget with one release: %v", err)
	}
	deployed(t, s, sb, [2]string{"b", "ok"}, [2]string{"c", "failed"}, [2]string{"d", "ok"})
	if got, err := s.RollbackTarget(); err != nil || got != "b" {
		t.Fatalf("RollbackTarget = %q, %v; want b (c failed)", got, err)
	}
	// Roll back to b: the next target is a, not d.
	if err := s.Activate("b"); err != nil {
		t.Fatal(err)
	}
	s.Record(Event{Op: "rollback", ID: "b", From: "d", Result: "ok"})
	if got, err := s.RollbackTarget(); err != nil || got != "a" {
		t.Fatalf("RollbackTarget after rollback to b = %q, %v; want a", got, err)
	}
	// A target that was removed is skipped.
	if err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RollbackTarget(); !errors.Is(err, ErrNoRollbackTarget) {
		t.Fatalf("RollbackTarget with a removed: %v", err)
	}
}

func TestStore_Prune(t *testing.T) {
	sb := newSandbox(t)
	s := sb.open(t, Options{})
	deployed(t, s, sb,
		[2]string{"r1", "ok"}, [2]string{"r2", "ok"}, [2]string{"r3", "failed"},
		[2]string{"r4", "ok"}, [2]string{"r5", "ok"}, [2]string{"r6", "ok"})
	fetchV(t, s, sb, "unused", "x") // fetched, never deployed
	removed, err := s.Prune(2, "r1")
	if err != nil {
		t.Fatal(err)
	}
	// keep r6 (current) and r5 (2 newest successful; r5 is also the
	// rollback target), r1 (protected); remove r2, r4, failed r3 and unused.
	if want := []string{"r2", "r3", "r4", "unused"}; !reflect.DeepEqual(removed, want) {
		t.Fatalf("Prune removed %v, want %v", removed, want)
	}
	got, _ := s.Releases()
	if want := []string{"r1", "r5", "r6"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Releases after Prune = %v, want %v", got, want)
	}
	// keep 0 still keeps current and the rollback target.
	if err := s.Activate("r5"); err != nil {
		t.Fatal(err)
	}
	s.Record(Event{Op: "rollback", ID: "r5", From: "r6", Result: "ok"})
	removed, err = s.Prune(0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"r6"}; !reflect.DeepEqual(removed, want) {
		t.Fatalf("Prune(0) removed %v, want %v", removed, want)
	}
	got, _ = s.Releases()
	if want := []string{"r1", "r5"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Releases after Prune(0) = %v, want %v (current r5, rollback target r1)", got, want)
	}
}
