package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startControl serves a control socket in t.TempDir with handle.
func startControl(t *testing.T, handle func(Request) *Log, opts ...func(*Server)) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := Listen(path, -1, discard())
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ln, nil, nil, discard(), handle)
	for _, o := range opts {
		o(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, path
}

func TestServer_streamsEventsThenResult(t *testing.T) {
	_, path := startControl(t, func(req Request) *Log {
		l := NewLog()
		l.Emit(Message{Stage: "fetch", Message: "got " + req.URL})
		l.Emit(Message{Stage: "reload", Message: "ready"})
		l.Finish(Message{Code: CodeOK, ID: req.ID})
		return l
	})
	var events []string
	res, err := Call(path, Request{Op: OpDeploy, URL: "u", ID: "42"}, func(m Message) { events = append(events, string(m.Stage)+":"+m.Message) })
	if err != nil {
		t.Fatal(err)
	}
	if res.Code != CodeOK || res.ID != "42" || res.Type != "result" {
		t.Errorf("result = %+v", res)
	}
	if got := strings.Join(events, ","); got != "fetch:got u,reload:ready" {
		t.Errorf("events = %q", got)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode = %v, want 0660", fi.Mode().Perm())
	}
}

func TestServer_badRequests(t *testing.T) {
	_, path := startControl(t, func(req Request) *Log { return FinishedLog(Message{Code: CodeOK}) },
		func(s *Server) { s.reqTimeout = 200 * time.Millisecond })
	tests := []struct {
		name string
		send string
		want string
	}{
		{name: "silent client", send: "", want: "bad request: no request within 200ms"},
		{name: "oversize", send: `{"op":"deploy","url":"` + strings.Repeat("x", MaxRequestBytes+10), want: "bad request: incomplete or larger than 65536 bytes"},
		{name: "not json", send: "hello\n", want: "bad request: invalid character"},
		{name: "unknown field", send: `{"op":"deploy","force":true}` + "\n", want: `bad request: json: unknown field "force"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.send != "" {
				go c.Write([]byte(tt.send)) // may block on a full buffer once the server stops reading
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			var m Message
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatal(err)
			}
			if m.Type != "result" || m.Code != CodeUsage || !strings.HasPrefix(m.Error, tt.want) {
				t.Errorf("got %+v, want usage %q", m, tt.want)
			}
		})
	}
}

func TestServer_clientLeavingDoesNotAbort(t *testing.T) {
	release := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var final *Log
	_, path := startControl(t, func(req Request) *Log {
		l := NewLog()
		mu.Lock()
		final = l
		mu.Unlock()
		wg.Add(1)
		go func() { // stands in for the daemon's operation goroutine
			defer wg.Done()
			l.Emit(Message{Stage: "fetch", Message: "started"})
			<-release
			for i := 0; i < 1000; i++ { // more than a socket buffer, nobody reading
				l.Emit(Message{Stage: "reload", Kind: "output", Message: strings.Repeat("y", 200)})
			}
			l.Finish(Message{Code: CodeOK, ID: "done"})
		}()
		return l
	})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	json.NewEncoder(c).Encode(Request{Op: OpDeploy, URL: "u"})
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c.Close()
	close(release)
	wg.Wait()
	mu.Lock()
	res, done := final.Result()
	mu.Unlock()
	if !done || res.Code != CodeOK || res.ID != "done" {
		t.Fatalf("operation result = %+v, %v", res, done)
	}
}

func TestListenControl_staleAndLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.sock")
	// A socket file whose listener is gone, as a killed agent leaves it.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	live, err := Listen(path, -1, discard())
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer live.Close()
	if _, err := Listen(path, -1, discard()); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second listen = %v, want ErrAgentRunning", err)
	}
	file := filepath.Join(dir, "plain")
	os.WriteFile(file, nil, 0o644)
	if _, err := Listen(file, -1, discard()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listen over a regular file = %v", err)
	}
}

func TestServer_allowed(t *testing.T) {
	s := &Server{allowUIDs: []int{1001}, allowGIDs: []int{2002}}
	me := os.Getuid()
	tests := []struct {
		name string
		cred unix.Ucred
		want bool
	}{
		{name: "root", cred: unix.Ucred{Uid: 0, Gid: 5}, want: true},
		{name: "agent's own uid", cred: unix.Ucred{Uid: uint32(me), Gid: 5}, want: true},
		{name: "allowed uid", cred: unix.Ucred{Uid: 1001, Gid: 5}, want: true},
		{name: "allowed primary gid", cred: unix.Ucred{Uid: 4242, Gid: 2002}, want: true},
		{name: "stranger", cred: unix.Ucred{Uid: 4242, Gid: 0, Pid: 1 << 30}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if me == 4242 {
				t.Skip("test uid collides")
			}
			if got := s.allowed(&tt.cred); got != tt.want {
				t.Errorf("allowed(%+v) = %v, want %v", tt.cred, got, tt.want)
			}
		})
	}
}

func TestOpLog_followAfterFinish(t *testing.T) {
	l := NewLog()
	l.Emit(Message{Stage: "a"})
	l.Finish(Message{Code: CodeBusy})
	l.Emit(Message{Stage: "late"})
	l.Finish(Message{Code: CodeOK})
	var got []string
	if err := l.Follow(nil, func(m Message) error { got = append(got, m.Type+":"+string(m.Stage)+m.Code); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "event:a,result:busy" {
		t.Errorf("follow = %q", got)
	}
}

func TestServer_SetAllowed(t *testing.T) {
	s := &Server{allowUIDs: []int{1001}}
	peer := unix.Ucred{Uid: 1001, Gid: 5, Pid: 1 << 30}
	if !s.allowed(&peer) {
		t.Fatal("uid 1001 refused before SetAllowed")
	}
	s.SetAllowed([]int{1002}, nil)
	if s.allowed(&peer) {
		t.Error("uid 1001 still allowed after SetAllowed([1002])")
	}
	if !s.allowed(&unix.Ucred{Uid: 1002, Gid: 5, Pid: 1 << 30}) {
		t.Error("uid 1002 refused after SetAllowed([1002])")
	}
}
