package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// Watch streams what a device missed after fromVersion, collapsed as Sync
// collapses it (or a reset past the horizon), then every later commit of the
// partition as it happens, each event carrying its version.
func (h *clientService) Watch(ctx context.Context, req *connect.Request[dalvv1.WatchRequest], stream *connect.ServerStream[dalvv1.WatchEvent]) error {
	s := h.s
	out := s.newStreamOut(ctx)
	defer out.finish()
	// The watch is opened in a call of its own, so that an idle watch's
	// stack holds only what following it needs: thousands are open.
	w, release, err := s.openWatch(ctx, req, stream, out)
	if err != nil {
		return s.toConnect(req.Spec().Procedure, err)
	}
	defer release()
	return s.toConnect(req.Spec().Procedure, w.end(w.follow(ctx)))
}

// openWatch checks a watch request and admits it under the caps; release
// uncounts it.
func (s *Server) openWatch(ctx context.Context, req *connect.Request[dalvv1.WatchRequest], stream *connect.ServerStream[dalvv1.WatchEvent], out *streamOut) (w *deviceWatch, release func(), err error) {
	claims, err := s.device(ctx, req.Header())
	if err != nil {
		return nil, nil, err
	}
	m := req.Msg
	p, err := s.devicePartition(claims, m.GetShared())
	if err != nil {
		return nil, nil, err
	}
	if err := value.ValidateDeviceID(m.GetDeviceId()); err != nil {
		return nil, nil, err
	}
	if err := engine.ValidatePrefixes(m.GetPrefixes(), s.eng.Limits()); err != nil {
		return nil, nil, err
	}
	if release, err = s.admitWatch(claims.Subject, m.GetDeviceId()); err != nil {
		return nil, nil, err
	}
	w = &deviceWatch{s: s, p: p, user: claims.Subject, device: m.GetDeviceId(), prefixes: m.GetPrefixes(), stream: stream, out: out, at: m.GetFromVersion()}
	return w, release, nil
}

// end turns how a watch ended into what its client is told: nothing when
// it went away, "too slow" when a message was not written in time.
func (w *deviceWatch) end(err error) error {
	switch {
	case errors.Is(err, errClientGone):
		return nil
	case errors.Is(err, errTooSlow):
		s := w.s
		s.metrics.streamTimeouts.WithLabelValues("device").Inc()
		s.log.Debug("watch ended: a message waited too long to be written", "user", w.user, "device", w.device, "version", w.at)
		return engine.Errorf(errRateLimited, "watcher too slow: a message waited more than %v to be written (--stream-write-timeout); resume from version %d", s.cfg.StreamWriteTimeout, w.at)
	}
	return err
}

// follow sends the catch-up, then live commits, until the watch ends.
func (w *deviceWatch) follow(ctx context.Context) error {
	s := w.s
	// Subscribe, and listen for other processes' commits, before reading
	// the catch-up, so no commit falls between.
	sub := s.hub.subscribe(w.p, s.cfg.WatchBuffer)
	defer s.hub.unsubscribe(w.p, sub)
	if s.remote != nil {
		defer s.remote.hold(ctx)()
	}
	s.metrics.watchers.Inc()
	defer s.metrics.watchers.Dec()
	if err := w.catchUp(ctx, nil); err != nil {
		return err
	}
	// A heartbeat marks the end of the catch-up: from here on, live.
	if err := send(w.out, w.stream, &dalvv1.WatchEvent{Version: w.at, Heartbeat: true}); err != nil {
		return err
	}
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.drain:
			return engine.Errorf(errUnavailable, "server is shutting down; reconnect and resume from version %d", w.at)
		case <-sub.overflowed:
			return w.fellBehind()
		case ev := <-sub.ch:
			// An overflow while the event waited wins: select picks among
			// ready cases at random, and an event after a dropped one would
			// otherwise have the watch read everything since from the store.
			if sub.hasOverflowed() {
				return w.fellBehind()
			}
			if err := w.deliver(ctx, ev, sub); err != nil {
				return err
			}
		case <-heartbeat.C:
			if s.notifier != nil {
				// A store shared with other processes: poll too, in case a
				// notification was lost.
				if err := w.catchUp(ctx, sub); err != nil {
					return err
				}
			}
			if err := send(w.out, w.stream, &dalvv1.WatchEvent{Version: w.at, Heartbeat: true}); err != nil {
				return err
			}
		}
	}
}

