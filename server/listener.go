package server

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener keeps at most max connections of a listener open, so that
// connections cannot take the file descriptors the store and the requests
// already admitted need.
//
// Past max, Accept makes room by closing the connection idle longest: a
// keep-alive connection between requests first, else one that has sent
// nothing for a whole wait since it was accepted (a client sends its request
// as soon as it connects). With none to close, the new connection waits up
// to wait for a connection to close or turn idle, and is then closed
// unanswered. Once the listener has been full for a whole wait, new
// connections are closed at once until a slot frees: the wait already
// happened on the connection before them, and clients queued behind it learn
// sooner that they should try again.
//
// The http.Server serving the connections must report their states with
// connState (http.Server.ConnState); without it no connection counts as
// idle. Connections count until closed.
type limitListener struct {
	net.Listener
	max  int
	wait time.Duration

	mu      sync.Mutex
	open    int
	idle    list.List     // *limitedConn between requests, longest idle first
	fresh   list.List     // *limitedConn that have not begun a request, oldest first
	changed chan struct{} // closed, and replaced, when a slot frees or a connection turns idle while waiting is set
	waiting bool          // Accept waits on changed
	starved bool          // a whole wait passed without room, and no slot has freed since

	done      chan struct{}
	closeOnce sync.Once

	refused atomic.Uint64 // connections closed unanswered for want of room
	evicted atomic.Uint64 // idle connections closed to make room
}

// newLimitListener wraps ln to keep at most max connections open, a new one
// waiting up to wait for room.
func newLimitListener(ln net.Listener, max int, wait time.Duration) *limitListener {
	return &limitListener{Listener: ln, max: max, wait: wait, changed: make(chan struct{}), done: make(chan struct{})}
}

// Accept returns the next connection there is room for, closing those there
// is none for. Its errors are the wrapped listener's, unchanged, so that
// http.Server backs off on temporary ones such as EMFILE.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
		l.refused.Add(1)
		_ = c.Close()
	}
}

// Close closes the wrapped listener and ends a wait for room.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// admit takes a slot for c, making room or waiting for it as the type's
// comment says; nil means there is none.
func (l *limitListener) admit(c net.Conn) *limitedConn {
	deadline := time.Now().Add(l.wait)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		now := time.Now()
		l.mu.Lock()
		if l.open < l.max {
			l.open++
			l.starved = false
			lc := &limitedConn{Conn: c, l: l, state: http.StateNew, since: now}
			lc.elem = l.fresh.PushBack(lc)
			l.mu.Unlock()
			return lc
		}
		if victim := l.victimLocked(now); victim != nil {
			l.mu.Unlock()
			_ = victim.Close() // frees its slot
			l.evicted.Add(1)
			continue
		}
		if l.starved || !now.Before(deadline) {
			l.starved = true
			l.mu.Unlock()
			return nil
		}
		// Wake when a slot frees or a connection turns idle, when the
		// oldest fresh connection has waited long enough to be closed, or
		// at the deadline.
		wake := deadline
		if front := l.fresh.Front(); front != nil {
			wake = minTime(wake, front.Value.(*limitedConn).since.Add(l.wait))
		}
		changed := l.changed
		l.waiting = true
		l.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wake.Sub(now))
		} else {
			timer.Reset(wake.Sub(now))
		}
		select {
		case <-changed:
		case <-timer.C:
		case <-l.done:
			return nil
		}
	}
}

// victimLocked takes out of the lists and returns the connection to close
// to make room, or nil: the one idle longest, else the oldest that has sent
// nothing for a whole wait.
func (l *limitListener) victimLocked(now time.Time) *limitedConn {
	if front := l.idle.Front(); front != nil {
		lc := front.Value.(*limitedConn)
		l.unlistLocked(lc)
		return lc
	}
	if front := l.fresh.Front(); front != nil {
		if lc := front.Value.(*limitedConn); !now.Before(lc.since.Add(l.wait)) {
			l.unlistLocked(lc)
			return lc
		}
	}
	return nil
}

func (l *limitListener) unlistLocked(lc *limitedConn) {
	if lc.elem == nil {
		return
	}
	if lc.state == http.StateIdle {
		l.idle.Remove(lc.elem)
	} else {
		l.fresh.Remove(lc.elem)
	}
	lc.elem = nil
}

// signalLocked wakes a wait for room. Without one it does nothing, so that
// a request's turn to idle costs no channel.
func (l *limitListener) signalLocked() {
	if !l.waiting {
		return
	}
	l.waiting = false
	close(l.changed)
	l.changed = make(chan struct{})
}

// connState is the http.Server.ConnState hook that tells the listener which
// connections are idle.
func (l *limitListener) connState(c net.Conn, state http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // TLS runs over the connections the listener admitted
	}
	lc, ok := c.(*limitedConn)
	if !ok || state == http.StateNew {
		return // a new connection is listed as fresh by admit
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if lc.closed {
		return
	}
	l.unlistLocked(lc)
	lc.state, lc.since = state, time.Now()
	if state == http.StateIdle {
		lc.elem = l.idle.PushBack(lc)
		l.signalLocked()
	}
}

// release frees lc's slot.
func (l *limitListener) release(lc *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlistLocked(lc)
	lc.closed = true
	l.open--
	l.starved = false
	l.signalLocked()
}

// stats reports the open connections, those of them idle, and the
// connections refused and the idle ones closed to make room so far.
func (l *limitListener) stats() (open, idle int, refused, evicted uint64) {
	l.mu.Lock()
	open, idle = l.open, l.idle.Len()
	l.mu.Unlock()
	return open, idle, l.refused.Load(), l.evicted.Load()
}

// limitedConn is a connection admitted by a limitListener; closing it frees
// its slot.
type limitedConn struct {
	net.Conn
	l         *limitListener
	closeOnce sync.Once

	// Guarded by l.mu.
	state  http.ConnState
	since  time.Time     // when it entered state
	elem   *list.Element // in l.idle or l.fresh, or nil
	closed bool
}

// Close closes the connection and then frees its slot.
func (c *limitedConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.l.release(c)
	})
	return err
}

// CloseWrite shuts down the writing side, when the connection has one, so
// that http.Server can close a connection gracefully with unread input
// left (a TCP reset would lose its last answer).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Bounds of the default connection cap.
const (
	// MaxConnectionsCeiling is the most connections the default cap
	// allows, whatever the file limit: each costs some 20 KiB of memory
	// even when idle.
	MaxConnectionsCeiling = 16384
	// fileReserve is the least of the file limit kept for the store and
	// the rest of the process: Pebble alone keeps up to 1,000 files open.
	fileReserve = 1024
	// fallbackMaxConnections is the default cap where the file limit is
	// unknown.
	fallbackMaxConnections = 1024
)

// DefaultMaxConnections is the connection cap used when
// Config.MaxConnections is 0: the process's open-file limit less a reserve
// for the store and everything else the process opens (a quarter of the
// limit, at least 1,024 files, at most half of it), and at most
// [MaxConnectionsCeiling]. Under a limit of 4,096 files it is 3,072.
func DefaultMaxConnections() int {
	n, ok := fileLimit()
	if !ok {
		return fallbackMaxConnections
	}
	return defaultMaxConnections(n)
}

func defaultMaxConnections(fileLimit int) int {
	reserve := min(max(fileLimit/4, fileReserve), fileLimit/2)
	return max(1, min(fileLimit-reserve, MaxConnectionsCeiling))
}
