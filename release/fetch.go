package release

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	getter "github.com/hashicorp/go-getter/v2"
)

// Progress reports download progress: bytes done so far and the total,
// -1 when unknown. It is called from the goroutine running Fetch.
type Progress func(done, total int64)

// FetchRequest says what to fetch and under which id.
type FetchRequest struct {
	// URL of the artifact: http(s)://… or file:///… archive, or a local
	// directory or archive by absolute path. ?checksum=sha256:… (or
	// md5/sha1/sha512, or file:<url of a checksum file>) is verified;
	// ?archive=tgz forces the archive type, ?archive=false takes the file
	// as it is.
	URL string
	// ID names the release; "" generates one with NewID.
	ID string
	// Progress, if set, gets the download progress.
	Progress Progress
	// Force: if releases/<ID> already exists, fetch anyway and succeed,
	// changing nothing, when the content is identical (same tree digest);
	// ErrExists otherwise. Without Force an existing id is ErrExists at once.
	Force bool
}

// source is a parsed, allowed artifact URL.
type source struct {
	scheme    string // "http", "https", "file"
	local     string // file: the local path
	isDir     bool   // file: a directory
	kind      string // key of archiveKinds, or "" for a plain file
	getterSrc string // what go-getter gets (file or http URL, archive=false)
	base      string // file name of the artifact
	checksum  bool
}

func (s *Store) allowed() string {
	var a []string
	for k := range s.allow {
		a = append(a, k)
	}
	sort.Strings(a)
	return strings.Join(a, ", ")
}

// checkHost applies Options.AllowHosts to an http(s) URL.
func (s *Store) checkHost(u *url.URL) error {
	if len(s.opts.AllowHosts) == 0 {
		return nil
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	for _, h := range s.opts.AllowHosts {
		h = strings.ToLower(h)
		if suffix, ok := strings.CutPrefix(h, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return nil
			}
		} else if host == h {
			return nil
		}
	}
	return reason(ErrHostNotAllowed, fmt.Sprintf("host %q is not allowed (allowed: %s)", host, strings.Join(s.opts.AllowHosts, ", ")))
}

func (s *Store) checkScheme(scheme string) error {
	if !s.allow[scheme] {
		return reason(ErrSchemeNotAllowed, fmt.Sprintf("scheme %q is not allowed (allowed: %s)", scheme, s.allowed()))
	}
	return nil
}

