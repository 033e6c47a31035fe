//go:build linux

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
// go-getter sees anything: the URL (scheme, host), its checksum, its
// archive kind, then a local file or directory.
func (s *Store) parseSource(raw string) (*source, error) {
	u, err := s.parseURL(raw)
	if err != nil {
		return nil, err
	}
	src := &source{scheme: strings.ToLower(u.Scheme)}
	q := u.Query()
	if src.checksum, err = s.checkChecksum(q.Get("checksum")); err != nil {
		return nil, err
	}
	if s.opts.RequireChecksum && !src.checksum && src.scheme != "file" {
		return nil, reason(ErrChecksumRequired, "checksum required: add ?checksum=sha256:<hex> to the URL")
	}
	src.base = path.Base(u.Path)
	if src.base == "/" || src.base == "." || src.base == "" {
		src.base = "artifact"
	}
	if src.kind, err = archiveKind(q.Get("archive"), u.Path); err != nil {
		return nil, err
	}
	// go-getter only downloads; we unpack. archive=false keeps its own
	// (limited) decompressors from ever running on this artifact.
	q.Set("archive", "false")
	if src.scheme == "file" {
		if err := localSource(u, src); err != nil {
			return nil, err
		}
		if src.isDir {
			return src, nil
		}
	}
	g := *u
	g.Scheme = src.scheme
	g.RawQuery = q.Encode()
	src.getterSrc = g.String()
	return src, nil
}

// parseURL parses raw (a URL, or an absolute local path) and checks its
// scheme and host against the allow-lists. Forced getters ("git::…") and
// subdirectory selection ("…//sub") are refused.
func (s *Store) parseURL(raw string) (*url.URL, error) {
	if prefix, _ := splitForced(raw); prefix != "" {
		return nil, reason(ErrSchemeNotAllowed, fmt.Sprintf("forced getter %q is not allowed", strings.TrimSuffix(prefix, "::")))
	}
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
	scheme := strings.ToLower(u.Scheme)
	if !supportedSchemes[scheme] {
		return nil, reason(ErrSchemeNotAllowed, fmt.Sprintf("scheme %q is not allowed (allowed: %s)", scheme, s.allowed()))
	}
	if err := s.checkScheme(scheme); err != nil {
		return nil, err
	}
	if scheme == "http" || scheme == "https" {
		if err := s.checkHost(u); err != nil {
			return nil, err
		}
	}
	if _, sub := getter.SourceDirSubdir(raw); sub != "" {
		return nil, fmt.Errorf("subdirectory selection (%q) is not supported", "//"+sub)
	}
	return u, nil
}

// checkChecksum reports whether the URL carries a checksum (cs, its
// ?checksum= value); a checksum file's URL must pass the allow-lists too.
func (s *Store) checkChecksum(cs string) (bool, error) {
	if cs == "" {
		return false, nil
	}
	rest, ok := strings.CutPrefix(cs, "file:")
	if !ok {
		return true, nil
	}
	cu, err := url.Parse(rest)
	if err != nil || cu.Scheme == "" {
		return true, fmt.Errorf("checksum file %q is not an absolute URL", RedactURL(rest))
	}
	if err := s.checkScheme(strings.ToLower(cu.Scheme)); err != nil {
		return true, fmt.Errorf("checksum file: %w", err)
	}
	if sc := strings.ToLower(cu.Scheme); sc == "http" || sc == "https" {
		if err := s.checkHost(cu); err != nil {
			return true, fmt.Errorf("checksum file: %w", err)
		}
	}
	return true, nil
}

