package release

import (
	"context"
	"errors"
	"testing"
)

// TestStore_SetOptions: new fetch options apply to the next Fetch; a
// refused set changes nothing.
func TestStore_SetOptions(t *testing.T) {
	sb := newSandbox(t)
	art := sb.write(t, "app.tgz", gz(t, buildTar(t, []tarEntry{{Name: "app/VERSION", Body: "1"}})))
	s := sb.open(t, Options{Allow: []string{"file"}})
	if err := s.SetOptions(Options{Allow: []string{"ftp"}}); !errors.Is(err, ErrSchemeNotAllowed) {
		t.Fatalf("SetOptions(ftp): %v, want ErrSchemeNotAllowed", err)
	}
	if _, err := s.Fetch(context.Background(), FetchRequest{URL: art, ID: "r1"}); err != nil {
		t.Fatalf("file allowed: %v", err)
	}
	if err := s.SetOptions(Options{Allow: []string{"https"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(context.Background(), FetchRequest{URL: art, ID: "r2"}); !errors.Is(err, ErrSchemeNotAllowed) {
		t.Fatalf("file after SetOptions(https): %v, want ErrSchemeNotAllowed", err)
	}
}
