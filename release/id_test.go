package release

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "42", "v1.2.3", "abc_DEF-9", strings.Repeat("a", 64), NewID()} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", ".incoming", "..", "-x", "a/b", "a b", strings.Repeat("a", 65), "é"} {
		if err := ValidateID(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("ValidateID(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	if a, b := NewID(), NewID(); a == b {
		t.Errorf("NewID twice = %q", a)
	}
}
