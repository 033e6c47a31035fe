//go:build linux

package release

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ErrBadArchive is wrapped when an archive cannot be read: truncated,
// corrupt, empty, or not the format its name says.
var ErrBadArchive = errors.New("bad archive")

// archiveKinds maps the archive types we unpack ourselves to their format.
var archiveKinds = map[string]string{
	"tar":     "tar",
	"tar.gz":  "tar.gz",
	"tgz":     "tar.gz",
	"tar.bz2": "tar.bz2",
	"tbz2":    "tar.bz2",
	"tar.zst": "tar.zst",
	"tzst":    "tar.zst",
	"zip":     "zip",
}

// foreignKinds are types go-getter would decompress that we refuse rather
// than unpack unchecked.
var foreignKinds = []string{"gz", "bz2", "xz", "zst", "tar.xz", "txz"}

const (
	maxSymlinkTarget = 4096
	maxTrailing      = 1 << 20 // data tolerated after a tar's end blocks
	zstdMaxWindow    = 128 << 20
)

type limits struct {
	maxBytes int64
	maxFiles int
}

type entryKind int

const (
	kindDir entryKind = iota + 1
	kindFile
	kindSymlink
)

// extractor writes entries under dest, which it never leaves: names are
// checked lexically, every parent directory is one it created itself (so
// no write goes through a symlink), files are created O_EXCL|O_NOFOLLOW,
// and bytes are counted as they are written.
type extractor struct {
	ctx     context.Context
	dest    string
	lim     limits
	files   int
	bytes   int64
	entries map[string]entryKind
	sums    map[string]string // sha256 of each regular file as written
	written int               // regular files, for the crash-test step
}

func newExtractor(ctx context.Context, dest string, lim limits) *extractor {
	return &extractor{ctx: ctx, dest: dest, lim: lim, entries: map[string]entryKind{}, sums: map[string]string{}}
}

// clean turns an archive name into a relative slash path inside the
// release, or "" for the release root itself ("./").
func clean(name string) (string, error) {
	if name == "" {
		return "", unsafeEntry(name, "empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", unsafeEntry(name, "name contains a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", unsafeEntry(name, "absolute path")
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return "", unsafeEntry(name, "path escapes the release")
		}
		parts = append(parts, c)
	}
	return strings.Join(parts, "/"), nil
}

func (x *extractor) count(name string) error {
	if err := x.ctx.Err(); err != nil {
		return err
	}
	x.files++
	if x.files > x.lim.maxFiles {
		return &EntryError{Entry: name, Reason: fmt.Sprintf("more than %d entries", x.lim.maxFiles), Err: ErrTooLarge}
	}
	return nil
}

// prepare checks rel's parents (creating missing ones) and that rel itself
// is new. A repeated directory is allowed; any other repeat is refused.
func (x *extractor) prepare(name, rel string, kind entryKind) (exists bool, err error) {
	if rel == "" {
		if kind == kindDir {
			return true, nil
		}
		return false, unsafeEntry(name, "names the release root")
	}
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		p := strings.Join(parts[:i], "/")
		switch x.entries[p] {
		case kindDir:
			continue
		case kindSymlink:
			return false, unsafeEntry(name, fmt.Sprintf("parent %q is a symlink", p))
		case kindFile:
			return false, unsafeEntry(name, fmt.Sprintf("parent %q is a file", p))
		}
		if err := x.count(p + "/"); err != nil {
			return false, err
		}
		if err := os.Mkdir(filepath.Join(x.dest, filepath.FromSlash(p)), 0o755); err != nil {
			return false, err
		}
		x.entries[p] = kindDir
	}
	switch prev := x.entries[rel]; {
	case prev == 0:
		return false, nil
	case prev == kindDir && kind == kindDir:
		return true, nil
	default:
		return false, unsafeEntry(name, "duplicate entry")
	}
}

func (x *extractor) dir(name string, mode fs.FileMode) error {
	rel, err := clean(name)
	if err != nil {
		return err
	}
	exists, err := x.prepare(name, rel, kindDir)
	if err != nil || exists {
		return err
	}
	if err := x.count(name); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(x.dest, filepath.FromSlash(rel)), mode.Perm()|0o700); err != nil {
		return err
	}
	x.entries[rel] = kindDir
	return nil
}