// archiveKind is the archive type, by go-getter's rules: ?archive= (given
// as param) wins ("false" or "0": a plain file, ""), else the longest known
// extension of urlPath. An extension of an archive type not supported is
// refused rather than taken as a plain file.
func archiveKind(param, urlPath string) (string, error) {
	const have = "(have tar, tar.gz, tgz, tar.bz2, tbz2, tar.zst, tzst, zip)"
	switch {
	case param == "false" || param == "0":
		return "", nil
	case param != "":
		if archiveKinds[param] == "" {
			return "", fmt.Errorf("%w %q %s", ErrUnsupportedArchive, param, have)
		}
		return param, nil
	}
	best := ""
	for k := range archiveKinds {
		if strings.HasSuffix(urlPath, "."+k) && len(k) > len(best) {
			best = k
		}
	}
	foreign := ""
	for _, k := range foreignKinds {
		if strings.HasSuffix(urlPath, "."+k) && len(k) > len(foreign) {
			foreign = k
		}
	}
	if len(foreign) > len(best) {
		return "", fmt.Errorf("%w %q %s", ErrUnsupportedArchive, foreign, have)
	}
	return best, nil
}

// localSource fills src for a file: URL: the local path, and whether it is
// a directory (which cannot carry a checksum).
func localSource(u *url.URL, src *source) error {
	if u.Host != "" && u.Host != "localhost" {
		return fmt.Errorf("file URL with host %q", u.Host)
	}
	src.local = u.Path
	fi, err := os.Stat(src.local)
	if err != nil {
		return fmt.Errorf("local artifact: %w", err)
	}
	if fi.IsDir() {
		if src.checksum {
			return errors.New("a checksum cannot be verified for a directory")
		}
		src.isDir = true
	}
	return nil
}

// errFetchTimeout is the cause of a Fetch's own deadline (Options.Timeout),
// told apart from the caller's.
var errFetchTimeout = errors.New("fetch timeout")

// fetchRun is what the steps of one Fetch share.
type fetchRun struct {
	s       *Store
	req     FetchRequest
	id      string
	subject string   // the redacted URL
	secrets []string // what redaction removed, scrubbed from errors too
	src     *source
	exists  bool // releases/<id> exists (req.Force): compare, do not install
}

// fail wraps err in *Error, with the URL's secrets scrubbed from it.
func (f *fetchRun) fail(op, subj string, err error) error {
	if len(f.secrets) > 0 {
		if m := scrub(err.Error(), f.secrets); m != err.Error() {
			err = &reasonError{msg: m, err: err}
		}
	}
	return &Error{Op: op, Subject: subj, Err: err}
}

// timedOut is ErrTimeout when ctx ended by the fetch's own deadline, err
// otherwise.
func (f *fetchRun) timedOut(ctx context.Context, err error) error {
	if errors.Is(context.Cause(ctx), errFetchTimeout) {
		return reason(ErrTimeout, fmt.Sprintf("timed out after %s", f.s.opts.Timeout))
	}
	return err
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
	f := &fetchRun{s: s, req: req}
	f.subject, f.secrets = redactURL(req.URL)
	if err := f.prepare(); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, s.opts.Timeout, errFetchTimeout)
	defer cancel()
	staging, err := os.MkdirTemp(filepath.Join(s.root, releasesDir, incomingDir), f.id+"-")
	if err != nil {
		return "", f.fail("fetch", f.subject, err)
	}
	defer os.RemoveAll(staging)
	tree := filepath.Join(staging, "tree")
	stats, err := f.stage(ctx, staging, tree)
	if err != nil {
		return "", err
	}
	if f.exists {
		return f.compare(stats.digest)
	}
	if err := f.install(tree, stats.digest); err != nil {
		return "", err
	}
	s.log.Info("Fetched release", "id", f.id, "url", f.subject, "files", stats.files, "bytes", stats.bytes, "duration", time.Since(start).Round(time.Millisecond))
	return f.id, nil
}

// prepare checks the id (generating one when empty), whether it exists,
// and the source.
func (f *fetchRun) prepare() error {
	f.id = f.req.ID
	if f.id == "" {
		f.id = NewID()
	} else if err := ValidateID(f.id); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	exists, err := f.s.exists(f.id)
	if err != nil {
		return f.fail("fetch", f.subject, err)
	}
	if exists && !f.req.Force {
		return f.fail("fetch", f.subject, fmt.Errorf("%w: releases/%s", ErrExists, f.id))
	}
	f.exists = exists
	if f.src, err = f.s.parseSource(f.req.URL); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	return nil
}

