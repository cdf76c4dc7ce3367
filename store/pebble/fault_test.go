package pebble

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/dalvdb/dalv/internal/diskfault"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
)

// TestDiskFaultStopsAcknowledging injects each kind of disk fault while four
// writers commit: the commits that meet it fail with store.ErrUnavailable,
// so does every later call, Healthy reports it, Close returns, and the
// directory opened again on a healthy disk holds every acknowledged commit
// and takes new ones.
func TestDiskFaultStopsAcknowledging(t *testing.T) {
	for _, kind := range diskfault.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var fault atomic.Pointer[diskfault.Kind]
			s, err := Open(dir, Options{FS: errorfs.Wrap(vfs.Default, diskfault.Injector(&fault))})
			if err != nil {
				t.Fatal(err)
			}
			const writers = 4
			var acked [writers]atomic.Uint64
			failures := make(chan error, writers)
			var wg sync.WaitGroup
			for w := range writers {
				p := store.Partition{Name: fmt.Sprint("user", w)}
				wg.Go(func() {
					for i := uint64(1); ; i++ {
						c := store.Commit{Entries: []store.Entry{{Key: "a", Value: []byte(fmt.Sprint(i))}}, Device: "d0", Batch: i}
						if err := commit(s, p, c); err != nil {
							failures <- err
							return
						}
						acked[w].Store(i)
					}
				})
			}
			wait.For(t, 30*time.Second, func() error {
				for w := range writers {
					if acked[w].Load() < 10 {
						return fmt.Errorf("writer %d has %d commits", w, acked[w].Load())
					}
				}
				return nil
			})
			fault.Store(&kind)
			wg.Wait()
			close(failures)
			for err := range failures {
				t.Logf("commit under %s: %v", kind, err)
				if !errors.Is(err, store.ErrUnavailable) {
					t.Errorf("commit under %s: %v, want an error wrapping store.ErrUnavailable", kind, err)
				}
			}
			if err := s.Healthy(); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("Healthy after %s: %v, want store.ErrUnavailable", kind, err)
			}
			// The disk is healthy again, but the store stays failed: its
			// memtable may hold commits that were never synced.
			fault.Store(nil)
			p := store.Partition{Name: "user0"}
			if err := commit(s, p, store.Commit{Entries: []store.Entry{{Key: "b"}}}); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("Update after the fault: %v, want store.ErrUnavailable", err)
			}
			if err := s.View(context.Background(), p, func(store.Reader) error { return nil }); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("View after the fault: %v, want store.ErrUnavailable", err)
			}
			if err := s.Feed(context.Background(), "", func(store.FeedRecord) (bool, error) { return true, nil }); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("Feed after the fault: %v, want store.ErrUnavailable", err)
			}
			if _, err := s.Compact(context.Background(), time.Now()); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("Compact after the fault: %v, want store.ErrUnavailable", err)
			}
			closed := make(chan error, 1)
			go func() { closed <- s.Close() }()
			select {
			case err := <-closed:
				t.Logf("Close after %s: %v", kind, err)
			case <-time.After(30 * time.Second):
				t.Fatal("Close after a disk fault did not return in 30s")
			}

			s = mustOpen(t, dir, Options{})
			for w := range writers {
				p := store.Partition{Name: fmt.Sprint("user", w)}
				var head store.Head
				var a store.Entry
				err := s.View(context.Background(), p, func(r store.Reader) (err error) {
					if head, err = r.Head(); err != nil {
						return err
					}
					a, _, err = r.Get("a")
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				// The commit the fault met may or may not be there: its
				// writer was told the outcome is unknown.
				if n := acked[w].Load(); head.Version < n || head.Version > n+1 {
					t.Errorf("%s reopened at version %d, acknowledged %d", p, head.Version, n)
				}
				if string(a.Value) != fmt.Sprint(head.Version) {
					t.Errorf("%s reopened at version %d holds a=%q", p, head.Version, a.Value)
				}
			}
			mustCommit(t, s, p, store.Commit{Entries: []store.Entry{{Key: "b"}}})
		})
	}
}

// TestViewNeverSeesUnsyncedCommit holds a commit's WAL fsync, runs a View
// of its partition meanwhile, then fails the fsync: the View must not have
// read the commit (Pebble makes a batch visible before its fsync ends), and
// fails with store.ErrUnavailable instead.
func TestViewNeverSeesUnsyncedCommit(t *testing.T) {
	t.Parallel()
	held := make(chan struct{})
	release := make(chan struct{})
	var hold atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if hold.Load() && strings.HasSuffix(op.Path, ".log") && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) {
			if hold.CompareAndSwap(true, false) {
				close(held)
				<-release
			}
			return diskfault.WALSync.Error(op)
		}
		return nil
	})
	s, err := Open(t.TempDir(), Options{FS: errorfs.Wrap(vfs.Default, inj)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // before Close, which waits for the held commit
	p := store.Partition{Name: "user"}
	mustCommit(t, s, p, store.Commit{Entries: []store.Entry{{Key: "a", Value: []byte("1")}}})
	hold.Store(true)
	committed := make(chan error, 1)
	go func() {
		committed <- commit(s, p, store.Commit{Entries: []store.Entry{{Key: "a", Value: []byte("2")}}})
	}()
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the commit never reached its fsync")
	}
	viewed := make(chan error, 1)
	go func() {
		viewed <- s.View(context.Background(), p, func(r store.Reader) error {
			h, err := r.Head()
			if err == nil && h.Version != 1 {
				err = fmt.Errorf("a View read version %d, whose fsync had not ended", h.Version)
			}
			return err
		})
	}()
	// Give the View every chance to read before the fsync fails: it either
	// reads the synced state or waits for the commit.
	select {
	case err := <-viewed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(200 * time.Millisecond):
		free()
		if err := <-viewed; !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("View that waited for a failed commit: %v, want store.ErrUnavailable", err)
		}
	}
	free()
	if err := <-committed; !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("commit whose fsync failed: %v, want store.ErrUnavailable", err)
	}
}
