package client

import "errors"

// The replica's errors. Callers branch with [errors.Is]; each is wrapped with
// a message that names the key, the file or the partition concerned.
var (
	// ErrNotFound is returned by reads of a key the replica does not hold.
	ErrNotFound = errors.New("key not found")

	// ErrSystemKey refuses a device write to a system-domain key: only
	// backends write keys under the server's system prefixes.
	ErrSystemKey = errors.New("system-domain key is read-only on devices")

	// ErrReadOnly refuses a device write to a shared partition.
	ErrReadOnly = errors.New("shared partitions are read-only on devices")

	// ErrLimit refuses a write that breaks one of the server's limits
	// (key, value, ops per commit, request or answer size).
	ErrLimit = errors.New("over a server limit")

	// ErrInvalid refuses a malformed write: an empty key, a key with
	// control characters, a list with a duplicate item.
	ErrInvalid = errors.New("invalid write")

	// ErrNotList refuses a list op on a key that holds a scalar, and is
	// returned when a list is read from a key that holds a scalar.
	ErrNotList = errors.New("key holds a scalar, not a list")

	// ErrLocked is returned by [Open] when another process (or another
	// [Replica] in this process) has the file open.
	ErrLocked = errors.New("replica file is in use by another process")

	// ErrClosed is returned by every method of a closed [Replica].
	ErrClosed = errors.New("replica is closed")

	// ErrCorrupt marks a replica file whose contents this package did not
	// write: damaged pages (a truncated file, flipped or overwritten bytes,
	// bad meta pages) or records it cannot decode. The message names the
	// file and the damage. [Open] checks the file and returns it rather
	// than crash; with [Options.OnCorrupt] set it recovers instead, setting
	// the file aside and salvaging its pending writes.
	ErrCorrupt = errors.New("replica file is corrupt")

	// ErrWrongUser refuses a token for another user than the one whose
	// data the replica holds.
	ErrWrongUser = errors.New("token is for another user than the replica's")

	// ErrNoServer is returned by [Replica.Sync] and [Replica.Start] when
	// [Options.ServerURL] is empty.
	ErrNoServer = errors.New("no server configured")

	// ErrConflictRounds is reported when a batch still conflicts after
	// [Options.MaxConflictRounds] rounds of resolving; the batch stays
	// pending and the next sync tries again.
	ErrConflictRounds = errors.New("conflicts not settled within the allowed rounds")

	// ErrNoConflict is returned by [Replica.Settle] for a key with no
	// deferred conflict in the inbox.
	ErrNoConflict = errors.New("no deferred conflict for the key")

	// ErrNotShared is returned by reads of a shared partition that
	// [Options.Shared] does not name.
	ErrNotShared = errors.New("shared partition not kept by this replica")

	// ErrRunning is returned by [Replica.Start] when the loop already runs.
	ErrRunning = errors.New("sync loop already running")
)
