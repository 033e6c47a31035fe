//go:build linux

package release

import (
	"errors"
	"strconv"
)

// Sentinels for the states callers branch on. Every error the package
// returns wraps at most one of them; check with errors.Is.
var (
	ErrInvalidID          = errors.New("invalid release id")
	ErrExists             = errors.New("release already exists")
	ErrNotFound           = errors.New("release not found")
	ErrSchemeNotAllowed   = errors.New("scheme not allowed")
	ErrHostNotAllowed     = errors.New("host not allowed")
	ErrChecksumRequired   = errors.New("checksum required")
	ErrChecksumMismatch   = errors.New("checksum mismatch")
	ErrUnsafeArchive      = errors.New("unsafe archive")
	ErrUnsupportedArchive = errors.New("unsupported archive type")
	ErrTooLarge           = errors.New("release too large")
	ErrTimeout            = errors.New("fetch timed out")
	ErrNoCurrent          = errors.New("no current release")
	ErrCurrentBroken      = errors.New("current release is broken")
	ErrInUse              = errors.New("release in use")
	ErrStateCorrupt       = errors.New("state file corrupt")
	ErrNoRollbackTarget   = errors.New("no rollback target")
	ErrLocked             = errors.New("release root locked")
)

// Error is the error every Store method returns: one line, the operation,
// its subject (a release id, a redacted URL, an archive or a path) and the
// cause, e.g.
//
//	fetch http://127.0.0.1:4000/app.tgz: checksum mismatch: want sha256:ab…, got sha256:cd…
type Error struct {
	Op      string // "fetch", "unpack", "activate", "link", "remove", "prune", "record", "history", "lock", "open", "current"
	Subject string
	Err     error
}

func (e *Error) Error() string {
	if e.Subject == "" {
		return e.Op + ": " + e.Err.Error()
	}
	return e.Op + " " + e.Subject + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// EntryError is the cause of an unpack failure that is due to one archive
// entry (or one file of a copied directory): `entry "../evil": path escapes
// the release`. It wraps ErrUnsafeArchive or ErrTooLarge.
type EntryError struct {
	Entry  string
	Reason string
	Err    error
}

func (e *EntryError) Error() string {
	return "entry " + strconv.Quote(e.Entry) + ": " + e.Reason
}

func (e *EntryError) Unwrap() error { return e.Err }

// reasonError is a cause whose text is chosen by us but that still matches
// a sentinel with errors.Is: "checksum mismatch: want …, got …".
type reasonError struct {
	msg string
	err error
}

func (e *reasonError) Error() string { return e.msg }
func (e *reasonError) Unwrap() error { return e.err }

func reason(sentinel error, msg string) error { return &reasonError{msg: msg, err: sentinel} }

func unsafeEntry(name, why string) error {
	return &EntryError{Entry: name, Reason: why, Err: ErrUnsafeArchive}
}
