//go:build linux

package control

import (
	"sync"
	"time"
)

// maxLogMessages bounds what one operation keeps for its followers; past it,
// progress and output events are dropped (stage events and the result never).
const maxLogMessages = 20000

// Log is the event stream of one request. The operation appends; any number
// of followers (control connections) read it at their own pace, so a slow or
// vanished client never blocks or aborts the operation.
type Log struct {
	mu     sync.Mutex
	msgs   []Message
	done   bool
	wake   chan struct{} // closed and replaced on every append
	result Message
}

func NewLog() *Log { return &Log{wake: make(chan struct{})} }

// FinishedLog returns a log that holds only result.
func FinishedLog(result Message) *Log {
	l := NewLog()
	l.Finish(result)
	return l
}

// Emit appends an event. Events after finish are dropped.
func (l *Log) Emit(m Message) {
	m.Type = TypeEvent
	if m.Time.IsZero() {
		m.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	if len(l.msgs) >= maxLogMessages && (m.Kind == "progress" || m.Kind == "output") {
		return
	}
	l.msgs = append(l.msgs, m)
	close(l.wake)
	l.wake = make(chan struct{})
}

// Finish appends the result and ends the stream. Only the first call counts.
func (l *Log) Finish(result Message) {
	result.Type = TypeResult
	if result.Time.IsZero() {
		result.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.done = true
	l.result = result
	l.msgs = append(l.msgs, result)
	close(l.wake)
	l.wake = make(chan struct{})
}

// Result returns the result once finished.
func (l *Log) Result() (Message, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.result, l.done
}

// Follow calls fn for every message from the first to the result, waiting
// for new ones. It returns fn's first error, or nil after the result, or
// when stop is closed.
func (l *Log) Follow(stop <-chan struct{}, fn func(Message) error) error {
	i := 0
	for {
		l.mu.Lock()
		batch := l.msgs[i:len(l.msgs):len(l.msgs)]
		done := l.done
		wake := l.wake
		l.mu.Unlock()
		for _, m := range batch {
			if err := fn(m); err != nil {
				return err
			}
		}
		i += len(batch)
		if done { // nothing is appended after the result
			return nil
		}
		select {
		case <-wake:
		case <-stop:
			return nil
		}
	}
}
