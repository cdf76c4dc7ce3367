package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
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
	if err := engine.ValidateDeviceID(m.GetDeviceId()); err != nil {
		return nil, nil, err
	}
	if err := s.validatePrefixes(m.GetPrefixes()); err != nil {
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
	// Subscribe before reading the catch-up, so no commit falls between.
	sub := s.hub.subscribe(w.p, s.cfg.WatchBuffer)
	defer s.hub.unsubscribe(w.p, sub)
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
	case ev.version == w.at+1 && !ev.erase && !ev.remote:
		changes := w.filter(ev.changes)
		if len(changes) > 0 {
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
// device's pulls do. Only one page is held at a time, so a watch's memory
// does not grow with the partition. A live watch (sub set) that overflows
// its buffer meanwhile ends between pages, as it would between events: it
// reads slower than its partition changes. The first catch-up runs to the
// end whatever comes meanwhile, so a large partition is always caught up.
func (w *deviceWatch) catchUp(ctx context.Context, sub *subscription) error {
	var resetHorizon uint64
	for {
		resp, err := w.s.eng.PullPage(ctx, w.p, w.at, resetHorizon, w.s.cfg.StreamPageBytes)
		if err != nil {
			return err
		}
		if resp.GetVersion() == w.at && !resp.GetReset_() && len(resp.GetChanges()) == 0 {
			return nil // nothing new
		}
		ev := &dalvv1.WatchEvent{Version: resp.GetVersion(), Changes: w.filter(resp.GetChanges()), Reset_: resp.GetReset_(), More: resp.GetMore()}
		if err := send(w.out, w.stream, ev); err != nil {
			return err
		}
		w.at = resp.GetVersion()
		if !resp.GetMore() {
			return nil
		}
		if sub != nil && !resp.GetReset_() && sub.hasOverflowed() {
			return w.fellBehind() // never inside a reset: it resumes from nowhere
		}
		if resp.GetReset_() {
			resetHorizon = resp.GetHorizon()
		}
	}
}

func (w *deviceWatch) filter(changes []*dalvv1.Change) []*dalvv1.Change {
	if len(w.prefixes) == 0 {
		return changes
	}
	out := make([]*dalvv1.Change, 0, len(changes))
	for _, c := range changes {
		if hasAnyPrefix(c.GetKey(), w.prefixes) {
			out = append(out, c)
		}
	}
	return out
}

func hasAnyPrefix(key string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func (s *Server) validatePrefixes(prefixes []string) error {
	lim := s.eng.Limits()
	if len(prefixes) > lim.MaxOps {
		return engine.Errorf(engine.ErrLimit, "%d prefixes, over the limit of %d (--max-ops)", len(prefixes), lim.MaxOps)
	}
	for _, p := range prefixes {
		if p == "" {
			return engine.Errorf(engine.ErrInvalid, "empty prefix; leave prefixes empty to watch every key")
		}
		if err := engine.ValidateKey(p, lim.MaxKeyBytes); err != nil {
			return err
		}
	}
	return nil
}
