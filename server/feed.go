package server

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// Watch follows the change feed across all partitions from a cursor:
// at-least-once, in commit order per partition, resumable from any cursor
// it delivered.
func (h *backendService) Watch(ctx context.Context, req *connect.Request[dalvv1.BackendServiceWatchRequest], stream *connect.ServerStream[dalvv1.ChangeEvent]) error {
	s := h.s
	return s.toConnect(req.Spec().Procedure, s.feed(ctx, req, stream))
}

func (s *Server) feed(ctx context.Context, req *connect.Request[dalvv1.BackendServiceWatchRequest], stream *connect.ServerStream[dalvv1.ChangeEvent]) error {
	out := s.newStreamOut(ctx)
	defer out.finish()
	prefixes := req.Msg.GetPrefixes()
	if err := engine.ValidatePrefixes(prefixes, s.eng.Limits()); err != nil {
		return err
	}
	release, err := s.admitFeed()
	if err != nil {
		return err
	}
	defer release()
	s.metrics.feedReaders.Inc()
	defer s.metrics.feedReaders.Dec()
	if s.remote != nil {
		defer s.remote.hold(ctx)() // before the feed's first read, so no commit falls between
	}
	f, err := s.eng.OpenFeed(ctx, req.Msg.GetCursor(), prefixes, s.cfg.StreamPageBytes)
	if err != nil {
		return err
	}
	cursor := f.Cursor()
	err = s.followFeed(ctx, stream, out, f, &cursor)
	switch {
	case errors.Is(err, errClientGone):
		return nil
	case errors.Is(err, errTooSlow):
		s.metrics.streamTimeouts.WithLabelValues("feed").Inc()
		s.log.Debug("feed watch ended: a message waited too long to be written", "cursor", cursor)
		return engine.Errorf(errRateLimited, "feed watcher too slow: a message waited more than %v to be written (--stream-write-timeout); resume from cursor %q", s.cfg.StreamWriteTimeout, cursor)
	}
	return err
}

// followFeed sends the feed f reads, page by page, then each commit as it
// comes, until the stream ends; *cursor resumes after the last record sent.
func (s *Server) followFeed(ctx context.Context, stream *connect.ServerStream[dalvv1.ChangeEvent], out *streamOut, f *engine.FeedReader, cursor *string) error {
	// Tell the consumer where it stands at once, so it can resume from here.
	if err := send(out, stream, &dalvv1.ChangeEvent{Heartbeat: true, Cursor: *cursor}); err != nil {
		return err
	}
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	for {
		wake := s.hub.feedWait() // before reading, so no commit falls between
		page, full, err := f.Next(ctx)
		if err != nil {
			return err
		}
		for _, r := range page {
			if r.Event != nil {
				if err := send(out, stream, r.Event); err != nil {
					return err
				}
			}
			*cursor = r.Cursor
		}
		if full {
			select {
			case <-s.drain:
				return engine.Errorf(errUnavailable, "server is shutting down; reconnect and resume from cursor %q", *cursor)
			default:
				continue // more to read
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.drain:
			return engine.Errorf(errUnavailable, "server is shutting down; reconnect and resume from cursor %q", *cursor)
		case <-wake:
		case <-heartbeat.C:
			// Wake for the poll too: a commit made by another node
			// announces itself to that node only.
			if err := send(out, stream, &dalvv1.ChangeEvent{Heartbeat: true, Cursor: *cursor}); err != nil {
				return err
			}
		}
	}
}