// fellBehind is the error that ends a watch whose buffer overflowed.
func (w *deviceWatch) fellBehind() error {
	w.s.metrics.slowWatchers.Inc()
	return engine.Errorf(errRateLimited, "watcher too slow: it fell more than %d commits behind; resume from version %d", w.s.cfg.WatchBuffer, w.at)
}

// deviceWatch is the state of one device watch: the version it has sent.
type deviceWatch struct {
	s        *Server
	p        store.Partition
	user     string
	device   string
	prefixes []string
	stream   *connect.ServerStream[dalvv1.WatchEvent]
	out      *streamOut
	at       uint64
}

// deliver sends a live commit; a commit that does not follow the last one
// sent (a gap, an erase, or an order the notifications lost) is read from
// the store instead.
func (w *deviceWatch) deliver(ctx context.Context, ev *commitEvent, sub *subscription) error {
	switch {
	case ev.version <= w.at:
		return nil // already sent by the catch-up
	case ev.version == w.at+1 && !ev.erase && !ev.unread:
		changes := engine.FilterChanges(ev.changes, w.prefixes)
		// A commit that changes nothing the watch shows is still sent to a
		// watch of the whole partition: the device learns its version (it
		// would otherwise stay behind until it next syncs).
		if len(changes) > 0 || len(w.prefixes) == 0 {
			if err := send(w.out, w.stream, &dalvv1.WatchEvent{Version: ev.version, Changes: changes}); err != nil {
				return err
			}
		}
		w.at = ev.version
		return nil
	}
	return w.catchUpAfter(ctx, sub, ev.version)
}

// catchUp sends everything after w.at from the store, in pages of at most
// StreamPageBytes (or one commit), following a reset across pages as a
// device's pulls do (see [engine.Engine.CatchUp]). A live watch (sub set)
// that overflows its buffer meanwhile ends between pages, as it would
// between events: it reads slower than its partition changes. The first
// catch-up runs to the end whatever comes meanwhile, so a large partition
// is always caught up.
func (w *deviceWatch) catchUp(ctx context.Context, sub *subscription) error {
	return w.catchUpWith(ctx, sub, nil)
}

// catchUpAfter is catchUp when the watch has heard of the commit at
// version: it reads each page together with the other watches of the
// partition that ask for it after that commit at the same time. A commit
// that every watch of a partition must read (another node's, announced by
// version alone, or an erase) is then read once, not once per watch.
func (w *deviceWatch) catchUpAfter(ctx context.Context, sub *subscription, version uint64) error {
	return w.catchUpWith(ctx, sub, func(ctx context.Context, p store.Partition, base, resetHorizon uint64, pageBytes int) (*dalvv1.SyncResponse, error) {
		return w.s.sharedPull(ctx, version, p, base, resetHorizon, pageBytes)
	})
}

// catchUpWith is catchUp reading each page with pull (nil: a read of its
// own).
func (w *deviceWatch) catchUpWith(ctx context.Context, sub *subscription, pull engine.PullPageFunc) error {
	return w.s.eng.CatchUp(ctx, pull, w.p, w.at, w.prefixes, w.s.cfg.StreamPageBytes, func(page *dalvv1.SyncResponse) error {
		ev := &dalvv1.WatchEvent{Version: page.GetVersion(), Changes: page.GetChanges(), Reset_: page.GetReset_(), More: page.GetMore()}
		if err := send(w.out, w.stream, ev); err != nil {
			return err
		}
		w.at = page.GetVersion()
		if page.GetMore() && !page.GetReset_() && sub != nil && sub.hasOverflowed() {
			return w.fellBehind() // never inside a reset: it resumes from nowhere
		}
		return nil
	})
}

// sharedPull is [engine.Engine.PullPage] for a watch that heard of the
// commit at version, shared with every other such call for the same page
// while it runs. Any read begun once a watch heard of the commit sees it,
// so each caller gets what a read of its own would give. The read does not
// end with the first caller's ctx, which would fail it for the others; a
// caller whose ctx ends stops waiting for it.
func (s *Server) sharedPull(ctx context.Context, version uint64, p store.Partition, base, resetHorizon uint64, pageBytes int) (*dalvv1.SyncResponse, error) {
	key := p.String()
	for _, n := range []uint64{version, base, resetHorizon, uint64(pageBytes)} {
		key += "\x00" + strconv.FormatUint(n, 10)
	}
	read := s.pulls.DoChan(key, func() (any, error) {
		return s.eng.PullPage(context.WithoutCancel(ctx), p, base, resetHorizon, pageBytes)
	})
	select {
	case r := <-read:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*dalvv1.SyncResponse), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
