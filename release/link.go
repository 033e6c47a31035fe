//go:build linux

package release

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Link makes each path p of linked (relative, inside the release, like
// "storage" or "config/.env") in releases/<id> a relative symlink to
// shared/<p>, creating shared/<p>'s parent directories:
//
//   - if shared/<p> does not exist, the release's own <p> (if it ships one)
//     is moved there to seed it; otherwise an empty directory is created;
//   - whatever the release ships at <p> is then replaced by the link;
//   - a link already in place is left alone, so Link is idempotent.
//
// Missing parent directories inside the release are created; a parent that
// is a symlink is refused. Link refuses the current release (ErrInUse):
// releases are not modified once active, so link before Activate. The
// release directory's timestamp (its place in Releases order) is kept.
func (s *Store) Link(id string, linked []string) error {
	if err := ValidateID(id); err != nil {
		return &Error{Op: "link", Subject: id, Err: err}
	}
	ok, err := s.exists(id)
	if err != nil {
		return &Error{Op: "link", Subject: id, Err: err}
	}
	if !ok {
		return &Error{Op: "link", Subject: id, Err: ErrNotFound}
	}
	if cur, err := s.Current(); err == nil && cur == id {
		return &Error{Op: "link", Subject: id, Err: fmt.Errorf("%w: it is current", ErrInUse)}
	}
	dir := s.Dir(id)
	fi, err := os.Stat(dir)
	if err != nil {
		return &Error{Op: "link", Subject: id, Err: err}
	}
	defer os.Chtimes(dir, fi.ModTime(), fi.ModTime())
	for _, p := range linked {
		if err := s.linkOne(dir, p); err != nil {
			return &Error{Op: "link", Subject: id, Err: fmt.Errorf("%q: %w", p, err)}
		}
	}
	return nil
}

func (s *Store) linkOne(dir, p string) error {
	rel, err := clean(p)
	if err != nil || rel == "" {
		return errors.New("must be a relative path inside the release")
	}
	shared := filepath.Join(s.root, sharedDir, filepath.FromSlash(rel))
	inRel := filepath.Join(dir, filepath.FromSlash(rel))
	// Parents inside the release: real directories only.
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		q := filepath.Join(dir, filepath.FromSlash(strings.Join(parts[:i], "/")))
		fi, err := os.Lstat(q)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(q, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("parent %q in the release is not a directory", strings.Join(parts[:i], "/"))
		}
	}
	target, err := filepath.Rel(filepath.Dir(inRel), shared)
	if err != nil {
		return err
	}
	cur, lerr := os.Lstat(inRel)
	if lerr == nil && cur.Mode()&fs.ModeSymlink != 0 {
		if t, err := os.Readlink(inRel); err == nil && t == target {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(shared), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(shared); errors.Is(err, fs.ErrNotExist) {
		if lerr == nil && cur.Mode()&fs.ModeSymlink == 0 {
			if err := os.Rename(inRel, shared); err != nil {
				return err
			}
			s.log.Info("Seeded shared path from the release", "path", shared)
		} else if err := os.Mkdir(shared, 0o755); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if err := os.RemoveAll(inRel); err != nil {
		return err
	}
	return os.Symlink(target, inRel)
}