// stage makes the release's tree at tree, from staging: a copy of a local
// directory, or the download (unpacked unless a plain file); then verifies
// it and returns its stats.
func (f *fetchRun) stage(ctx context.Context, staging, tree string) (treeStats, error) {
	lim := limits{maxBytes: f.s.opts.MaxBytes, maxFiles: f.s.opts.MaxFiles}
	op, subj := "unpack", f.src.base
	var known sums
	var err error
	if f.src.isDir {
		op, subj = "copy", f.src.local
		known, err = f.copyLocal(ctx, tree, lim)
	} else {
		known, err = f.downloadAndUnpack(ctx, staging, tree, lim)
	}
	if err != nil {
		return treeStats{}, err
	}
	stats, err := verifyTree(ctx, tree, lim, known)
	if err != nil {
		return stats, f.fail(op, subj, f.timedOut(ctx, err))
	}
	return stats, nil
}

// copyLocal copies the local directory source into tree.
func (f *fetchRun) copyLocal(ctx context.Context, tree string, lim limits) (sums, error) {
	if err := os.Mkdir(tree, 0o755); err != nil {
		return nil, f.fail("copy", f.src.local, err)
	}
	var progress func(int64)
	if f.req.Progress != nil {
		progress = func(done int64) { f.req.Progress(done, -1) }
	}
	known, err := copyTree(ctx, f.src.local, tree, lim, progress)
	if err != nil {
		return nil, f.fail("copy", f.src.local, f.timedOut(ctx, err))
	}
	return known, nil
}

// downloadAndUnpack downloads the artifact into staging, then unpacks it
// into tree, or moves it there as it is when it is no archive.
func (f *fetchRun) downloadAndUnpack(ctx context.Context, staging, tree string, lim limits) (sums, error) {
	archive, err := f.s.download(ctx, f.src, staging, f.req.Progress)
	if err != nil {
		return nil, f.fail("fetch", f.subject, f.timedOut(ctx, err))
	}
	if err := os.Mkdir(tree, 0o755); err != nil {
		return nil, f.fail("fetch", f.subject, err)
	}
	if f.src.kind == "" {
		if err := os.Rename(archive, filepath.Join(tree, f.src.base)); err != nil {
			return nil, f.fail("fetch", f.subject, err)
		}
		return nil, nil
	}
	known, err := unpackFile(ctx, f.src.kind, archive, tree, lim)
	if err != nil {
		return nil, f.fail("unpack", f.src.base, f.timedOut(ctx, err))
	}
	_ = os.Remove(archive)
	return known, nil
}

// compare ends a forced fetch of an existing id: identical content is a
// success that changes nothing, anything else ErrExists.
func (f *fetchRun) compare(digest string) (string, error) {
	old, err := os.ReadFile(f.s.digestPath(f.id))
	switch {
	case err != nil:
		return "", f.fail("fetch", f.subject, fmt.Errorf("%w: releases/%s (its content digest is unknown, cannot compare)", ErrExists, f.id))
	case strings.TrimSpace(string(old)) != digest:
		return "", f.fail("fetch", f.subject, fmt.Errorf("%w: releases/%s with different content", ErrExists, f.id))
	}
	f.s.log.Info("Release exists with identical content", "id", f.id)
	return f.id, nil
}

// install moves the verified tree to releases/<id>, durably: synced, its
// digest written first, then renamed.
func (f *fetchRun) install(tree, digest string) error {
	s, id := f.s, f.id
	now := time.Now()
	if err := os.Chtimes(tree, now, now); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	if err := syncFS(tree); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	// The digest goes first: a crash before the rename leaves an orphan
	// digest, which Open removes; after it, the release has its digest.
	if err := writeFileAtomic(s.digestPath(id), []byte(digest+"\n"), "digest"); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	step("rename")
	if err := os.Rename(tree, s.Dir(id)); err != nil {
		_ = os.Remove(s.digestPath(id))
		if errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return f.fail("fetch", f.subject, fmt.Errorf("%w: releases/%s", ErrExists, id))
		}
		return f.fail("fetch", f.subject, err)
	}
	step("renamed")
	if err := syncDir(filepath.Join(s.root, releasesDir)); err != nil {
		return f.fail("fetch", f.subject, err)
	}
	return nil
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
