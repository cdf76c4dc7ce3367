package server

import (
	"context"
	"encoding/base64"
	"errors"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
)

// StartCursor is the cursor that starts the change feed at the oldest
// retained commit.
const StartCursor = "start"

// feedBatch bounds the records read at once, as StreamPageBytes bounds
// their bytes: a page is read, then sent, so a consumer that does not read
// holds one page and no store resources, and a reader far behind still
// stops promptly on shutdown.
const feedBatch = 256

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
	if err := s.validatePrefixes(prefixes); err != nil {
		return err
	}
	release, err := s.admitFeed()
	if err != nil {
		return err
	}
	defer release()
	s.metrics.feedReaders.Inc()
	defer s.metrics.feedReaders.Dec()
	horizon, last, err := s.cfg.Store.FeedBounds(ctx)
	if err != nil {
		return err
	}
	var after store.FeedPos
	switch c := req.Msg.GetCursor(); c {
	case "":
		after = last
	case StartCursor:
		after = horizon
	default:
		if after, err = decodeCursor(c); err != nil {
			return err
		}
		// Let the store judge the position before anything is sent: a
		// cursor it never gave is refused as such, never as compacted.
		err := s.cfg.Store.Feed(ctx, after, func(store.FeedRecord) (bool, error) { return false, nil })
		if errors.Is(err, store.ErrInvalidPos) {
			return engine.Errorf(engine.ErrInvalid, "cursor %q is not one this feed gave; pass a delivered cursor, %q, or nothing for now", c, StartCursor)
		}
		if after < horizon || errors.Is(err, store.ErrCompacted) {
			return engine.Errorf(errOutOfRange, "cursor %q is older than the retention horizon: the commits after it were compacted; start again from %q or from now (empty cursor)", c, StartCursor)
		}
	}
	err = s.followFeed(ctx, stream, out, prefixes, &after)
	switch {
	case errors.Is(err, errClientGone):
		return nil
	case errors.Is(err, errTooSlow):
		s.metrics.streamTimeouts.WithLabelValues("feed").Inc()
		s.log.Debug("feed watch ended: a message waited too long to be written", "cursor", encodeCursor(after))
		return engine.Errorf(errRateLimited, "feed watcher too slow: a message waited more than %v to be written (--stream-write-timeout); resume from cursor %q", s.cfg.StreamWriteTimeout, encodeCursor(after))
	}
	return err
}

// followFeed sends the feed after *after, page by page, then each commit
// as it comes, until the stream ends; *after is the last position sent.
func (s *Server) followFeed(ctx context.Context, stream *connect.ServerStream[dalvv1.ChangeEvent], out *streamOut, prefixes []string, after *store.FeedPos) error {
	// Tell the consumer where it stands at once, so it can resume from here.
	if err := send(out, stream, &dalvv1.ChangeEvent{Heartbeat: true, Cursor: encodeCursor(*after)}); err != nil {
		return err
	}
	pageBytes := min(s.cfg.StreamPageBytes, s.eng.Limits().MaxResponseBytes)
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	for {
		wake := s.hub.feedWait() // before reading, so no commit falls between
		page, full, err := readFeedPage(ctx, s.cfg.Store, *after, prefixes, pageBytes)
		switch {
		case errors.Is(err, store.ErrInvalidPos):
			return engine.Errorf(engine.ErrInvalid, "cursor %q is not one this feed gave; pass a delivered cursor, %q, or nothing for now", encodeCursor(*after), StartCursor)
		case errors.Is(err, store.ErrCompacted):
			return engine.Errorf(errOutOfRange, "the feed fell behind the retention horizon at cursor %q; start again from %q", encodeCursor(*after), StartCursor)
		case err != nil:
			return err
		}
		for _, r := range page {
			if r.ev != nil {
				if err := send(out, stream, r.ev); err != nil {
					return err
				}
			}
			*after = r.pos
		}
		if full {
			select {
			case <-s.drain:
				return engine.Errorf(errUnavailable, "server is shutting down; reconnect and resume from cursor %q", encodeCursor(*after))
			default:
				continue // more to read
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.drain:
			return engine.Errorf(errUnavailable, "server is shutting down; reconnect and resume from cursor %q", encodeCursor(*after))
		case <-wake:
		case <-heartbeat.C:
			// Wake for the poll too: a commit made by another node
			// announces itself to that node only.
			if err := send(out, stream, &dalvv1.ChangeEvent{Heartbeat: true, Cursor: encodeCursor(*after)}); err != nil {
				return err
			}
		}
	}
}

// feedItem is one record of a feed page: its event, nil when the prefix
// filter leaves none of its ops, and its position.
type feedItem struct {
	ev  *dalvv1.ChangeEvent
	pos store.FeedPos
}

// readFeedPage reads the records after `after`: up to feedBatch of them and
// about pageBytes of ops (at least one record, whatever its size). full
// reports that it stopped at a bound, so more may follow at once.
func readFeedPage(ctx context.Context, st store.Feeder, after store.FeedPos, prefixes []string, pageBytes int) (page []feedItem, full bool, err error) {
	size := 0
	err = st.Feed(ctx, after, func(r store.FeedRecord) (bool, error) {
		ev, err := feedEvent(r, prefixes)
		if err != nil {
			return false, err
		}
		page = append(page, feedItem{ev: ev, pos: r.Pos})
		size += len(r.Ops)
		full = len(page) == feedBatch || size >= pageBytes
		return !full, nil
	})
	return page, full, err
}

// feedEvent turns a record into the event sent, or nil when the prefix
// filter leaves none of its ops (an erase is always sent).
func feedEvent(r store.FeedRecord, prefixes []string) (*dalvv1.ChangeEvent, error) {
	ev := &dalvv1.ChangeEvent{}
	if err := proto.Unmarshal(r.Ops, ev); err != nil {
		return nil, errors.Join(store.ErrCorruption, err)
	}
	if len(prefixes) > 0 && !r.Erase {
		ops := ev.Ops[:0]
		for _, op := range ev.GetOps() {
			if hasAnyPrefix(op.GetKey(), prefixes) {
				ops = append(ops, op)
			}
		}
		if len(ops) == 0 {
			return nil, nil
		}
		ev.Ops = ops
	}
	if r.Partition.Shared {
		ev.Shared = r.Partition.Name
	} else {
		ev.User = r.Partition.Name
	}
	ev.Version, ev.Erased, ev.Cursor = r.Version, r.Erase, encodeCursor(r.Pos)
	return ev, nil
}

// Cursors are opaque to clients: a version byte and the store's feed
// position, base64url. (The embedded store's positions are 8-byte seqs, so
// its cursors are the same bytes as before positions became opaque.)
const cursorV1 = 1

func encodeCursor(pos store.FeedPos) string {
	b := make([]byte, 1+len(pos))
	b[0] = cursorV1
	copy(b[1:], pos)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(c string) (store.FeedPos, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 || b[0] != cursorV1 {
		return "", engine.Errorf(engine.ErrInvalid, "cursor %q is not one this feed gave; pass a delivered cursor, %q, or nothing for now", c, StartCursor)
	}
	return store.FeedPos(b[1:]), nil
}