// parseSource applies the scheme allow-list and the checksum policy before
// go-getter sees anything.
func (s *Store) parseSource(raw string) (*source, error) {
	if prefix, _ := splitForced(raw); prefix != "" {
		return nil, reason(ErrSchemeNotAllowed, fmt.Sprintf("forced getter %q is not allowed", strings.TrimSuffix(prefix, "::")))
	}
	src := &source{}
	var u *url.URL
	if !strings.Contains(raw, "://") && !strings.HasPrefix(raw, "file:") {
		if !filepath.IsAbs(raw) {
			return nil, fmt.Errorf("local path %q is not absolute", raw)
		}
		u = &url.URL{Scheme: "file", Path: filepath.Clean(raw)}
	} else {
		var err error
		u, err = url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("invalid URL: %v", errors.Unwrap(err))
		}
	}
	src.scheme = strings.ToLower(u.Scheme)
	if !supportedSchemes[src.scheme] {
		return nil, reason(ErrSchemeNotAllowed, fmt.Sprintf("scheme %q is not allowed (allowed: %s)", src.scheme, s.allowed()))
	}
	if err := s.checkScheme(src.scheme); err != nil {
		return nil, err
	}
	if src.scheme == "http" || src.scheme == "https" {
		if err := s.checkHost(u); err != nil {
			return nil, err
		}
	}
	if _, sub := getter.SourceDirSubdir(raw); sub != "" {
		return nil, fmt.Errorf("subdirectory selection (%q) is not supported", "//"+sub)
	}
	q := u.Query()
	if cs := q.Get("checksum"); cs != "" {
		src.checksum = true
		if rest, ok := strings.CutPrefix(cs, "file:"); ok {
			cu, err := url.Parse(rest)
			if err != nil || cu.Scheme == "" {
				return nil, fmt.Errorf("checksum file %q is not an absolute URL", RedactURL(rest))
			}
			if err := s.checkScheme(strings.ToLower(cu.Scheme)); err != nil {
				return nil, fmt.Errorf("checksum file: %w", err)
			}
			if sc := strings.ToLower(cu.Scheme); sc == "http" || sc == "https" {
				if err := s.checkHost(cu); err != nil {
					return nil, fmt.Errorf("checksum file: %w", err)
				}
			}
		}
	}
	if s.opts.RequireChecksum && !src.checksum && src.scheme != "file" {
		return nil, reason(ErrChecksumRequired, "checksum required: add ?checksum=sha256:<hex> to the URL")
	}
	src.base = path.Base(u.Path)
	if src.base == "/" || src.base == "." || src.base == "" {
		src.base = "artifact"
	}
	// The archive type, by go-getter's rules: archive= wins, else the
	// longest known extension.
	switch a := q.Get("archive"); {
	case a == "false" || a == "0":
		src.kind = ""
	case a != "":
		if archiveKinds[a] == "" {
			return nil, fmt.Errorf("%w %q (have tar, tar.gz, tgz, tar.bz2, tbz2, tar.zst, tzst, zip)", ErrUnsupportedArchive, a)
		}
		src.kind = a
	default:
		best := ""
		for k := range archiveKinds {
			if strings.HasSuffix(u.Path, "."+k) && len(k) > len(best) {
				best = k
			}
		}
		foreign := ""
		for _, k := range foreignKinds {
			if strings.HasSuffix(u.Path, "."+k) && len(k) > len(foreign) {
				foreign = k
			}
		}
		if len(foreign) > len(best) {
			return nil, fmt.Errorf("%w %q (have tar, tar.gz, tgz, tar.bz2, tbz2, tar.zst, tzst, zip)", ErrUnsupportedArchive, foreign)
		}
		src.kind = best
	}
	q.Del("archive")
	// go-getter only downloads; we unpack. archive=false keeps its own
	// (limited) decompressors from ever running on this artifact.
	q.Set("archive", "false")
	if src.scheme == "file" {
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("file URL with host %q", u.Host)
		}
		src.local = u.Path
		fi, err := os.Stat(src.local)
		if err != nil {
			return nil, fmt.Errorf("local artifact: %w", err)
		}
		if fi.IsDir() {
			if src.checksum {
				return nil, errors.New("a checksum cannot be verified for a directory")
			}
			src.isDir = true
			return src, nil
		}
	}
	g := *u
	g.Scheme = src.scheme
	g.RawQuery = q.Encode()
	src.getterSrc = g.String()
	return src, nil
}

