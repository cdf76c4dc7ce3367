package engine

import (
	"errors"

	"github.com/dalvdb/dalv/value"
)

// The engine's errors. Each is wrapped with a message that says what was
// wrong; package server maps them to Connect codes in one table.
var (
	// ErrInvalid marks malformed input: a bad key, op, value or field. It
	// is value.ErrInvalid, the error of the checks the clients share.
	ErrInvalid = value.ErrInvalid
	// ErrLimit marks input past a configured limit; the message names it.
	// It is value.ErrLimit.
	ErrLimit = value.ErrLimit
	// ErrPermission marks a write the caller may not make: a device writing
	// a system-domain key or a shared partition.
	ErrPermission = errors.New("permission denied")
	// ErrStale marks a backend commit whose expected version is not the
	// partition's version.
	ErrStale = errors.New("stale expected version")
	// ErrKeyReused marks a backend commit whose idempotency key already
	// named a commit with other ops or another expected version.
	ErrKeyReused = errors.New("idempotency key reused for another commit")
	// ErrChanged marks a read across several views (an export) that found
	// the partition changed between them; reading again may succeed.
	ErrChanged = errors.New("partition changed while read")
	// ErrState marks an op the key's current state does not allow, such as
	// a list op on a key that holds a scalar.
	ErrState = errors.New("key state does not allow the op")
	// ErrOutOfRange marks a feed cursor older than the retention horizon:
	// the commits after it were compacted.
	ErrOutOfRange = errors.New("out of range")
)

// Errorf returns an error of kind (one of the errors above) whose message is
// only the formatted text; it is value.Errorf.
func Errorf(kind error, format string, args ...any) error {
	return value.Errorf(kind, format, args...)
}

// The shared rules the engine enforces, kept in package value so that the
// clients check them without importing the engine.
type (
	// Limits are the sizes the engine enforces; see value.Limits.
	Limits = value.Limits
)
