//go:build linux

package release

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

const (
	stateFile    = "state.json"
	stateVersion = 1
	// MaxHistory is how many events state.json keeps; older ones are dropped.
	MaxHistory = 1000
)

// Result is how a recorded operation ended.
type Result string

// Results. Only ResultOK proves a release served: rollback targets and
// pruning count those.
const (
	ResultOK         Result = "ok"          // it serves (or served)
	ResultFailed     Result = "failed"      // its workers did not take over; what served before kept serving
	ResultRolledBack Result = "rolled-back" // it served, a post-deploy hook failed, the previous release serves again
	ResultRefused    Result = "refused"     // stopped before the switch: fetch, link or pre-activate failed
)

// Event is one line of the root's history in .agent/state.json.
type Event struct {
	Time     time.Time     `json:"time"`
	Op       string        `json:"op"`             // "deploy", "rollback", "reload"
	ID       string        `json:"id"`             // release id
	From     string        `json:"from,omitempty"` // release that was current before
	URL      string        `json:"url,omitempty"`  // credentials redacted (RedactURL)
	Result   Result        `json:"result"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
}

type state struct {
	Version int     `json:"version"`
	Events  []Event `json:"events"`
}

func (s *Store) statePath() string { return filepath.Join(s.root, agentDir, stateFile) }

// History returns the recorded events, oldest first. A missing state file
// is an empty history; an unparsable one is an error wrapping
// ErrStateCorrupt, and the file is left as it is for the operator.
func (s *Store) History() ([]Event, error) {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	st, err := s.readStateLocked()
	if err != nil {
		return nil, err
	}
	return st.Events, nil
}

func (s *Store) readStateLocked() (*state, error) {
	p := s.statePath()
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return &state{Version: stateVersion}, nil
	}
	if err != nil {
		return nil, &Error{Op: "history", Subject: p, Err: err}
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, &Error{Op: "history", Subject: p, Err: fmt.Errorf("%w: %v (move it aside to start a new history)", ErrStateCorrupt, err)}
	}
	if st.Version != stateVersion {
		return nil, &Error{Op: "history", Subject: p, Err: fmt.Errorf("%w: version %d, want %d", ErrStateCorrupt, st.Version, stateVersion)}
	}
	return &st, nil
}

// Record appends ev to .agent/state.json: the whole file is rewritten to a
// temporary file, fsynced, renamed over state.json, and the directory is
// fsynced, so a crash leaves either the old or the new history. A zero
// Time is set to now; URL is redacted again. A corrupt state file is not
// overwritten: Record returns the History error (ErrStateCorrupt).
func (s *Store) Record(ev Event) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	ev.URL = RedactURL(ev.URL)
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	st, err := s.readStateLocked()
	if err != nil {
		return err
	}
	st.Events = append(st.Events, ev)
	if n := len(st.Events) - MaxHistory; n > 0 {
		st.Events = append([]Event(nil), st.Events[n:]...)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return &Error{Op: "record", Subject: s.statePath(), Err: err}
	}
	if err := writeFileAtomic(s.statePath(), append(b, '\n'), "state"); err != nil {
		return &Error{Op: "record", Subject: s.statePath(), Err: err}
	}
	return nil
}

// writeFileAtomic writes path via a temporary file in the same directory:
// write, fsync, rename, fsync the directory. stepName names the crash-test
// step between fsync and rename.
func writeFileAtomic(path string, data []byte, stepName string) error {
	tmp := path + ".tmp-" + randHex()
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	step(stepName)
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// firstDeployOrder returns the ids with a ResultOK event, in the order of
// their first success.
func firstDeployOrder(evs []Event) []string {
	seen := map[string]bool{}
	var order []string
	for _, e := range evs {
		if e.Result == ResultOK && !seen[e.ID] {
			seen[e.ID] = true
			order = append(order, e.ID)
		}
	}
	return order
}

// RollbackTarget returns the release to roll back to: of the releases that
// were deployed successfully before the current one was (in order of first
// success), the newest that is still on disk. If the current release has
// no successful event, the newest release on disk older than it (Releases
// order) that ever succeeded is used. ErrNoRollbackTarget when there is
// none (or no current release).
func (s *Store) RollbackTarget() (string, error) {
	cur, err := s.Current()
	if err != nil {
		return "", &Error{Op: "rollback-target", Subject: s.root, Err: fmt.Errorf("%w: %v", ErrNoRollbackTarget, err)}
	}
	evs, err := s.History()
	if err != nil {
		return "", err
	}
	order := firstDeployOrder(evs)
	pos := -1
	for i, id := range order {
		if id == cur {
			pos = i
		}
	}
	var candidates []string
	if pos >= 0 {
		candidates = order[:pos]
	} else {
		ok := map[string]bool{}
		for _, id := range order {
			ok[id] = true
		}
		disk, err := s.Releases()
		if err != nil {
			return "", err
		}
		for _, id := range disk {
			if id == cur {
				break
			}
			if ok[id] {
				candidates = append(candidates, id)
			}
		}
	}
	for i := len(candidates) - 1; i >= 0; i-- {
		if ok, _ := s.exists(candidates[i]); ok && candidates[i] != cur {
			return candidates[i], nil
		}
	}
	return "", &Error{Op: "rollback-target", Subject: cur, Err: ErrNoRollbackTarget}
}

// Prune removes releases: it keeps the `keep` releases with the most recent
// successful events, the current release, the rollback target and every id
// in protect (releases running worker generations use); it removes every
// other release, including ones that never deployed successfully. It
// refuses to run on an unreadable history (ErrStateCorrupt) or a broken
// current, since it could not tell what is safe. Callers hold the Lock and
// call Prune after Record. Removed ids are returned oldest first.
func (s *Store) Prune(keep int, protect ...string) ([]string, error) {
	evs, err := s.History()
	if err != nil {
		return nil, &Error{Op: "prune", Subject: s.root, Err: err}
	}
	keepSet := map[string]bool{}
	for _, id := range protect {
		keepSet[id] = true
	}
	cur, err := s.Current()
	switch {
	case err == nil:
		keepSet[cur] = true
	case errors.Is(err, ErrNoCurrent):
	default:
		return nil, &Error{Op: "prune", Subject: s.root, Err: err}
	}
	if rt, err := s.RollbackTarget(); err == nil {
		keepSet[rt] = true
	}
	disk, err := s.Releases()
	if err != nil {
		return nil, &Error{Op: "prune", Subject: s.root, Err: err}
	}
	onDisk := map[string]bool{}
	for _, id := range disk {
		onDisk[id] = true
	}
	counted := map[string]bool{}
	for i := len(evs) - 1; i >= 0 && len(counted) < keep; i-- {
		e := evs[i]
		if e.Result == ResultOK && onDisk[e.ID] && !counted[e.ID] {
			counted[e.ID] = true
			keepSet[e.ID] = true
		}
	}
	var removed []string
	for _, id := range disk {
		if keepSet[id] {
			continue
		}
		if err := s.Remove(id); err != nil {
			return removed, &Error{Op: "prune", Subject: s.root, Err: err}
		}
		removed = append(removed, id)
	}
	return removed, nil
}
