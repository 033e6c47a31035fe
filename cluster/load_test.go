package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// rawLoad is a keep-alive HTTP/1.1 load on raw net.Conns that counts every
// failure at the TCP level. A request that fails on a reused connection
// before any response byte arrived is a "stale keep-alive": retried once on a
// fresh connection and counted apart. (net/http's Transport would retry it
// silently.) It stands in for loadgen, whose Stop races on its connection
// (loadgen.go AfterFunc reads w.conn while the worker sets it to nil).
type rawLoad struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu  sync.Mutex
	res loadResult
}

type loadResult struct {
	OK, FailedTotal, StaleKeepAlive int64
	Failed                          map[string]int64
	Bodies                          map[string]int64
	Errors                          []string
}

func (r loadResult) String() string {
	return fmt.Sprintf("ok=%d failed=%d %v stale_keepalive=%d errors=%q", r.OK, r.FailedTotal, r.Failed, r.StaleKeepAlive, r.Errors)
}

func startRawLoad(addr string, conns int) *rawLoad {
	l := &rawLoad{addr: addr, stop: make(chan struct{}), res: loadResult{Failed: map[string]int64{}, Bodies: map[string]int64{}}}
	for range conns {
		l.wg.Add(1)
		go l.loop()
	}
	return l
}

func (l *rawLoad) Snapshot() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.Failed, r.Bodies = map[string]int64{}, map[string]int64{}
	for k, v := range l.res.Failed {
		r.Failed[k] = v
	}
	for k, v := range l.res.Bodies {
		r.Bodies[k] = v
	}
	return r
}

func (l *rawLoad) Stop() loadResult {
	close(l.stop)
	l.wg.Wait()
	return l.Snapshot()
}

func (l *rawLoad) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func (l *rawLoad) loop() {
	defer l.wg.Done()
	var c net.Conn
	var br *bufio.Reader
	served := 0
	closeConn := func() {
		if c != nil {
			c.Close()
			c = nil
		}
	}
	defer closeConn()
	attempt := func() (string, bool, error) { // body, got any byte, err
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", l.addr, 5*time.Second)
			if err != nil {
				return "", false, err
			}
			br, served = bufio.NewReader(c), 0
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
			closeConn()
			return "", false, err
		}
		if _, err := br.Peek(1); err != nil {
			closeConn()
			return "", false, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			closeConn()
			return "", true, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			closeConn()
			return "", true, err
		}
		served++
		if resp.Close {
			closeConn()
		}
		if resp.StatusCode != 200 {
			return "", true, fmt.Errorf("status %d", resp.StatusCode)
		}
		return strings.TrimSpace(string(b)), true, nil
	}
	for !l.stopped() {
		reused := c != nil && served > 0
		body, got, err := attempt()
		stale := false
		if err != nil && reused && !got {
			stale = true
			body, _, err = attempt()
		}
		l.mu.Lock()
		if stale {
			l.res.StaleKeepAlive++
		}
		if err != nil {
			l.res.FailedTotal++
			l.res.Failed[classifyErr(err)]++
			if len(l.res.Errors) < 5 {
				l.res.Errors = append(l.res.Errors, err.Error())
			}
		} else {
			l.res.OK++
			l.res.Bodies[body]++
		}
		l.mu.Unlock()
	}
}

func classifyErr(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case strings.Contains(err.Error(), "connection refused"):
		return "refused"
	case strings.Contains(err.Error(), "connection reset"):
		return "reset"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// getOnce sends one request on a fresh connection and returns the body.
func getOnce(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