// Fetch downloads req.URL into releases/.incoming/<tmp>, verifies its
// checksum, unpacks it safely (see the package doc), checks the staged
// tree again, and renames it to releases/<id>. It returns the id.
//
// Errors: ErrInvalidID, ErrExists, ErrSchemeNotAllowed, ErrChecksumRequired,
// ErrChecksumMismatch, ErrUnsafeArchive and ErrTooLarge (with the entry
// and the reason), ErrBadArchive, ErrUnsupportedArchive, ErrTimeout; all
// wrapped in *Error with the redacted URL or the archive name. On every
// error, nothing is left in the root outside .agent/, and
// releases/.incoming/ holds nothing of this fetch.
func (s *Store) Fetch(ctx context.Context, req FetchRequest) (string, error) {
	start := time.Now()
	subject, secrets := redactURL(req.URL)
	fail := func(op, subj string, err error) error {
		if len(secrets) > 0 {
			if m := scrub(err.Error(), secrets); m != err.Error() {
				err = &reasonError{msg: m, err: err}
			}
		}
		return &Error{Op: op, Subject: subj, Err: err}
	}
	id := req.ID
	if id == "" {
		id = NewID()
	} else if err := ValidateID(id); err != nil {
		return "", fail("fetch", subject, err)
	}
	exists, err := s.exists(id)
	if err != nil {
		return "", fail("fetch", subject, err)
	}
	if exists && !req.Force {
		return "", fail("fetch", subject, fmt.Errorf("%w: releases/%s", ErrExists, id))
	}
	src, err := s.parseSource(req.URL)
	if err != nil {
		return "", fail("fetch", subject, err)
	}

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	timedOut := func(err error) error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil {
			return reason(ErrTimeout, fmt.Sprintf("timed out after %s", s.opts.Timeout))
		}
		return err
	}

	staging, err := os.MkdirTemp(filepath.Join(s.root, releasesDir, incomingDir), id+"-")
	if err != nil {
		return "", fail("fetch", subject, err)
	}
	defer os.RemoveAll(staging)
	tree := filepath.Join(staging, "tree")
	lim := limits{maxBytes: s.opts.MaxBytes, maxFiles: s.opts.MaxFiles}
	var known sums

	if src.isDir {
		if err := os.Mkdir(tree, 0o755); err != nil {
			return "", fail("copy", src.local, err)
		}
		var progress func(int64)
		if req.Progress != nil {
			progress = func(done int64) { req.Progress(done, -1) }
		}
		if known, err = copyTree(ctx, src.local, tree, lim, progress); err != nil {
			return "", fail("copy", src.local, timedOut(err))
		}
	} else {
		archive, err := s.download(ctx, src, staging, req.Progress)
		if err != nil {
			return "", fail("fetch", subject, timedOut(err))
		}
		if err := os.Mkdir(tree, 0o755); err != nil {
			return "", fail("fetch", subject, err)
		}
		if src.kind == "" {
			if err := os.Rename(archive, filepath.Join(tree, src.base)); err != nil {
				return "", fail("fetch", subject, err)
			}
		} else {
			if known, err = unpackFile(ctx, src.kind, archive, tree, lim); err != nil {
				return "", fail("unpack", src.base, timedOut(err))
			}
			_ = os.Remove(archive)
		}
	}
	op, opSubject := "unpack", src.base
	if src.isDir {
		op, opSubject = "copy", src.local
	}
	stats, err := verifyTree(ctx, tree, lim, known)
	if err != nil {
		return "", fail(op, opSubject, timedOut(err))
	}
	digest := stats.digest
	if exists {
		old, err := os.ReadFile(s.digestPath(id))
		switch {
		case err != nil:
			return "", fail("fetch", subject, fmt.Errorf("%w: releases/%s (its content digest is unknown, cannot compare)", ErrExists, id))
		case strings.TrimSpace(string(old)) != digest:
			return "", fail("fetch", subject, fmt.Errorf("%w: releases/%s with different content", ErrExists, id))
		}
		s.log.Info("Release exists with identical content", "id", id)
		return id, nil
	}
	now := time.Now()
	if err := os.Chtimes(tree, now, now); err != nil {
		return "", fail("fetch", subject, err)
	}
	if err := syncFS(tree); err != nil {
		return "", fail("fetch", subject, err)
	}
	// The digest goes first: a crash before the rename leaves an orphan
	// digest, which Open removes; after it, the release has its digest.
	if err := writeFileAtomic(s.digestPath(id), []byte(digest+"\n"), "digest"); err != nil {
		return "", fail("fetch", subject, err)
	}
	step("rename")
	if err := os.Rename(tree, s.Dir(id)); err != nil {
		_ = os.Remove(s.digestPath(id))
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return "", fail("fetch", subject, fmt.Errorf("%w: releases/%s", ErrExists, id))
		}
		return "", fail("fetch", subject, err)
	}
	step("renamed")
	if err := syncDir(filepath.Join(s.root, releasesDir)); err != nil {
		return "", fail("fetch", subject, err)
	}
	s.log.Info("Fetched release", "id", id, "url", subject, "files", stats.files, "bytes", stats.bytes, "duration", time.Since(start).Round(time.Millisecond))
	return id, nil
}

func (s *Store) digestPath(id string) string {
	return filepath.Join(s.root, agentDir, digestsDir, id)
}

// downloadLimit bounds the artifact itself: an archive carries per-entry
// headers on top of the content.
func (s *Store) downloadLimit() int64 {
	return s.opts.MaxBytes + int64(s.opts.MaxFiles)*2048 + 1<<20
}

// download fetches src with an explicit go-getter client into
// staging/download/<base> and returns that path.
func (s *Store) download(ctx context.Context, src *source, staging string, progress Progress) (string, error) {
	dir := filepath.Join(staging, "download")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, src.base)
	limit := s.downloadLimit()
	if src.scheme == "file" {
		fi, err := os.Stat(src.local)
		if err != nil {
			return "", err
		}
		if fi.Size() > limit {
			return "", reason(ErrTooLarge, fmt.Sprintf("artifact is %d bytes, more than the %d allowed", fi.Size(), limit))
		}
	}
	tr := &tracker{progress: progress, limit: limit}
	client := &getter.Client{
		Getters: []getter.Getter{
			&getter.HttpGetter{
				Client:                s.httpClient(),
				XTerraformGetDisabled: true,
				DoNotCheckHeadFirst:   true,
				MaxBytes:              limit,
			},
			&getter.FileGetter{},
		},
		Decompressors:   getter.LimitedDecompressors(s.opts.MaxFiles, s.opts.MaxBytes),
		DisableSymlinks: true,
	}
	_, err := client.Get(ctx, &getter.Request{
		Src:              src.getterSrc,
		Dst:              dst,
		GetMode:          getter.ModeFile,
		Copy:             true,
		DisableSymlinks:  true,
		ProgressListener: tr,
	})
	if err != nil {
		return "", classifyGetterError(err, tr)
	}
	fi, err := os.Lstat(dst)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("download is a %s, not a regular file", fi.Mode().Type())
	}
	if fi.Size() > limit {
		return "", reason(ErrTooLarge, fmt.Sprintf("artifact is %d bytes, more than the %d allowed", fi.Size(), limit))
	}
	if src.scheme == "file" && progress != nil {
		progress(fi.Size(), fi.Size())
	} else if progress != nil {
		tr.final()
	}
	return dst, nil
}

