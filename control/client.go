//go:build linux

package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// ErrUnreachable means no agent answered on the control socket (exit 3).
var ErrUnreachable = errors.New("agent not reachable")

const dialTimeout = 5 * time.Second

// call sends req to the agent at socket, passes each event to onEvent (may be
// nil) and returns the result. Failing to connect, or losing the connection
// before the result, is an error wrapping ErrUnreachable (exit 3); a
// malformed message from the agent is any other error (exit 1).
func Call(socket string, req Request, onEvent func(Message)) (Message, error) {
	c, err := net.DialTimeout("unix", socket, dialTimeout)
	if err != nil {
		hint := ""
		switch {
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			hint = " (is `agent run` running with this config?)"
		case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
			hint = " (permission denied: be in the socket's group, or root)"
		}
		return Message{}, fmt.Errorf("%w at %s: %v%s", ErrUnreachable, socket, err, hint)
	}
	defer c.Close()
	// A refusing agent answers before reading; its reason is still readable
	// when this write fails, so a write error is only reported if no result
	// follows.
	werr := json.NewEncoder(c).Encode(req)
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return Message{}, fmt.Errorf("control socket %s: bad message from agent: %v", socket, err)
		}
		if m.Type == TypeResult {
			return m, nil
		}
		if onEvent != nil {
			onEvent(m)
		}
	}
	err = sc.Err()
	if werr != nil {
		return Message{}, fmt.Errorf("%w at %s: send request: %v", ErrUnreachable, socket, werr)
	}
	if err == nil {
		err = errors.New("connection closed before the result")
	}
	// The agent went away mid-stream (stopped, crashed, upgraded): its
	// outcome is unknown here, so this is "not reachable", not "failed".
	return Message{}, fmt.Errorf("%w: %s: %v (the operation may have finished or still run: see `agent status`)", ErrUnreachable, socket, err)
}
