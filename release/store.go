//go:build linux

package release

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for the zero values of Options.
const (
	DefaultMaxBytes int64 = 2 << 30 // 2 GiB unpacked
	DefaultMaxFiles       = 200000
	DefaultTimeout        = 10 * time.Minute
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// Allow lists the accepted URL schemes: "https", "http", "file". A plain
	// local path counts as "file". Nil means all three. A scheme this build
	// cannot fetch (e.g. "s3") makes Open fail.
	Allow []string
	// AllowHosts, when not empty, lists the hosts an http(s) artifact, its
	// checksum file and every redirect may come from: a host name or IP
	// ("ci.example.com", "127.0.0.1"), or "*.example.com" for any name below
	// example.com. Matched without case and without the port. Empty means any
	// host (ErrHostNotAllowed otherwise).
	AllowHosts []string
	// RequireChecksum refuses an http or https URL without ?checksum=
	// (ErrChecksumRequired). Local files and directories are exempt.
	RequireChecksum bool
	// MaxBytes limits the bytes written for one release (what is written,
	// not what archive headers claim). Default 2 GiB. The download itself
	// is limited to MaxBytes plus 2 KiB per allowed entry plus 1 MiB.
	MaxBytes int64
	// MaxFiles limits the entries (files, directories, links) of one
	// release. Default 200000.
	MaxFiles int
	// Timeout bounds one whole Fetch (download, verify, unpack). Default 10m.
	Timeout time.Duration
	// Logger receives what the Store decides on its own (recovery at Open,
	// a broken current). Nil discards.
	Logger *slog.Logger
	// HTTPClient, if set, supplies the Transport used for http and https
	// (for instance one that trusts a private CA). Its CheckRedirect is
	// always replaced by the Store's, which refuses a redirect to a scheme
	// not in Allow. Nil means a private client cloned from
	// http.DefaultTransport (proxy from the environment).
	HTTPClient *http.Client
}

// Store owns one release root. Its methods are safe for concurrent use in
// one process; across processes, callers serialize mutations with Lock.
type Store struct {
	root    string
	opts    Options
	log     *slog.Logger
	allow   map[string]bool
	stateMu sync.Mutex
}

// stepHook, when set (only by this package's tests), is called at each step
// of a mutation so a crash test can SIGKILL the process exactly there.
var stepHook func(step string)

func step(name string) {
	if stepHook != nil {
		stepHook(name)
	}
}

const (
	releasesDir   = "releases"
	incomingDir   = ".incoming"
	sharedDir     = "shared"
	agentDir      = ".agent"
	currentLink   = "current"
	currentTmpPfx = ".current.tmp-"
	digestsDir    = "digests"
)

var supportedSchemes = map[string]bool{"https": true, "http": true, "file": true}

// Open opens (creating as needed) the release root: root/releases/.incoming,
// root/shared and root/.agent. If no other process holds the root's lock it
// recovers from a crash: it empties releases/.incoming, removes temporary
// current links and state files, and digests of releases that are gone.
// A current link that names a missing or invalid release does not fail
// Open: it is logged at error level, and Current returns ErrCurrentBroken.
func Open(root string, opts Options) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, &Error{Op: "open", Subject: root, Err: err}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Store{root: abs, log: log}
	if err := s.setOptions(opts); err != nil {
		return nil, &Error{Op: "open", Subject: abs, Err: err}
	}
	for _, d := range []string{
		filepath.Join(abs, releasesDir, incomingDir),
		filepath.Join(abs, sharedDir),
		filepath.Join(abs, agentDir, digestsDir),
	} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, &Error{Op: "open", Subject: abs, Err: err}
		}
	}
	if err := s.recover(); err != nil {
		return nil, &Error{Op: "open", Subject: abs, Err: err}
	}
	if _, err := s.Current(); err != nil && !errors.Is(err, ErrNoCurrent) {
		s.log.Error("Current release is broken", "root", abs, "err", err)
	}
	if _, err := s.History(); err != nil {
		s.log.Error("State file unreadable", "root", abs, "err", err)
	}
	return s, nil
}

// recover removes what a crash can leave behind, unless another process
// holds the lock (it may be mid-fetch in .incoming).
// SetOptions replaces the fetch options (Allow, AllowHosts,
// RequireChecksum, MaxBytes, MaxFiles, Timeout, HTTPClient) for the fetches
// that start after it; Logger stays. Call it only while no Fetch runs (the
// caller's operations are one at a time). An error changes nothing.
func (s *Store) SetOptions(opts Options) error {
	if err := s.setOptions(opts); err != nil {
		return &Error{Op: "set options", Subject: s.root, Err: err}
	}
	return nil
}

// setOptions fills in the defaults of opts and checks its schemes.
func (s *Store) setOptions(opts Options) error {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = DefaultMaxFiles
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Allow == nil {
		opts.Allow = []string{"https", "http", "file"}
	}
	allow := map[string]bool{}
	for _, sc := range opts.Allow {
		sc = strings.ToLower(sc)
		if !supportedSchemes[sc] {
			return fmt.Errorf("%w: %q is not built into this agent (have https, http, file)", ErrSchemeNotAllowed, sc)
		}
		allow[sc] = true
	}
	opts.Logger = s.log
	s.opts, s.allow = opts, allow
	return nil
}

