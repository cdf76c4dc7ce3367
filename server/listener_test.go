package server

import (
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// capped is a limitListener on a loopback port whose accepted connections
// arrive on a channel.
type capped struct {
	*limitListener
	accepted chan net.Conn
}

func newCapped(t *testing.T, max int, wait time.Duration) *capped {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &capped{limitListener: newLimitListener(ln, max, wait), accepted: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := c.Accept()
			if err != nil {
				return
			}
			c.accepted <- conn
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		close(c.accepted)
		for conn := range c.accepted {
			conn.Close()
		}
	})
	return c
}

// dial connects to the listener and closes the connection when the test
// ends.
func (c *capped) dial(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", c.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// next returns the next admitted connection, failing after timeout.
func (c *capped) next(t *testing.T, timeout time.Duration) net.Conn {
	t.Helper()
	select {
	case conn := <-c.accepted:
		t.Cleanup(func() { conn.Close() })
		return conn
	case <-time.After(timeout):
		t.Fatalf("no connection admitted within %v", timeout)
		return nil
	}
}

// closedWithin reports how long the server took to close conn, failing if
// it did not within timeout.
func closedWithin(t *testing.T, conn net.Conn, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(timeout))
	var buf [1]byte
	_, err := conn.Read(buf[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", timeout)
	}
	if err == nil {
		t.Fatalf("read a byte from a connection the server should close")
	}
	return time.Since(start)
}

// stillOpen fails if the server closed conn.
func stillOpen(t *testing.T, conn net.Conn, name string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	var buf [1]byte
	_, err := conn.Read(buf[:])
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%s: read %v, want it still open", name, err)
	}
}

func TestLimitListenerRefusesAfterWait(t *testing.T) {
	t.Parallel()
	const wait = 200 * time.Millisecond
	c := newCapped(t, 2, wait)
	c.dial(t)
	c.dial(t)
	a, b := c.next(t, time.Second), c.next(t, time.Second)
	c.connState(a, http.StateActive)
	c.connState(b, http.StateActive)

	// Both busy: the third waits the whole wait, then is closed unanswered.
	if took := closedWithin(t, c.dial(t), 5*time.Second); took < wait*9/10 {
		t.Errorf("third connection closed after %v, want a wait of %v first", took, wait)
	}
	// Still full a whole wait later: the next is closed at once.
	if took := closedWithin(t, c.dial(t), 5*time.Second); took >= wait {
		t.Errorf("fourth connection closed after %v, want at once while the listener stays full", took)
	}
	if open, _, refused, evicted := c.stats(); open != 2 || refused != 2 || evicted != 0 {
		t.Errorf("stats: %d open, %d refused, %d idle closed; want 2, 2, 0", open, refused, evicted)
	}

	// A slot frees: the next connection is admitted.
	a.Close()
	c.dial(t)
	c.next(t, time.Second)
	stillOpen(t, b, "the busy connection")
}

func TestLimitListenerAdmitsWhenSlotFrees(t *testing.T) {
	t.Parallel()
	c := newCapped(t, 1, 10*time.Second)
	c.dial(t)
	first := c.next(t, time.Second)
	c.connState(first, http.StateActive)
	c.dial(t) // waits for room
	select {
	case <-c.accepted:
		t.Fatal("a second connection was admitted past the cap of 1")
	case <-time.After(50 * time.Millisecond):
	}
	start := time.Now()
	first.Close()
	c.next(t, 5*time.Second)
	if took := time.Since(start); took > time.Second {
		t.Errorf("admitted %v after a slot freed, want at once", took)
	}
}