func classifyGetterError(err error, tr *tracker) error {
	var ce *getter.ChecksumError
	if errors.As(err, &ce) {
		algo := map[int]string{16: "md5", 20: "sha1", 32: "sha256", 64: "sha512"}[len(ce.Expected)]
		return reason(ErrChecksumMismatch, fmt.Sprintf("checksum mismatch: want %s:%s, got %s:%s",
			algo, hex.EncodeToString(ce.Expected), algo, hex.EncodeToString(ce.Actual)))
	}
	if tr.err != nil {
		return tr.err
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // drop `Get "url":`: the subject already names it
	}
	if code, ok := strings.CutPrefix(err.Error(), "bad response code: "); ok {
		return fmt.Errorf("server answered HTTP %s", code)
	}
	return err
}

func (s *Store) httpClient() *http.Client {
	c := &http.Client{}
	if s.opts.HTTPClient != nil {
		*c = *s.opts.HTTPClient
	} else {
		c.Transport = defaultTransport
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		// A server may redirect between allowed http(s) schemes, never to
		// a local file or another getter.
		if sc := strings.ToLower(req.URL.Scheme); sc != "http" && sc != "https" || !s.allow[sc] {
			return reason(ErrSchemeNotAllowed, fmt.Sprintf("redirect to %s: scheme %q is not allowed (allowed: %s)", RedactURL(req.URL.String()), sc, s.allowed()))
		}
		if err := s.checkHost(req.URL); err != nil {
			return fmt.Errorf("redirect to %s: %w", RedactURL(req.URL.String()), err)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return c
}

var defaultTransport = http.DefaultTransport.(*http.Transport).Clone()

// tracker is go-getter's ProgressListener: it reports progress, enforces
// the download limit (go-getter drops its own MaxBytes limit when a
// listener is set), and marks the "fetch" crash-test step.
type tracker struct {
	progress    Progress
	limit       int64
	done, total int64
	last        int64
	reads       int
	err         error
}

func (t *tracker) TrackProgress(_ string, current, total int64, stream io.ReadCloser) io.ReadCloser {
	t.done, t.total = current, total
	if total > t.limit {
		t.err = reason(ErrTooLarge, fmt.Sprintf("download is %d bytes, more than the %d allowed", total, t.limit))
		stream.Close()
		return &trackedBody{t: t, rc: errBody{t.err}}
	}
	if t.progress != nil {
		t.progress(t.done, t.total)
	}
	return &trackedBody{t: t, rc: stream}
}

func (t *tracker) final() {
	if t.progress != nil && t.last != t.done {
		t.last = t.done
		t.progress(t.done, t.total)
	}
}

type trackedBody struct {
	t  *tracker
	rc io.ReadCloser
}

func (b *trackedBody) Read(p []byte) (int, error) {
	t := b.t
	n, err := b.rc.Read(p)
	t.done += int64(n)
	if t.done > t.limit {
		t.err = reason(ErrTooLarge, fmt.Sprintf("download exceeds %d bytes", t.limit))
		return 0, t.err
	}
	t.reads++
	if t.reads == 2 && t.done > 0 {
		step("fetch")
	}
	if t.progress != nil && (t.done-t.last >= 256<<10 || err == io.EOF) {
		t.last = t.done
		t.progress(t.done, t.total)
	}
	return n, err
}

func (b *trackedBody) Close() error { return b.rc.Close() }

// errBody fails every read: the download is refused before it starts.
type errBody struct{ err error }

func (e errBody) Read([]byte) (int, error) { return 0, e.err }
func (e errBody) Close() error             { return nil }
