package server

import (
	"context"
	"errors"
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
	return w.catchUp(ctx, sub)
}

// catchUp sends everything after w.at from the store, in pages of at most
// StreamPageBytes (or one commit), following a reset across pages as a
// device's pulls do (see [engine.Engine.CatchUp]). A live watch (sub set)
// that overflows its buffer meanwhile ends between pages, as it would
// between events: it reads slower than its partition changes. The first
// catch-up runs to the end whatever comes meanwhile, so a large partition
// is always caught up.
func (w *deviceWatch) catchUp(ctx context.Context, sub *subscription) error {
	return w.s.eng.CatchUp(ctx, w.p, w.at, w.prefixes, w.s.cfg.StreamPageBytes, func(page *dalvv1.SyncResponse) error {
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