func (x *extractor) file(name string, mode fs.FileMode, r io.Reader) error {
	rel, err := clean(name)
	if err != nil {
		return err
	}
	if _, err := x.prepare(name, rel, kindFile); err != nil {
		return err
	}
	if err := x.count(name); err != nil {
		return err
	}
	p := filepath.Join(x.dest, filepath.FromSlash(rel))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode.Perm()|0o600)
	if err != nil {
		return err
	}
	x.entries[rel] = kindFile
	h := sha256.New()
	_, err = io.Copy(f, io.TeeReader(&countingReader{x: x, name: name, r: r}, h))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	x.sums[rel] = hex.EncodeToString(h.Sum(nil))
	x.written++
	if x.written == 2 {
		step("unpack")
	}
	return nil
}

// countingReader counts bytes as they are read for writing, and fails the
// moment the release would exceed maxBytes, whatever the headers said.
type countingReader struct {
	x    *extractor
	name string
	r    io.Reader
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.x.ctx.Err(); err != nil {
		return 0, err
	}
	if room := c.x.lim.maxBytes - c.x.bytes + 1; int64(len(p)) > room {
		p = p[:room] // read one byte past the limit at most, to detect it
	}
	n, err := c.r.Read(p)
	c.x.bytes += int64(n)
	if c.x.bytes > c.x.lim.maxBytes {
		return 0, &EntryError{Entry: c.name, Reason: fmt.Sprintf("release exceeds %d bytes unpacked", c.x.lim.maxBytes), Err: ErrTooLarge}
	}
	return n, err
}

// symlink creates a symlink whose target stays inside the release
// lexically. Chains through other symlinks are checked after extraction by
// verifyTree, which resolves every link for real.
func (x *extractor) symlink(name, target string) error {
	rel, err := clean(name)
	if err != nil {
		return err
	}
	if err := checkLinkTarget(name, rel, target); err != nil {
		return err
	}
	if _, err := x.prepare(name, rel, kindSymlink); err != nil {
		return err
	}
	if err := x.count(name); err != nil {
		return err
	}
	if err := os.Symlink(target, filepath.Join(x.dest, filepath.FromSlash(rel))); err != nil {
		return err
	}
	x.entries[rel] = kindSymlink
	return nil
}

func checkLinkTarget(name, rel, target string) error {
	switch {
	case target == "":
		return unsafeEntry(name, "symlink with an empty target")
	case strings.ContainsRune(target, 0):
		return unsafeEntry(name, "symlink target contains a NUL byte")
	case path.IsAbs(target):
		return unsafeEntry(name, fmt.Sprintf("symlink to absolute path %q", target))
	}
	if j := path.Join(path.Dir(rel), target); j == ".." || strings.HasPrefix(j, "../") {
		return unsafeEntry(name, fmt.Sprintf("symlink to %q escapes the release", target))
	}
	return nil
}

// hardlink links name to an earlier regular file of the same archive.
func (x *extractor) hardlink(name, target string) error {
	rel, err := clean(name)
	if err != nil {
		return err
	}
	trel, err := clean(target)
	if err != nil || trel == "" {
		return unsafeEntry(name, fmt.Sprintf("hard link to %q escapes the release", target))
	}
	if x.entries[trel] != kindFile {
		return unsafeEntry(name, fmt.Sprintf("hard link to %q, which is not an earlier regular file of the archive", target))
	}
	if _, err := x.prepare(name, rel, kindFile); err != nil {
		return err
	}
	if err := x.count(name); err != nil {
		return err
	}
	src := filepath.Join(x.dest, filepath.FromSlash(trel))
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	x.bytes += fi.Size()
	if x.bytes > x.lim.maxBytes {
		return &EntryError{Entry: name, Reason: fmt.Sprintf("release exceeds %d bytes unpacked", x.lim.maxBytes), Err: ErrTooLarge}
	}
	if err := os.Link(src, filepath.Join(x.dest, filepath.FromSlash(rel))); err != nil {
		return err
	}
	x.entries[rel] = kindFile
	x.sums[rel] = x.sums[trel]
	return nil
}

func (x *extractor) empty() error {
	if x.files == 0 {
		return reason(ErrBadArchive, "archive is empty")
	}
	return nil
}

// badArchive classifies a read error of the archive format itself.
func badArchive(err error) error {
	var (
		ee *EntryError
		re *reasonError
		pe *fs.PathError
		le *os.LinkError
	)
	if errors.As(err, &ee) || errors.As(err, &re) || errors.As(err, &pe) || errors.As(err, &le) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err // ours, or a filesystem failure of the staging side
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return reason(ErrBadArchive, "truncated archive (unexpected end of data)")
	}
	return reason(ErrBadArchive, "corrupt archive: "+err.Error())
}

// sums maps a regular file's slash path in the release to the sha256 of
// what was written, so verifyTree need not read it back.
type sums map[string]string

