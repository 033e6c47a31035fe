//go:build linux

package release

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidateID reports whether id can name a release: ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$.
// The error wraps ErrInvalidID.
func ValidateID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w %q: want 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit", ErrInvalidID, id)
	}
	return nil
}

// NewID returns a fresh release id: the UTC time and 4 random hex digits,
// e.g. 20261126T120301Z-3fa9. Ids from NewID sort by creation time.
func NewID() string {
	var b [2]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// randHex returns 8 random hex digits for temporary names.
func randHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