func (s *Store) recover() error {
	l, err := s.Lock("recover", "")
	if err != nil {
		if errors.Is(err, ErrLocked) {
			s.log.Warn("Skipping recovery: root is locked", "err", err)
			return nil
		}
		return err
	}
	defer l.Release()
	inc := filepath.Join(s.root, releasesDir, incomingDir)
	ents, err := os.ReadDir(inc)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(inc, e.Name())); err != nil {
			return err
		}
		s.log.Info("Removed leftover staging", "path", filepath.Join(inc, e.Name()))
	}
	for _, pat := range []string{
		filepath.Join(s.root, currentTmpPfx+"*"),
		filepath.Join(s.root, agentDir, stateFile+".tmp-*"),
		filepath.Join(s.root, agentDir, digestsDir, "*.tmp-*"),
	} {
		m, _ := filepath.Glob(pat)
		for _, p := range m {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			s.log.Info("Removed leftover temporary file", "path", p)
		}
	}
	digests, _ := os.ReadDir(filepath.Join(s.root, agentDir, digestsDir))
	for _, d := range digests {
		if _, err := os.Lstat(s.Dir(d.Name())); errors.Is(err, fs.ErrNotExist) {
			_ = os.Remove(filepath.Join(s.root, agentDir, digestsDir, d.Name()))
		}
	}
	return nil
}

// Root returns the absolute release root.
func (s *Store) Root() string { return s.root }

// Dir returns the absolute directory of release id: root/releases/<id>.
// It does not check that the release exists.
func (s *Store) Dir(id string) string { return filepath.Join(s.root, releasesDir, id) }

func (s *Store) exists(id string) (bool, error) {
	fi, err := os.Lstat(s.Dir(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}

// Current returns the id that root/current names. ErrNoCurrent when there
// is no current link; ErrCurrentBroken (wrapped, with the reason) when it
// is not a link of the form releases/<valid id> to an existing directory.
func (s *Store) Current() (string, error) {
	link := filepath.Join(s.root, currentLink)
	target, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		return "", &Error{Op: "current", Subject: link, Err: ErrNoCurrent}
	}
	if err != nil {
		return "", &Error{Op: "current", Subject: link, Err: fmt.Errorf("%w: %v", ErrCurrentBroken, err)}
	}
	dir, id := filepath.Split(target)
	if filepath.Clean(dir) != releasesDir || ValidateID(id) != nil {
		return "", &Error{Op: "current", Subject: link, Err: fmt.Errorf("%w: points at %q, not releases/<id>", ErrCurrentBroken, target)}
	}
	ok, err := s.exists(id)
	if err != nil {
		return "", &Error{Op: "current", Subject: link, Err: fmt.Errorf("%w: %v", ErrCurrentBroken, err)}
	}
	if !ok {
		return "", &Error{Op: "current", Subject: link, Err: fmt.Errorf("%w: release %s is missing", ErrCurrentBroken, id)}
	}
	return id, nil
}

// Activate points root/current at releases/<id>: a relative symlink made
// under a temporary name, renamed over current (rename(2) is atomic), then
// the root directory is fsynced. At no instant is current missing or
// pointing at an incomplete release. ErrNotFound if the release is absent.
func (s *Store) Activate(id string) error {
	if err := ValidateID(id); err != nil {
		return &Error{Op: "activate", Subject: id, Err: err}
	}
	ok, err := s.exists(id)
	if err != nil {
		return &Error{Op: "activate", Subject: id, Err: err}
	}
	if !ok {
		return &Error{Op: "activate", Subject: id, Err: ErrNotFound}
	}
	tmp := filepath.Join(s.root, currentTmpPfx+randHex())
	if err := os.Symlink(filepath.Join(releasesDir, id), tmp); err != nil {
		return &Error{Op: "activate", Subject: id, Err: err}
	}
	step("activate")
	if err := os.Rename(tmp, filepath.Join(s.root, currentLink)); err != nil {
		_ = os.Remove(tmp)
		return &Error{Op: "activate", Subject: id, Err: err}
	}
	step("activated")
	if err := syncDir(s.root); err != nil {
		return &Error{Op: "activate", Subject: id, Err: err}
	}
	return nil
}

// Releases returns the ids of the releases on disk, oldest first (by the
// time each was renamed into place; Fetch stamps it and Link preserves it),
// ties broken by id.
func (s *Store) Releases() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.root, releasesDir))
	if err != nil {
		return nil, &Error{Op: "releases", Subject: s.root, Err: err}
	}
	type rel struct {
		id string
		t  time.Time
	}
	var rs []rel
	for _, e := range ents {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		rs = append(rs, rel{e.Name(), fi.ModTime()})
	}
	sort.Slice(rs, func(i, j int) bool {
		if !rs[i].t.Equal(rs[j].t) {
			return rs[i].t.Before(rs[j].t)
		}
		return rs[i].id < rs[j].id
	})
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.id
	}
	return ids, nil
}

// Remove deletes release id. It refuses the current release (ErrInUse).
// The release is first renamed into releases/.incoming, so no half-removed
// release is ever visible under releases/.
func (s *Store) Remove(id string) error {
	if err := ValidateID(id); err != nil {
		return &Error{Op: "remove", Subject: id, Err: err}
	}
	if cur, err := s.Current(); err == nil && cur == id {
		return &Error{Op: "remove", Subject: id, Err: fmt.Errorf("%w: it is current", ErrInUse)}
	}
	ok, err := s.exists(id)
	if err != nil {
		return &Error{Op: "remove", Subject: id, Err: err}
	}
	if !ok {
		return &Error{Op: "remove", Subject: id, Err: ErrNotFound}
	}
	trash := filepath.Join(s.root, releasesDir, incomingDir, "remove-"+id+"-"+randHex())
	if err := os.Rename(s.Dir(id), trash); err != nil {
		return &Error{Op: "remove", Subject: id, Err: err}
	}
	_ = os.Remove(filepath.Join(s.root, agentDir, digestsDir, id))
	if err := os.RemoveAll(trash); err != nil {
		return &Error{Op: "remove", Subject: id, Err: err}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// syncFS flushes the whole filesystem holding dir (syncfs(2)): one call
// instead of an fsync per unpacked file.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
