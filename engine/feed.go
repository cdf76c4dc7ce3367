package engine

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"

	"google.golang.org/protobuf/proto"

	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/value"
)

// StartCursor is the cursor that starts the change feed at the oldest
// retained commit.
const StartCursor = "start"

// feedBatch bounds the records a feed page holds, as pageBytes bounds their
// bytes: a page is read, then sent, so a consumer that does not read holds
// one page and no store resources, and a reader far behind still stops
// promptly on shutdown.
const feedBatch = 256

// FeedItem is one record of a feed page.
type FeedItem struct {
	// Event is the record as a consumer gets it, nil when the prefix filter
	// leaves none of its ops (an erase is always kept).
	Event *dalvv1.ChangeEvent
	// Cursor resumes the feed after this record, kept or not.
	Cursor string
}

// FeedReader reads the change feed across all partitions from a cursor,
// page by page: at-least-once, in commit order per partition, resumable from
// any cursor it gave. It holds no store resources between pages. It is not
// safe for concurrent use.
type FeedReader struct {
	st        store.Feeder
	prefixes  []string
	pageBytes int
	after     store.FeedPos // the position of the last record read
}

// OpenFeed returns a reader of the feed after cursor: "" means from now,
// [StartCursor] from the oldest retained commit, and any other cursor is one
// the feed gave. A cursor the feed never gave is ErrInvalid; one older than
// the retention horizon is ErrOutOfRange. The reader keeps the records with
// an op on a key under one of prefixes (every record when there are none;
// an erase always), each cut to those ops. A page holds about pageBytes of
// ops; a pageBytes below 1 or above the response limit means the response
// limit.
func (e *Engine) OpenFeed(ctx context.Context, cursor string, prefixes []string, pageBytes int) (*FeedReader, error) {
	if err := ValidatePrefixes(prefixes, e.lim); err != nil {
		return nil, err
	}
	horizon, last, err := e.st.FeedBounds(ctx)
	if err != nil {
		return nil, err
	}
	f := &FeedReader{st: e.st, prefixes: prefixes, pageBytes: e.pageBytes(pageBytes)}
	switch cursor {
	case "":
		f.after = last
	case StartCursor:
		f.after = horizon
	default:
		if f.after, err = decodeCursor(cursor); err != nil {
			return nil, err
		}
		// Let the store judge the position before anything is read: a
		// cursor it never gave is refused as such, never as compacted, and
		// only the store knows whether its position is behind the horizon.
		err := e.st.Feed(ctx, f.after, func(store.FeedRecord) (bool, error) { return false, nil })
		if errors.Is(err, store.ErrInvalidPos) {
			return nil, invalidCursor(cursor)
		}
		if errors.Is(err, store.ErrCompacted) {
			return nil, Errorf(ErrOutOfRange, "cursor %q is older than the retention horizon: the commits after it were compacted; start again from %q or from now (empty cursor)", cursor, StartCursor)
		}
	}
	return f, nil
}

// Cursor returns the cursor after the last record read: where a consumer
// that got every record read so far resumes.
func (f *FeedReader) Cursor() string { return encodeCursor(f.after) }

// Next reads the records after the last one read: up to feedBatch of them
// and about the reader's page bytes of ops (at least one record, whatever
// its size). full reports that it stopped at a bound, so more may follow at
// once; a page that is not full reached the end of the feed for now. A
// reader that fell behind the retention horizon gets ErrOutOfRange. After an
// error the reader stays after the last page it returned.
func (f *FeedReader) Next(ctx context.Context) (page []FeedItem, full bool, err error) {
	size, last := 0, f.after
	err = f.st.Feed(ctx, f.after, func(r store.FeedRecord) (bool, error) {
		cursor := encodeCursor(r.Pos)
		ev, err := feedEvent(r, f.prefixes, cursor)
		if err != nil {
			return false, err
		}
		page = append(page, FeedItem{Event: ev, Cursor: cursor})
		last = r.Pos
		size += len(r.Ops)
		full = len(page) == feedBatch || size >= f.pageBytes
		return !full, nil
	})
	switch {
	case errors.Is(err, store.ErrInvalidPos):
		return nil, false, invalidCursor(f.Cursor())
	case errors.Is(err, store.ErrCompacted):
		return nil, false, Errorf(ErrOutOfRange, "the feed fell behind the retention horizon at cursor %q; start again from %q", f.Cursor(), StartCursor)
	case err != nil:
		return nil, false, err
	}
	f.after = last
	return page, full, nil
}

// feedEvent turns a record into the event a consumer gets, or nil when the
// prefix filter leaves none of its ops (an erase is always kept).
func feedEvent(r store.FeedRecord, prefixes []string, cursor string) (*dalvv1.ChangeEvent, error) {
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
	ev.Version, ev.Erased, ev.Cursor = r.Version, r.Erase, cursor
	return ev, nil
}

// Cursors are opaque to consumers: a format byte and the store's feed
// position, base64url without padding.
const cursorV1 = 1

func encodeCursor(pos store.FeedPos) string {
	b := make([]byte, 1+len(pos))
	b[0] = cursorV1
	copy(b[1:], pos)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor returns the feed position a cursor holds; a string that is
// no cursor of this format is ErrInvalid. Whether the position is one the
// store gave is the store's to judge.
func decodeCursor(c string) (store.FeedPos, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) == 0 || b[0] != cursorV1 {
		return "", invalidCursor(c)
	}
	return store.FeedPos(b[1:]), nil
}

func invalidCursor(c string) error {
	return Errorf(ErrInvalid, "cursor %q is not one this feed gave; pass a delivered cursor, %q, or nothing for now", c, StartCursor)
}

// ValidatePrefixes checks a watch's key-prefix filter against l: at most
// MaxOps prefixes, each a valid key. No prefixes means every key.
func ValidatePrefixes(prefixes []string, l Limits) error {
	if len(prefixes) > l.MaxOps {
		return Errorf(ErrLimit, "%d prefixes, over the limit of %d (--max-ops)", len(prefixes), l.MaxOps)
	}
	for _, p := range prefixes {
		if p == "" {
			return Errorf(ErrInvalid, "empty prefix; leave prefixes empty to watch every key")
		}
		if err := value.ValidateKey(p, l.MaxKeyBytes); err != nil {
			return err
		}
	}
	return nil
}

// FilterChanges returns the changes to keys under one of prefixes, in
// order; all of them when there are no prefixes. It never modifies changes.
func FilterChanges(changes []*dalvv1.Change, prefixes []string) []*dalvv1.Change {
	if len(prefixes) == 0 {
		return changes
	}
	out := make([]*dalvv1.Change, 0, len(changes))
	for _, c := range changes {
		if hasAnyPrefix(c.GetKey(), prefixes) {
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