// unpackFile unpacks the archive at src, of type kind (a key of
// archiveKinds), into the existing empty directory dest.
func unpackFile(ctx context.Context, kind, src, dest string, lim limits) (sums, error) {
	f, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() == 0 {
		return nil, reason(ErrBadArchive, "archive file is empty (0 bytes)")
	}
	if archiveKinds[kind] == "zip" {
		return unpackZip(ctx, f, fi.Size(), dest, lim)
	}
	return unpackTarStream(ctx, archiveKinds[kind], bufio.NewReaderSize(f, 1<<16), dest, lim)
}

// unpackTarStream unpacks a tar stream compressed as format says.
func unpackTarStream(ctx context.Context, format string, r io.Reader, dest string, lim limits) (sums, error) {
	switch format {
	case "tar":
	case "tar.gz":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, badArchive(err)
		}
		defer zr.Close()
		r = zr
	case "tar.bz2":
		r = bzip2.NewReader(r)
	case "tar.zst":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(zstdMaxWindow))
		if err != nil {
			return nil, badArchive(err)
		}
		defer zr.Close()
		r = zr
	default:
		return nil, fmt.Errorf("%w %q", ErrUnsupportedArchive, format)
	}
	return unpackTar(ctx, r, dest, lim)
}

func unpackTar(ctx context.Context, r io.Reader, dest string, lim limits) (sums, error) {
	x := newExtractor(ctx, dest, lim)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return nil, badArchive(err)
		}
		if err := x.tarEntry(h, tr); err != nil {
			return nil, badArchive(err)
		}
	}
	if err := x.empty(); err != nil {
		return nil, err
	}
	// Read what follows the end blocks, so a truncated or corrupt
	// compression trailer is noticed; a little padding is normal.
	n, err := io.Copy(io.Discard, io.LimitReader(r, maxTrailing+1))
	if err != nil {
		return nil, badArchive(err)
	}
	if n > maxTrailing {
		return nil, reason(ErrBadArchive, "more than 1 MiB of data after the end of the tar archive")
	}
	return x.sums, nil
}

func (x *extractor) tarEntry(h *tar.Header, r io.Reader) error {
	mode := fs.FileMode(h.Mode).Perm()
	switch h.Typeflag {
	case tar.TypeDir:
		return x.dir(h.Name, mode)
	case tar.TypeReg, '\x00':
		return x.file(h.Name, mode, r)
	case tar.TypeSymlink:
		return x.symlink(h.Name, h.Linkname)
	case tar.TypeLink:
		return x.hardlink(h.Name, h.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return unsafeEntry(h.Name, "device file")
	case tar.TypeFifo:
		return unsafeEntry(h.Name, "FIFO")
	default:
		return unsafeEntry(h.Name, fmt.Sprintf("unsupported entry type %q", h.Typeflag))
	}
}

func unpackZip(ctx context.Context, ra io.ReaderAt, size int64, dest string, lim limits) (sums, error) {
	zr, err := zip.NewReader(ra, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return nil, badArchive(err)
	}
	if len(zr.File) > lim.maxFiles {
		return nil, &EntryError{Entry: zr.File[lim.maxFiles].Name, Reason: fmt.Sprintf("more than %d entries", lim.maxFiles), Err: ErrTooLarge}
	}
	x := newExtractor(ctx, dest, lim)
	for _, f := range zr.File {
		if err := x.zipEntry(f); err != nil {
			return nil, badArchive(err)
		}
	}
	return x.sums, x.empty()
}

func (x *extractor) zipEntry(f *zip.File) error {
	m := f.Mode()
	switch {
	case m&fs.ModeSymlink != 0:
		rc, err := f.Open()
		if err != nil {
			return err
		}
		defer rc.Close()
		b, err := io.ReadAll(io.LimitReader(rc, maxSymlinkTarget+1))
		if err != nil {
			return err
		}
		if len(b) > maxSymlinkTarget {
			return unsafeEntry(f.Name, "symlink target too long")
		}
		return x.symlink(f.Name, string(b))
	case m.IsDir() || strings.HasSuffix(f.Name, "/"):
		return x.dir(f.Name, m.Perm())
	case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
		return unsafeEntry(f.Name, "device file")
	case m&fs.ModeNamedPipe != 0:
		return unsafeEntry(f.Name, "FIFO")
	case m&fs.ModeSocket != 0:
		return unsafeEntry(f.Name, "socket")
	case !m.IsRegular():
		return unsafeEntry(f.Name, "unsupported entry type "+m.Type().String())
	}
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	perm := m.Perm()
	if perm == 0 { // zips made on Windows carry no Unix mode
		perm = 0o644
	}
	return x.file(f.Name, perm, rc)
}
