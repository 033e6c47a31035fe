package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff/handoff/control"
	"github.com/handoff/handoff/internal/proctest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func events() []control.Message {
	now := time.Now()
	w := 0
	return []control.Message{
		{Time: now, Stage: "fetch", Kind: "start", Message: "http://x/a.tgz -> releases/42"},
		{Time: now, Stage: "fetch", Kind: "progress", Done: 50, Total: 100},
		{Time: now, Stage: "fetch", Kind: "done", Message: "releases/42 ready"},
		{Time: now, Stage: "pre-activate", Kind: "output", Message: "added 3 packages"},
		{Time: now, Stage: "reload", Kind: "worker", Worker: &w, Message: "generation 2: 1/2 workers ready"},
		{Time: now, Stage: "post-deploy", Kind: "warn", Message: "cache warm-up slow"},
	}
}

func TestRenderer_plain(t *testing.T) {
	var buf syncBuf
	r := newRenderer(&buf, false)
	for _, m := range events() {
		r.event(m)
	}
	r.close()
	want := "fetch        http://x/a.tgz -> releases/42\n" +
		"fetch        releases/42 ready\n" +
		"    | added 3 packages\n" +
		"post-deploy  warning: cache warm-up slow\n"
	if got := buf.String(); got != want {
		t.Errorf("plain output:\n%q\nwant\n%q", got, want)
	}
}

func TestRenderer_terminal(t *testing.T) {
	var buf syncBuf
	r := newRenderer(&buf, true)
	for _, m := range events() {
		r.event(m)
	}
	proctest.WaitFor(t, 5*time.Second, "the ticker to redraw", func() bool { return strings.Contains(buf.String(), "\r\033[K/ ") })
	r.close()
	got := buf.String()
	for _, w := range []string{"[===============               ] 50 B / 100 B", "generation 2: 1/2 workers ready", "\r\033[K", "    | added 3 packages\n"} {
		if !strings.Contains(got, w) {
			t.Errorf("terminal output lacks %q:\n%q", w, got)
		}
	}
	if !strings.HasSuffix(got, "\r\033[K") {
		t.Errorf("the transient line is not cleared at close: %q", got[max(0, len(got)-40):])
	}
}
