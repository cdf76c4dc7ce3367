package pebble

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/dalvdb/dalv/store"
)

// slogLogger routes Pebble's logger to slog: informational messages at debug
// level, errors at warn level. Pebble calls Fatalf only where it cannot go on
// safely (a WAL write or fsync that failed leaves its commit pipeline
// unusable); that is logged at error level, recorded in failed (when set) so
// the store refuses every later call, and then panics with a [fatalError].
type slogLogger struct {
	l      *slog.Logger
	failed *failure
}

func (s slogLogger) Infof(format string, args ...any) {
	if s.l.Enabled(context.Background(), slog.LevelDebug) {
		s.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (s slogLogger) Errorf(format string, args ...any) {
	if s.l.Enabled(context.Background(), slog.LevelWarn) {
		s.l.Warn(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (s slogLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.l.Error(msg, "component", "pebble")
	if s.failed != nil {
		s.failed.set(msg)
	}
	panic(fatalError(msg))
}

// fatalError is what Fatalf panics with. [Store.commit] recovers it from the
// commit it made (a failed WAL write or fsync); raised in one of Pebble's
// own goroutines (a failed MANIFEST write, say) it ends the process, which
// has then acknowledged nothing that was not synced.
type fatalError string

func (e fatalError) Error() string { return "pebble: " + string(e) }

// failure is the first fatal error of a store's database. Once it is set the
// database may hold commits that were never synced, so the store answers
// every call with it (see [Store.Healthy]) until it is opened again.
type failure struct{ err atomic.Pointer[error] }

// set records msg as the failure, unless one is recorded already.
func (f *failure) set(msg string) {
	err := fmt.Errorf("%w: the disk failed: %s; the store accepts nothing more until it is opened again on a healthy disk", store.ErrUnavailable, msg)
	f.err.CompareAndSwap(nil, &err)
}

// get returns the failure, or nil.
func (f *failure) get() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}
