// Package diskfault injects disk faults into the embedded store's file
// system, through Pebble's errorfs, for tests: a failed write or fsync of
// the write-ahead log, a full disk, or a slow one.
//
// In a test process, [Injector] gives the injector to wrap a store's
// [vfs.FS] with. For a real `dalv serve` process, the environment variable
// [EnvVar] names a trigger file: while it is set, serve opens its store on
// [TriggerFS], which reads the trigger file before each write, sync or
// preallocation and injects the [Kind] the file holds (nothing while the
// file is absent or empty). The variable is for tests only and is not a
// flag, so it stays out of serve's help; serve logs a warning when it is
// set.
package diskfault

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// EnvVar names the trigger file of a `dalv serve` under test.
const EnvVar = "DALV_TEST_DISK_FAULTS"

// Kind is a kind of disk fault.
type Kind string

// The kinds of fault.
const (
	// WALWrite fails every write to a WAL file with EIO.
	WALWrite Kind = "wal-write"
	// WALSync fails every fsync of a WAL file with EIO.
	WALSync Kind = "wal-sync"
	// Full fails every write and preallocation of any file with ENOSPC, as
	// a full disk does.
	Full Kind = "enospc"
	// SlowSync makes every fsync take SlowSyncDelay longer and succeed, as
	// a slow or overloaded disk does.
	SlowSync Kind = "slow-sync"
)

// SlowSyncDelay is what SlowSync adds to each fsync.
const SlowSyncDelay = 50 * time.Millisecond

// Kinds are the kinds that fail operations, in the order tests run them.
var Kinds = []Kind{WALWrite, WALSync, Full}

// Injected counts the faults injected in this process.
var Injected atomic.Int64

// Parse returns the Kind s names (surrounding space ignored); "" is no
// fault.
func Parse(s string) (Kind, error) {
	k := Kind(strings.TrimSpace(s))
	if k == "" {
		return "", nil
	}
	if k == SlowSync || slices.Contains(Kinds, k) {
		return k, nil
	}
	return "", fmt.Errorf("diskfault: unknown fault %q (want one of %v or %s)", k, Kinds, SlowSync)
}

// Error returns the error op meets under a fault of kind k, or nil when k
// spares it. Under SlowSync it delays a sync and returns nil.
func (k Kind) Error(op errorfs.Op) error {
	wal := strings.HasSuffix(op.Path, ".log")
	var name string
	switch op.Kind {
	case errorfs.OpFileWrite, errorfs.OpFileWriteAt:
		name = "write"
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		name = "sync"
	case errorfs.OpFilePreallocate:
		name = "preallocate"
	default:
		return nil
	}
	if k == SlowSync {
		if name == "sync" {
			Injected.Add(1)
			time.Sleep(SlowSyncDelay) // the slow disk itself
		}
		return nil
	}
	var errno syscall.Errno
	switch {
	case k == WALWrite && wal && name == "write", k == WALSync && wal && name == "sync":
		errno = syscall.EIO
	case k == Full && name != "sync":
		errno = syscall.ENOSPC
	default:
		return nil
	}
	Injected.Add(1)
	return &os.PathError{Op: name + " (injected " + string(k) + ")", Path: op.Path, Err: errno}
}

// Injector injects the fault *kind holds while it holds one: a test sets it
// to start a fault and clears it to end one.
func Injector(kind *atomic.Pointer[Kind]) errorfs.Injector {
	return errorfs.InjectorFunc(func(op errorfs.Op) error {
		if k := kind.Load(); k != nil {
			return k.Error(op)
		}
		return nil
	})
}

// TriggerFS wraps base so that each write, sync or preallocation injects
// the fault named in the file trigger, when there is one. A trigger file
// naming no known kind fails the operation with an error that says so.
func TriggerFS(base vfs.FS, trigger string) vfs.FS {
	return errorfs.Wrap(base, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind.ReadOrWrite() != errorfs.OpIsWrite {
			return nil
		}
		b, err := os.ReadFile(trigger)
		if err != nil {
			return nil // no trigger file: no fault
		}
		k, err := Parse(string(b))
		if err != nil {
			return err
		}
		return k.Error(op)
	}))
}
