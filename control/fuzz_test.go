package control

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FuzzControlRequest sends arbitrary bytes as a request to a real control
// server on a unix socket. Whatever arrives, the server answers with
// exactly one JSON result line and closes; the handler sees a request only
// when the bytes start with one well-formed Request of known fields within
// MaxRequestBytes, and then sees exactly that request.
// Seeds: testdata/fuzz/FuzzControlRequest.
func FuzzControlRequest(f *testing.F) {
	f.Add([]byte(`{"op":"deploy","url":"https://u:p@h/a.tgz?checksum=sha256:00","id":"42","wait":true}`))
	f.Add([]byte(`{"op":"status"}` + "\n" + `{"op":"deploy"}`))
	path := filepath.Join(f.TempDir(), "agent.sock")
	ln, err := Listen(path, -1, discard())
	if err != nil {
		f.Fatal(err)
	}
	var mu sync.Mutex
	var got []Request
	srv := NewServer(ln, nil, nil, discard(), func(req Request) *Log {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		return FinishedLog(Message{Code: CodeOK, Op: req.Op})
	})
	srv.reqTimeout = 2 * time.Second
	done := make(chan error, 1)
	go func() { done <- srv.Serve() }()
	f.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			f.Errorf("Serve: %v", err)
		}
	})

	f.Fuzz(func(t *testing.T, payload []byte) {
		mu.Lock()
		got = nil
		mu.Unlock()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			c.(*net.UnixConn).CloseWrite()
			werr <- err
		}()
		reply, err := io.ReadAll(c)
		<-werr
		// A server that stops reading early closes with input unread: the
		// kernel then ends the stream with a reset after the reply.
		if err != nil && !(errors.Is(err, syscall.ECONNRESET) && bytes.HasSuffix(reply, []byte("\n"))) {
			t.Fatalf("reading the reply: %v (read %q)", err, reply)
		}
		lines := strings.Split(strings.TrimSuffix(string(reply), "\n"), "\n")
		if len(lines) != 1 || !strings.HasSuffix(string(reply), "\n") {
			t.Fatalf("want one result line, got %q", reply)
		}
		var res Message
		if err := json.Unmarshal([]byte(lines[0]), &res); err != nil || res.Type != "result" || res.Code == "" {
			t.Fatalf("reply %q: %v", reply, err)
		}

		// What the server should have decoded.
		var want Request
		dec := json.NewDecoder(bufio.NewReader(io.LimitReader(bytes.NewReader(payload), MaxRequestBytes)))
		dec.DisallowUnknownFields()
		valid := dec.Decode(&want) == nil
		mu.Lock()
		seen := got
		mu.Unlock()
		switch {
		case valid && (len(seen) != 1 || seen[0] != want || res.Code != CodeOK):
			t.Fatalf("valid request %+v: handler saw %+v, reply %q", want, seen, reply)
		case !valid && (len(seen) != 0 || res.Code != CodeUsage || !strings.HasPrefix(res.Error, "bad request: ")):
			t.Fatalf("invalid request %q: handler saw %+v, reply %q", payload, seen, reply)
		}
	})
}

// FuzzCallReply has the client read arbitrary bytes as the agent's reply:
// call never panics or hangs; it returns a result only when a line decodes
// as a Message of type "result", and otherwise an error.
// Seeds: testdata/fuzz/FuzzCallReply.
func FuzzCallReply(f *testing.F) {
	f.Add([]byte(`{"type":"event","stage":"fetch","kind":"progress","done":5,"total":-1}` + "\n" + `{"type":"result","code":"ok","id":"42"}` + "\n"))
	f.Add([]byte(`{"type":"result","code":"busy","error":"deploy 41 is running since 12:00:00"}`))
	path := filepath.Join(f.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		f.Fatal(err)
	}
	replies := make(chan []byte)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			payload := <-replies
			go io.Copy(io.Discard, c)
			c.Write(payload)
			c.Close()
		}
	}()
	f.Cleanup(func() { ln.Close(); <-done })

	f.Fuzz(func(t *testing.T, payload []byte) {
		type answer struct {
			res Message
			err error
			n   int
		}
		ch := make(chan answer, 1)
		go func() {
			n := 0
			res, err := Call(path, Request{Op: OpStatus}, func(Message) { n++ })
			ch <- answer{res, err, n}
		}()
		replies <- payload
		var a answer
		select {
		case a = <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("call hangs on reply %q", payload)
		}
		if a.err == nil && a.res.Type != "result" {
			t.Fatalf("call returned a non-result %+v for %q", a.res, payload)
		}
		if a.err != nil && a.res.Type != "" {
			t.Fatalf("call returned both %+v and %v", a.res, a.err)
		}
	})
}