func TestLimitListenerClosesIdleFirst(t *testing.T) {
	t.Parallel()
	const wait = time.Second
	c := newCapped(t, 3, wait)
	var clients, servers [3]net.Conn
	for i := range clients {
		clients[i] = c.dial(t)
		servers[i] = c.next(t, time.Second)
		c.connState(servers[i], http.StateActive)
	}
	// The second turns idle before the third, the first stays busy.
	c.connState(servers[1], http.StateIdle)
	c.connState(servers[2], http.StateIdle)

	start := time.Now()
	c.dial(t)
	fourth := c.next(t, 5*time.Second)
	if took := time.Since(start); took > wait/2 {
		t.Errorf("admitted after %v, want at once by closing an idle connection", took)
	}
	closedWithin(t, clients[1], time.Second)
	stillOpen(t, clients[0], "the busy connection")
	stillOpen(t, clients[2], "the connection idle for less time")

	// An idle connection that turns busy again is no longer closed for room.
	c.connState(servers[2], http.StateActive)
	c.connState(fourth, http.StateActive)
	if took := closedWithin(t, c.dial(t), 10*time.Second); took < wait*9/10 {
		t.Errorf("refused after %v, want the whole wait with every connection busy", took)
	}
	if _, idle, refused, evicted := c.stats(); idle != 0 || refused != 1 || evicted != 1 {
		t.Errorf("stats: %d idle, %d refused, %d idle closed; want 0, 1, 1", idle, refused, evicted)
	}
}

func TestLimitListenerWakesOnIdle(t *testing.T) {
	t.Parallel()
	c := newCapped(t, 1, 10*time.Second)
	client := c.dial(t)
	first := c.next(t, time.Second)
	c.connState(first, http.StateActive)
	c.dial(t) // waits for room
	start := time.Now()
	c.connState(first, http.StateIdle)
	c.next(t, 5*time.Second)
	if took := time.Since(start); took > time.Second {
		t.Errorf("admitted %v after a connection turned idle, want at once", took)
	}
	closedWithin(t, client, time.Second)
}

func TestLimitListenerClosesSilentConnection(t *testing.T) {
	t.Parallel()
	const wait = 200 * time.Millisecond
	c := newCapped(t, 1, wait)
	silent := c.dial(t)
	c.next(t, time.Second) // never begins a request
	start := time.Now()
	c.dial(t)
	c.next(t, 5*time.Second)
	if took := time.Since(start); took > 5*wait {
		t.Errorf("admitted after %v, want within about %v", took, wait)
	}
	closedWithin(t, silent, time.Second)
}

// emfileListener fails every Accept with EMFILE, as a listener does when the
// process is out of file descriptors.
type emfileListener struct {
	net.Listener
	accepts atomic.Int64
}

func (l *emfileListener) Accept() (net.Conn, error) {
	l.accepts.Add(1)
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
}

// TestLimitListenerEMFILEBacksOff checks that an Accept failing with EMFILE
// reaches http.Server as the temporary error it is, so that the server
// retries with a growing delay rather than spinning.
func TestLimitListenerEMFILEBacksOff(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inner := &emfileListener{Listener: ln}
	lim := newLimitListener(inner, 10, time.Second)
	hs := &http.Server{ErrorLog: log.New(io.Discard, "", 0), ConnState: lim.connState}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(lim) }()
	// http.Server retries after 5ms, 10ms, 20ms, ...: its fifth try comes
	// 75ms after the first, where a loop that spins makes it at once.
	start := time.Now()
	for inner.accepts.Load() < 5 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d accepts in 10s", inner.accepts.Load())
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	hs.Close()
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if took < 50*time.Millisecond {
		t.Errorf("5 accepts failing with EMFILE within %v, want a backoff between them", took)
	}
}

func TestDefaultMaxConnections(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ files, want int }{
		{16, 8},
		{1024, 512},
		{2048, 1024},
		{4096, 3072},
		{20000, 15000},
		{1 << 20, MaxConnectionsCeiling},
	} {
		if got := defaultMaxConnections(tc.files); got != tc.want {
			t.Errorf("defaultMaxConnections(%d) = %d, want %d", tc.files, got, tc.want)
		}
	}
	if n := DefaultMaxConnections(); n < 1 || n > MaxConnectionsCeiling {
		t.Errorf("DefaultMaxConnections() = %d", n)
	}
}
