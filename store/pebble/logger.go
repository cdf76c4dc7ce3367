package pebble

import (
	"context"
	"fmt"
	"log/slog"
)

// slogLogger routes Pebble's logger to slog: informational messages at debug
// level, errors at warn level. Pebble calls Fatalf only where it cannot go on
// safely; that is logged at error level and then panics.
type slogLogger struct{ l *slog.Logger }

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
	panic("pebble: " + msg)
}
