//go:build linux

package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

const maxLinkHops = 40 // as the kernel's MAXSYMLINKS

// verifyTree walks a staged release and refuses anything unsafe, whatever
// wrote it: a file type other than directory, regular file or symlink; a
// symlink that resolves (following every link on the way, as the kernel
// would) to a point outside the tree; more than lim entries or bytes. It
// returns a digest of the tree (paths, types, permissions, contents, link
// targets) used to recognise identical content.
//
// known holds content hashes computed while the files were written; a
// file not in it is read and hashed.
func verifyTree(ctx context.Context, root string, lim limits, known sums) (treeStats, error) {
	v := &verifier{ctx: ctx, root: root, lim: lim, h: sha256.New(), known: known}
	if err := v.walk(""); err != nil {
		return treeStats{}, err
	}
	if v.files == 0 {
		return treeStats{}, reason(ErrBadArchive, "release is empty")
	}
	return treeStats{digest: "sha256:" + hex.EncodeToString(v.h.Sum(nil)), files: v.files, bytes: v.bytes}, nil
}

// treeStats describes a verified tree.
type treeStats struct {
	digest string // "sha256:<hex>" over paths, types, modes, contents, link targets
	files  int    // entries
	bytes  int64  // bytes of regular files
}

type verifier struct {
	ctx   context.Context
	root  string
	lim   limits
	files int
	bytes int64
	h     hash.Hash
	known sums
}

func (v *verifier) walk(rel string) error {
	ents, err := os.ReadDir(filepath.Join(v.root, filepath.FromSlash(rel)))
	if err != nil {
		return err
	}
	for _, e := range ents { // ReadDir sorts by name: the digest is stable
		if err := v.ctx.Err(); err != nil {
			return err
		}
		r := path.Join(rel, e.Name())
		v.files++
		if v.files > v.lim.maxFiles {
			return &EntryError{Entry: r, Reason: fmt.Sprintf("more than %d entries", v.lim.maxFiles), Err: ErrTooLarge}
		}
		full := filepath.Join(v.root, filepath.FromSlash(r))
		fi, err := os.Lstat(full)
		if err != nil {
			return err
		}
		m := fi.Mode()
		switch {
		case m.IsDir():
			fmt.Fprintf(v.h, "d %o %q\n", m.Perm(), r)
			if err := v.walk(r); err != nil {
				return err
			}
		case m.IsRegular():
			v.bytes += fi.Size()
			if v.bytes > v.lim.maxBytes {
				return &EntryError{Entry: r, Reason: fmt.Sprintf("release exceeds %d bytes unpacked", v.lim.maxBytes), Err: ErrTooLarge}
			}
			sum := v.known[r]
			if sum == "" {
				if sum, err = hashFile(full); err != nil {
					return err
				}
			}
			fmt.Fprintf(v.h, "f %o %q %d %s\n", m.Perm(), r, fi.Size(), sum)
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(full)
			if err != nil {
				return err
			}
			if err := checkLinkTarget(r, r, target); err != nil {
				return err
			}
			if err := resolveInside(v.root, r); err != nil {
				return err
			}
			fmt.Fprintf(v.h, "l %q %q\n", r, target)
		default:
			return unsafeEntry(r, describeType(m))
		}
	}
	return nil
}

func describeType(m fs.FileMode) string {
	switch {
	case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
		return "device file"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	default:
		return "unsupported file type " + m.Type().String()
	}
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// resolveInside resolves the symlink at rel (slash path under root) the
// way the kernel would, component by component, following links within
// the tree, and fails if any step leaves the tree. Dangling links that
// stay inside are allowed.
func resolveInside(root, rel string) error {
	var stack []string // resolved components below root
	todo := strings.Split(rel, "/")
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return unsafeEntry(rel, "symlink resolves outside the release (through a chain of links)")
			}
			stack = stack[:len(stack)-1]
			continue
		}
		stack = append(stack, c)
		p := filepath.Join(root, filepath.FromSlash(strings.Join(stack, "/")))
		fi, err := os.Lstat(p)
		if err != nil {
			return nil // dangling (or not a directory): resolution stops inside
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.IsDir() && len(todo) > 0 {
				return nil // ENOTDIR: stops inside
			}
			continue
		}
		hops++
		if hops > maxLinkHops {
			return unsafeEntry(rel, "symlink loop")
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if path.IsAbs(target) {
			return unsafeEntry(rel, fmt.Sprintf("symlink resolves through %q to absolute path %q", strings.Join(stack, "/"), target))
		}
		stack = stack[:len(stack)-1]
		todo = append(strings.Split(target, "/"), todo...)
	}
	return nil
}

// copyTree copies the local directory src into the empty directory dest
// through the same extractor as archives: never following a symlink in
// src (links are recreated, and must stay inside), refusing devices,
// FIFOs and sockets, counting entries and bytes.
func copyTree(ctx context.Context, src, dest string, lim limits, progress func(int64)) (sums, error) {
	x := newExtractor(ctx, dest, lim)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, rerr := filepath.Rel(src, p)
		if rerr != nil {
			return rerr
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		m := fi.Mode()
		switch {
		case m.IsDir():
			return x.dir(name+"/", m.Perm())
		case m&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return x.symlink(name, target)
		case m.IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := x.file(name, m.Perm(), f); err != nil {
				return err
			}
			if progress != nil {
				progress(x.bytes)
			}
			return nil
		default:
			return unsafeEntry(name, describeType(m))
		}
	})
	if err != nil {
		return nil, err
	}
	if x.files == 0 {
		return nil, reason(ErrBadArchive, "directory is empty")
	}
	return x.sums, nil
}
