package store

import "errors"

// ErrCorruption marks stored data that cannot be decoded; recovery code tells
// it apart from ordinary failures with errors.Is.
var ErrCorruption = errors.New("dalv store: corruption")

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("dalv store: closed")

// ErrCompacted is returned by Feed for a position older than the feed's
// retention horizon.
var ErrCompacted = errors.New("dalv store: feed position compacted away")

// ErrInvalidPos is returned by Feed for a position the store never gave.
var ErrInvalidPos = errors.New("dalv store: not a feed position of this store")

// ErrEmptyPartition is returned for a partition without a name.
var ErrEmptyPartition = errors.New("partition name is empty")

// ErrUnavailable marks a failure to reach the store's server (a lost or
// refused connection): the operation may succeed when tried again. An
// Update that fails with it may or may not have committed.
var ErrUnavailable = errors.New("dalv store: unavailable")
