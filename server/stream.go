package server

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
)

// This file bounds what the streams (device watches and the backend feed)
// may hold, so that readers who never read cannot take the server's memory
// or descriptors: how many watches a user and a device may have open, how
// many feed watches are open in all, and how long one message may wait to be
// written. Memory per stream is bounded by sending in pages of
// Config.StreamPageBytes (see watch.go and feed.go).

// watchCounts counts the open device watches per user and per device.
type watchCounts struct {
	mu      sync.Mutex
	users   map[string]int
	devices map[deviceKey]int
}

// deviceKey names a device: device ids are the device's own choice, so
// they are only unique within a user.
type deviceKey struct{ user, device string }

// admitWatch counts a new watch of user's device, or refuses it when the
// device or the user has as many open as allowed. release uncounts it.
func (s *Server) admitWatch(user, device string) (release func(), err error) {
	c := &s.watches
	d := deviceKey{user, device}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.devices[d]; n >= s.cfg.MaxWatchesPerDevice {
		return nil, engine.Errorf(engine.ErrLimit, "device %q has %d watches open, the most one device may have (--max-watches-per-device); close one before opening another", device, n)
	}
	if n := c.users[user]; n >= s.cfg.MaxWatchesPerUser {
		return nil, engine.Errorf(engine.ErrLimit, "user %q has %d watches open, the most one user may have (--max-watches-per-user); close one before opening another", user, n)
	}
	if c.users == nil {
		c.users, c.devices = make(map[string]int), make(map[deviceKey]int)
	}
	c.users[user]++
	c.devices[d]++
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.users[user]--; c.users[user] == 0 {
				delete(c.users, user)
			}
			if c.devices[d]--; c.devices[d] == 0 {
				delete(c.devices, d)
			}
		})
	}, nil
}

// admitFeed counts a new backend feed watch, or refuses it when as many are
// open as allowed. release uncounts it.
func (s *Server) admitFeed() (release func(), err error) {
	for {
		n := s.hub.feedReaders.Load()
		if int(n) >= s.cfg.MaxFeedWatches {
			return nil, engine.Errorf(engine.ErrLimit, "%d backend feed watches are open, the most allowed (--max-feed-watches); close one before opening another", n)
		}
		if s.hub.feedReaders.CompareAndSwap(n, n+1) {
			var once sync.Once
			return func() { once.Do(func() { s.hub.feedReaders.Add(-1) }) }, nil
		}
	}
}

// errTooSlow marks a stream message not written within the write timeout;
// errClientGone a stream whose client went away.
var (
	errTooSlow    = errors.New("stream write timed out")
	errClientGone = errors.New("client went away")
)

// streamOut sends one stream's messages, each within the write timeout.
type streamOut struct {
	rc       *http.ResponseController // nil when the request came without one
	timeout  time.Duration
	timedOut bool
}

// newStreamOut returns the streamOut of the stream whose handler has ctx.
// Connect's handlers see no http.ResponseWriter; the one countRefused
// wraps every RPC's response in is in the request's context.
func (s *Server) newStreamOut(ctx context.Context) *streamOut {
	o := &streamOut{timeout: s.cfg.StreamWriteTimeout}
	if st := stateOf(ctx); st != nil && st.rec.ResponseWriter != nil {
		o.rc = http.NewResponseController(&st.rec)
	}
	return o
}

// send sends msg on stream. A message not written within the timeout fails
// with errTooSlow: the connection is then broken, as a write cut off midway
// leaves it, and the client sees the stream cut. Any other failure is
// errClientGone. The deadline is cleared once the message is written:
// HTTP/2 resets a stream whose deadline passes even while it is idle.
func send[T any](o *streamOut, stream *connect.ServerStream[T], msg *T) error {
	var deadline time.Time
	if o.rc != nil {
		deadline = time.Now().Add(o.timeout)
		if o.rc.SetWriteDeadline(deadline) != nil {
			o.rc = nil // the connection cannot take deadlines
		}
	}
	err := stream.Send(msg)
	switch {
	case err == nil:
		if o.rc != nil {
			_ = o.rc.SetWriteDeadline(time.Time{})
		}
		return nil
	case o.rc != nil && !time.Now().Before(deadline):
		o.timedOut = true
		return errTooSlow
	}
	return errClientGone
}

// finish gives the message that ends the stream (its status, written after
// the handler returns) a write deadline of its own; none after a timeout,
// since nothing more can be written then.
func (o *streamOut) finish() {
	if o.rc != nil && !o.timedOut {
		_ = o.rc.SetWriteDeadline(time.Now().Add(o.timeout))
	}
}
