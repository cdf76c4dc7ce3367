package pebble

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.RunOptions(t, func(t *testing.T) store.Store { return mustOpen(t, t.TempDir(), Options{}) },
		storetest.Options{Dump: func(s store.Store) ([][]byte, error) { return dumpDB(s.(*Store)) }})
}

// dumpDB returns every key and every value in s's database.
func dumpDB(s *Store) ([][]byte, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return nil, err
	}
	var kvs [][]byte
	for valid := it.First(); valid; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, closeIter(err, it)
		}
		kvs = append(kvs, bytes.Clone(it.Key()), bytes.Clone(v))
	}
	return kvs, closeIter(nil, it)
}

// mustOpen opens a store and registers its Close, which also checks that no
// partition lock was left behind.
func mustOpen(t *testing.T, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if n := s.parts.len(); n != 0 {
			t.Errorf("%d partition locks left in the lock table", n)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// commit applies one commit of entries to p at the next version.
func commit(s *Store, p store.Partition, c store.Commit) error {
	return s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
		h, err := r.Head()
		if err != nil {
			return nil, err
		}
		c.Version = h.Version + 1
		if c.Time.IsZero() {
			c.Time = t0
		}
		for i := range c.Entries {
			c.Entries[i].Version = c.Version
			c.Entries[i].ScalarVersion = c.Version
		}
		return &c, nil
	})
}

func mustCommit(t *testing.T, s *Store, p store.Partition, c store.Commit) {
	t.Helper()
	if err := commit(s, p, c); err != nil {
		t.Fatalf("commit to %s: %v", p, err)
	}
}

// dump renders a partition's whole state: head, every entry, devices d0..d3.
func dump(t *testing.T, s *Store, p store.Partition) string {
	t.Helper()
	var b strings.Builder
	err := s.View(context.Background(), p, func(r store.Reader) error {
		h, err := r.Head()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "head %d/%d;", h.Version, h.Horizon)
		err = r.Changes(0, func(e store.Entry) (bool, error) {
			fmt.Fprintf(&b, " %s@%d/%d del=%v %q;", e.Key, e.Version, e.ScalarVersion, e.Deleted, e.Value)
			return true, nil
		})
		if err != nil {
			return err
		}
		for d := range 4 {
			n, err := r.DeviceBatch(fmt.Sprint("d", d))
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " d%d=%d", d, n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View(%s): %v", p, err)
	}
	return b.String()
}

// feed lists the visible feed records above the horizon as
// seq:partition@version.
// checkFeed reports an error, and false, unless the feed, as feed renders
// it, is want (records separated by spaces); what names the moment.
func checkFeed(t *testing.T, s *Store, what, want string) bool {
	t.Helper()
	if got := strings.Join(feed(t, s), " "); got != want {
		t.Errorf("%s = %s, want %s", what, got, want)
		return false
	}
	return true
}

func feed(t *testing.T, s *Store) []string {
	t.Helper()
	var got []string
	err := s.readFeed(context.Background(), s.feedFloor.Load(), func(seq uint64, r feedRecord) (bool, error) {
		got = append(got, fmt.Sprintf("%d:%s@%d", seq, r.Partition, r.Version))
		return true, nil
	})
	if err != nil {
		t.Fatalf("readFeed: %v", err)
	}
	return got
}

func TestReopenKeepsCommits(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	parts := []store.Partition{{Name: "alice"}, {Name: "bob"}, {Shared: true, Name: "alice"}}
	for i := range 30 {
		p := parts[i%len(parts)]
		c := store.Commit{
			Time:    t0.Add(time.Duration(i) * time.Minute),
			Entries: []store.Entry{{Key: fmt.Sprint("k", i%4), Value: []byte(strconv.Itoa(i))}},
			Device:  fmt.Sprint("d", i%3), Batch: uint64(i),
			Ops: []byte("ops"),
		}
		if i%5 == 4 {
			c.Entries[0] = store.Entry{Key: c.Entries[0].Key, Deleted: true}
		}
		if i == 22 {
			c.Erase = true
		}
		mustCommit(t, s, p, c)
	}
	if _, err := s.Compact(context.Background(), t0.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := make([]string, len(parts))
	for i, p := range parts {
		want[i] = dump(t, s, p)
	}
	wantFeed := feed(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, Options{})
	for i, p := range parts {
		if got := dump(t, s, p); got != want[i] {
			t.Errorf("%s after reopen:\n got %s\nwant %s", p, got, want[i])
		}
	}
	if got := feed(t, s); strings.Join(got, " ") != strings.Join(wantFeed, " ") {
		t.Errorf("feed after reopen = %v, want %v", got, wantFeed)
	}
	// Seqs go on from the last one.
	mustCommit(t, s, parts[0], store.Commit{})
	got := feed(t, s)
	lastSeq, _, _ := strings.Cut(wantFeed[len(wantFeed)-1], ":")
	n, _ := strconv.Atoi(lastSeq)
	if want := fmt.Sprintf("%d:%s@11", n+1, parts[0]); got[len(got)-1] != want {
		t.Errorf("feed record after reopen = %s, want %s", got[len(got)-1], want)
	}
}

// TestFeedSeqNeverReused drops every feed record, reopens, and commits: the
// new record's seq must be above every dropped one, or a feed consumer
// holding a cursor would skip it.
func TestFeedSeqNeverReused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := store.Partition{Name: "alice"}
	for range 5 {
		mustCommit(t, s, p, store.Commit{})
	}
	st, err := s.Compact(context.Background(), t0.Add(time.Hour))
	if err != nil || st.FeedRecords != 5 {
		t.Fatalf("Compact = %+v, %v, want 5 feed records dropped", st, err)
	}
	if got := feed(t, s); len(got) != 0 {
		t.Fatalf("feed after Compact = %v, want none", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, Options{})
	mustCommit(t, s, p, store.Commit{})
	checkFeed(t, s, "feed", "6:user:alice@6")
}

func TestFeedRecords(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{})
	p, q := store.Partition{Name: "alice"}, store.Partition{Shared: true, Name: "catalog"}
	mustCommit(t, s, p, store.Commit{Time: t0, Ops: []byte("op1")})
	mustCommit(t, s, q, store.Commit{Time: t0.Add(time.Second), Ops: []byte("op2")})
	mustCommit(t, s, p, store.Commit{Time: t0.Add(2 * time.Second), Erase: true})
	// The erase dropped alice's earlier record.
	var got []string
	err := s.readFeed(context.Background(), 0, func(seq uint64, r feedRecord) (bool, error) {
		got = append(got, fmt.Sprintf("%d %s@%d %s erase=%v %q", seq, r.Partition, r.Version, r.Time().UTC().Format(time.TimeOnly), r.Erase, r.Ops))
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`2 shared:catalog@1 00:00:01 erase=false "op2"`,
		`3 user:alice@2 00:00:02 erase=true ""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("feed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A seq in flight hides it and everything after it.
	seq := s.feed.alloc()
	if got, want := s.feed.visible(), seq-1; got != want {
		t.Errorf("visible with %d in flight = %d, want %d", seq, got, want)
	}
	mustCommit(t, s, q, store.Commit{})
	if got, want := len(feed(t, s)), 2; got != want {
		t.Errorf("feed records visible behind a seq in flight = %d, want %d", got, want)
	}
	s.feed.done(seq)
	if got, want := len(feed(t, s)), 3; got != want {
		t.Errorf("feed records visible after it finished = %d, want %d", got, want)
	}
}

func TestFeedSeqs(t *testing.T) {
	f := feedSeqs{next: 10}
	if got, want := f.visible(), uint64(9); got != want {
		t.Fatalf("visible() = %d, want %d", got, want)
	}
	a, b, c := f.alloc(), f.alloc(), f.alloc()
	for _, step := range []struct {
		done uint64
		want uint64
	}{{b, 9}, {a, 11}, {c, 12}} {
		f.done(step.done)
		if got := f.visible(); got != step.want {
			t.Errorf("visible() after done(%d) = %d, want %d", step.done, got, step.want)
		}
	}
}

func TestOpenLockedDir(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, dir + "/.", link} {
		_, err := Open(path, Options{})
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), path) {
			t.Errorf("second Open(%s) = %v, want an error wrapping ErrLocked naming the directory", path, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, dir, Options{})
}

// TestOpenLockedByOtherProcess runs this test binary as a second process
// that holds the directory.
func TestOpenLockedByOtherProcess(t *testing.T) {
	if dir := os.Getenv("DALV_TEST_HOLD_DIR"); dir != "" {
		holdDir(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenLockedByOtherProcess$")
	cmd.Env = append(os.Environ(), "DALV_TEST_HOLD_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("holder process: %v", err)
		}
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if line != "holding\n" {
			t.Fatalf("holder process said %q", line)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("holder process did not open the store within 30s")
	}
	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Open of a directory another process holds = %v, want an error wrapping ErrLocked naming it", err)
	}
}

// holdDir is the second process of TestOpenLockedByOtherProcess: it holds
// dir until its stdin closes.
func holdDir(dir string) {
	s, err := Open(dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("holding")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// TestCrashKeepsAcknowledgedCommits takes crash images of the file system
// while commits run: reopened, each holds every commit acknowledged before
// the image, and no commit in part.
func TestCrashKeepsAcknowledgedCommits(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("Seed", seed), func(t *testing.T) {
			fs := vfs.NewCrashableMem()
			s, err := Open("/db", Options{FS: fs})
			if err != nil {
				t.Fatal(err)
			}
			const writers = 4
			var acked [writers]atomic.Uint64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range writers {
				p := store.Partition{Name: fmt.Sprint("user", w)}
				wg.Go(func() {
					for i := 1; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						v := []byte(strconv.Itoa(i))
						c := store.Commit{Entries: []store.Entry{{Key: "a", Value: v}, {Key: "b", Value: v}}, Device: "d0", Batch: uint64(i)}
						if i%3 == 0 {
							c.Entries = append(c.Entries, store.Entry{Key: fmt.Sprint("t", i), Deleted: true})
						}
						if err := commit(s, p, c); err != nil {
							t.Errorf("commit: %v", err)
							return
						}
						acked[w].Store(uint64(i))
					}
				})
			}
			// Wait until every writer has some commits behind it.
			deadline := time.Now().Add(30 * time.Second)
			for w := range writers {
				for acked[w].Load() < 20 {
					if time.Now().After(deadline) {
						t.Fatal("writers made no progress in 30s")
					}
					runtime.Gosched()
				}
			}
			var before [writers]uint64
			for w := range writers {
				before[w] = acked[w].Load()
			}
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 50, RNG: rand.New(rand.NewPCG(seed, seed))})
			close(stop)
			wg.Wait()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s = mustOpen(t, "/db", Options{FS: crashed})
			for w := range writers {
				p := store.Partition{Name: fmt.Sprint("user", w)}
				err := s.View(context.Background(), p, func(r store.Reader) error {
					h, err := r.Head()
					if err != nil {
						return err
					}
					if h.Version < before[w] {
						t.Errorf("%s: head %d after crash, but %d was acknowledged", p, h.Version, before[w])
					}
					want := strconv.FormatUint(h.Version, 10)
					for _, key := range []string{"a", "b"} {
						e, ok, err := r.Get(key)
						if err != nil {
							return err
						}
						if !ok || string(e.Value) != want || e.Version != h.Version {
							t.Errorf("%s: Get(%s) = %+v, %v at head %d: a commit is half applied", p, key, e, ok, h.Version)
						}
					}
					if b, err := r.DeviceBatch("d0"); err != nil || b != h.Version {
						t.Errorf("%s: DeviceBatch(d0) = %d, %v, want %d", p, b, err, h.Version)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			// The reopened store takes commits and compacts.
			mustCommit(t, s, store.Partition{Name: "user0"}, store.Commit{})
			if _, err := s.Compact(context.Background(), t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCorruptEntry plants undecodable entries: reads fail with errors
// wrapping store.ErrCorruption, and nothing panics.
func TestCorruptEntry(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{})
	p := store.Partition{Name: "alice"}
	mustCommit(t, s, p, store.Commit{Entries: []store.Entry{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("1")}}})
	pid := appendPartition(nil, p)
	if err := s.db.Set(appendKey(nil, kindEntry, pid, "a"), []byte{0xfe, 1}, nil); err != nil {
		t.Fatal(err)
	}
	err := s.View(context.Background(), p, func(r store.Reader) error {
		if _, _, err := r.Get("a"); !errors.Is(err, store.ErrCorruption) {
			t.Errorf("Get(a) = %v, want ErrCorruption", err)
		}
		if err := r.Changes(0, func(store.Entry) (bool, error) { return true, nil }); !errors.Is(err, store.ErrCorruption) {
			t.Errorf("Changes(0) = %v, want ErrCorruption", err)
		}
		if err := r.Scan("", "", func(store.Entry) (bool, error) { return true, nil }); !errors.Is(err, store.ErrCorruption) {
			t.Errorf("Scan = %v, want ErrCorruption", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Set(appendKey(nil, kindHead, pid, ""), []byte{5, 6}, nil); err != nil { // horizon above version
		t.Fatal(err)
	}
	// The store keeps the heads it wrote; one opened afresh reads them.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, Options{})
	if err := commit(s, p, store.Commit{}); !errors.Is(err, store.ErrCorruption) {
		t.Errorf("commit on a corrupt head = %v, want ErrCorruption", err)
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		ok   bool
	}{
		{"Zero", Options{}, true},
		{"Sizes", Options{CacheSize: 1 << 20, MemTableSize: 4 << 20}, true},
		{"NegativeCache", Options{CacheSize: -1}, false},
		{"TinyMemTable", Options{MemTableSize: 1024}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.opts
			s, err := Open(t.TempDir(), tc.opts)
			if (err == nil) != tc.ok {
				t.Fatalf("Open(%+v) = %v, want ok %v", tc.opts, err, tc.ok)
			}
			if err == nil {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.opts != orig {
				t.Errorf("Open changed the caller's options: %+v, was %+v", tc.opts, orig)
			}
		})
	}
}

func TestDiskBytes(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{})
	mustCommit(t, s, store.Partition{Name: "alice"}, store.Commit{Entries: []store.Entry{{Key: "a", Value: make([]byte, 1<<16)}}})
	if got := s.DiskBytes(); got < 1<<16 {
		t.Errorf("DiskBytes() = %d after writing 64 KiB, want at least that", got)
	}
}

// TestRefusesMalformedCommits covers what the engine must never send:
// nothing of it is applied.
func TestRefusesMalformedCommits(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{})
	p := store.Partition{Name: "alice"}
	for _, tc := range []struct {
		name string
		p    store.Partition
		c    store.Commit
	}{
		{"EmptyPartition", store.Partition{}, store.Commit{Version: 1, Time: t0}},
		{"ZeroTime", p, store.Commit{Version: 1}},
		{"EntryVersion", p, store.Commit{Version: 1, Time: t0, Entries: []store.Entry{{Key: "a", Version: 2}}}},
		{"EmptyKey", p, store.Commit{Version: 1, Time: t0, Entries: []store.Entry{{Key: "", Version: 1}}}},
		{"KeyTwice", p, store.Commit{Version: 1, Time: t0, Entries: []store.Entry{{Key: "a", Version: 1}, {Key: "b", Version: 1}, {Key: "a", Version: 1}}}},
		{"KeyTwiceInALongCommit", p, store.Commit{Version: 1, Time: t0, Entries: longCommitWithKeyTwice()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Update(context.Background(), tc.p, func(store.Reader) (*store.Commit, error) { return &tc.c, nil })
			if err == nil {
				t.Fatalf("Update(%s, %+v) = nil, want an error", tc.p, tc.c)
			}
		})
	}
	if got := dump(t, s, p); got != "head 0/0; d0=0 d1=0 d2=0 d3=0" {
		t.Errorf("after refused commits: %s", got)
	}
	if got := feed(t, s); len(got) != 0 {
		t.Errorf("feed after refused commits = %v, want none", got)
	}
}

// TestEraseAfterReopen erases a partition whose records and tombstones were
// written before a reopen, next to a tombstone as written before tombstones
// had a time: the erase finds all it indexes, and Compact drops the old
// tombstone's index key later.
func TestEraseAfterReopen(t *testing.T) {
	const marker = "Zq7-marker"
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := store.Partition{Name: "alice"}
	mustCommit(t, s, p, store.Commit{Entries: []store.Entry{{Key: marker + "/a", Value: []byte("1")}}, Ops: []byte(marker)})
	mustCommit(t, s, p, store.Commit{Entries: []store.Entry{{Key: marker + "/a", Deleted: true}}, Ops: []byte(marker)})
	// A tombstone without a time, and its index key, as an older store
	// wrote them.
	pid := appendPartition(nil, p)
	legacy := marker + "/legacy"
	for _, kv := range [][2][]byte{
		{appendKey(nil, kindEntry, pid, legacy), encodeEntryAs(entryHeader{deleted: true, version: 2, scalar: 2}, nil)},
		{appendVersionKey(nil, pid, 2, legacy), nil},
		{appendTombKey(nil, uint64(t0.UnixNano()), pid, legacy), binary.AppendUvarint(nil, 2)},
	} {
		if err := s.db.Set(kv[0], kv[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, Options{})
	mustCommit(t, s, p, store.Commit{Time: t0.Add(time.Minute), Erase: true})
	holding := func() []string {
		kvs, err := dumpDB(s)
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		for i := 0; i < len(kvs); i += 2 {
			if bytes.Contains(kvs[i], []byte(marker)) || bytes.Contains(kvs[i+1], []byte(marker)) {
				found = append(found, fmt.Sprintf("%q", kvs[i]))
			}
		}
		return found
	}
	if got, want := strings.Join(holding(), " "), fmt.Sprintf("%q", appendTombKey(nil, uint64(t0.UnixNano()), pid, legacy)); got != want {
		t.Errorf("after erase, keys holding the marker = %s, want only the untimed tombstone's index key %s", got, want)
	}
	checkFeed(t, s, "feed after erase", "3:user:alice@3")
	st, err := s.Compact(context.Background(), t0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st, (store.CompactStats{}); got != want {
		t.Errorf("Compact = %+v, want %+v: the index item of an erased tombstone is not a drop", got, want)
	}
	if got := holding(); len(got) > 0 {
		t.Errorf("after Compact, keys holding the marker: %s", got)
	}
}

// TestEraseFeedOfOlderLayout erases a partition whose feed holds records
// as an older store wrote them (no link, a feed index key each, a head
// without the last record's seq) before linked ones: the erase drops both
// kinds, and Compact drops an older record's index key with it.
func TestEraseFeedOfOlderLayout(t *testing.T) {
	t.Parallel()
	const marker = "Wx3-marker"
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{})
	p := store.Partition{Name: "alice"}
	pid := appendPartition(nil, p)
	for seq := uint64(1); seq <= 3; seq++ {
		rec := feedRecord{Partition: p, Version: seq, Nanos: t0.Add(time.Duration(seq) * time.Second).UnixNano(), Ops: []byte(marker)}
		for _, kv := range [][2][]byte{
			{feedKey(seq), encodeFeedRecord(rec)},
			{appendFeedIndexKey(nil, pid, seq), nil},
			{appendKey(nil, kindHead, pid, ""), encodeHead(nil, store.Head{Version: seq}, 0, nil)},
		} {
			if err := s.db.Set(kv[0], kv[1], nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, dir, Options{})
	for i := range 2 {
		mustCommit(t, s, p, store.Commit{Time: t0.Add(time.Duration(10+i) * time.Second), Ops: []byte(marker)})
	}
	// Another partition's records between them stay.
	mustCommit(t, s, store.Partition{Name: "bob"}, store.Commit{Time: t0.Add(20 * time.Second), Ops: []byte("bob's")})
	mustCommit(t, s, p, store.Commit{Time: t0.Add(30 * time.Second), Ops: []byte(marker)})
	if !checkFeed(t, s, "feed", "1:user:alice@1 2:user:alice@2 3:user:alice@3 4:user:alice@4 5:user:alice@5 6:user:bob@1 7:user:alice@6") {
		t.FailNow()
	}
	// Retention drops the first record, and its index key.
	st, err := s.Compact(context.Background(), t0.Add(1500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if st.FeedRecords != 1 {
		t.Fatalf("Compact dropped %d feed records, want 1", st.FeedRecords)
	}
	if _, closer, err := s.db.Get(appendFeedIndexKey(nil, pid, 1)); err == nil {
		closer.Close()
		t.Error("Compact left the feed index key of the record it dropped")
	}
	mustCommit(t, s, p, store.Commit{Time: t0.Add(time.Minute), Erase: true})
	kvs, err := dumpDB(s)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(kvs); i += 2 {
		if bytes.Contains(kvs[i+1], []byte(marker)) || kvs[i][0] == kindFeedIndex {
			t.Errorf("after erase: key %q holds %q", kvs[i], kvs[i+1])
		}
	}
	checkFeed(t, s, "feed after erase", "6:user:bob@1 8:user:alice@7")
	// A second erase follows the link the first left: its own record.
	mustCommit(t, s, p, store.Commit{Time: t0.Add(2 * time.Minute), Ops: []byte(marker)})
	mustCommit(t, s, p, store.Commit{Time: t0.Add(3 * time.Minute), Erase: true})
	checkFeed(t, s, "feed after a second erase", "6:user:bob@1 10:user:alice@9")
}

// TestEraseAfterFeedCompacted erases a partition whose oldest feed records
// retention dropped: the erase follows its records' links down to the
// feed's floor and drops the rest.
func TestEraseAfterFeedCompacted(t *testing.T) {
	t.Parallel()
	s := mustOpen(t, t.TempDir(), Options{})
	p := store.Partition{Name: "alice"}
	for i := range 5 {
		mustCommit(t, s, p, store.Commit{Time: t0.Add(time.Duration(i) * time.Second), Ops: []byte("x")})
	}
	if _, err := s.Compact(context.Background(), t0.Add(2500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if !checkFeed(t, s, "feed after Compact", "4:user:alice@4 5:user:alice@5") {
		t.FailNow()
	}
	mustCommit(t, s, p, store.Commit{Time: t0.Add(time.Minute), Erase: true})
	checkFeed(t, s, "feed after erase", "6:user:alice@6")
}

// TestEraseRefusesBrokenFeedLink erases a partition one of whose linked
// feed records is missing above the feed's floor: the erase fails with
// ErrCorruption and changes nothing, rather than leave records behind.
func TestEraseRefusesBrokenFeedLink(t *testing.T) {
	t.Parallel()
	s := mustOpen(t, t.TempDir(), Options{})
	p := store.Partition{Name: "alice"}
	for range 3 {
		mustCommit(t, s, p, store.Commit{Ops: []byte("x")})
	}
	if err := s.db.Delete(feedKey(2), nil); err != nil {
		t.Fatal(err)
	}
	if err := commit(s, p, store.Commit{Erase: true}); !errors.Is(err, store.ErrCorruption) {
		t.Fatalf("erase over a missing feed record = %v, want ErrCorruption", err)
	}
	checkFeed(t, s, "feed after the refused erase", "1:user:alice@1 3:user:alice@3")
}

// longCommitWithKeyTwice is the entries of a commit longer than
// store.Commit.Check scans pairwise, with its last key twice.
func longCommitWithKeyTwice() []store.Entry {
	es := make([]store.Entry, 40)
	for i := range es {
		es[i] = store.Entry{Key: fmt.Sprint("k", min(i, len(es)-2)), Version: 1}
	}
	return es
}

// TestVersionIndexThroughCompactions rewrites and deletes a few keys of a
// few partitions many times, with flushes, retention and full compactions
// between, and checks that the version index holds exactly each key's
// latest version: a single-deleted index key never comes back.
func TestVersionIndexThroughCompactions(t *testing.T) {
	t.Parallel()
	s := mustOpen(t, t.TempDir(), Options{})
	rng := rand.New(rand.NewPCG(1, 2))
	const partitions, keys = 5, 4
	type state struct {
		version uint64
		deleted bool
	}
	want := map[string]state{} // partition/key
	for i := range 3000 {
		p := store.Partition{Name: fmt.Sprint("user", rng.IntN(partitions))}
		key := fmt.Sprint("k", rng.IntN(keys))
		e := store.Entry{Key: key, Value: []byte("v")}
		if rng.IntN(4) == 0 {
			e = store.Entry{Key: key, Deleted: true}
		}
		err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
			h, err := r.Head()
			if err != nil {
				return nil, err
			}
			if _, _, err := r.Get(key); err != nil {
				return nil, err
			}
			e.Version, e.ScalarVersion = h.Version+1, h.Version+1
			return &store.Commit{Version: h.Version + 1, Time: t0.Add(time.Duration(i) * time.Millisecond), Entries: []store.Entry{e}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want[p.Name+"/"+key] = state{e.Version, e.Deleted}
		switch {
		case i%500 == 499:
			// Retention drops the tombstones of the first commits.
			if _, err := s.Compact(context.Background(), t0.Add(time.Duration(i-300)*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			if err := s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); err != nil {
				t.Fatal(err)
			}
		case i%97 == 0:
			if err := s.db.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	kvs, err := dumpDB(s)
	if err != nil {
		t.Fatal(err)
	}
	indexed := 0
	for i := 0; i < len(kvs); i += 2 {
		if kvs[i][0] == kindVersion {
			indexed++
		}
	}
	entries := 0
	for n := range partitions {
		p := store.Partition{Name: fmt.Sprint("user", n)}
		err := s.View(context.Background(), p, func(r store.Reader) error {
			return r.Changes(0, func(e store.Entry) (bool, error) {
				entries++
				if w := want[p.Name+"/"+e.Key]; e.Version != w.version || e.Deleted != w.deleted {
					t.Errorf("%s %s: Changes gives version %d deleted %t, last written %d deleted %t", p, e.Key, e.Version, e.Deleted, w.version, w.deleted)
				}
				return true, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if indexed != entries {
		t.Errorf("%d version index keys for %d entries", indexed, entries)
	}
	if entries < partitions*keys/2 {
		t.Errorf("only %d entries: the test checks little", entries)
	}
}

// TestHeadCacheMatchesDisk runs commits with devices, erases and retention
// over more partitions than a small head cache holds, and checks after each
// step that every cached head is the one on disk.
func TestHeadCacheMatchesDisk(t *testing.T) {
	t.Parallel()
	s := mustOpen(t, t.TempDir(), Options{})
	s.heads.limit = 8
	rng := rand.New(rand.NewPCG(3, 4))
	check := func(step int) {
		t.Helper()
		s.heads.mu.Lock()
		defer s.heads.mu.Unlock()
		if len(s.heads.m) > s.heads.limit {
			t.Fatalf("step %d: %d heads cached, over the limit of %d", step, len(s.heads.m), s.heads.limit)
		}
		for p, h := range s.heads.m {
			v, closer, err := s.db.Get(appendKey(nil, kindHead, appendPartition(nil, p), ""))
			if err != nil {
				t.Fatalf("step %d: head of cached %s: %v", step, p, err)
			}
			head, feedSeq, devs, err := decodeHead(v)
			closer.Close()
			if err != nil || head != h.head || feedSeq != h.feedSeq || !bytes.Equal(devs, h.devs) {
				t.Fatalf("step %d: %s cached %v seq %d devices %x, on disk %v seq %d devices %x (%v)", step, p, h.head, h.feedSeq, h.devs, head, feedSeq, devs, err)
			}
		}
	}
	batches := map[string]uint64{}
	for i := range 2000 {
		p := store.Partition{Name: fmt.Sprint("user", rng.IntN(12))}
		c := store.Commit{Time: t0.Add(time.Duration(i) * time.Millisecond)}
		switch n := rng.IntN(100); {
		case n < 2:
			c.Erase = true
		case n < 4:
			if _, err := s.Compact(context.Background(), c.Time.Add(-100*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			check(i)
			continue
		default:
			device := fmt.Sprint("d", rng.IntN(6))
			batches[p.Name+device]++
			c.Device, c.Batch = device, batches[p.Name+device]
			c.Entries = []store.Entry{{Key: fmt.Sprint("k", rng.IntN(3)), Value: []byte("v")}}
			if rng.IntN(3) == 0 {
				c.Entries[0] = store.Entry{Key: c.Entries[0].Key, Deleted: true}
			}
		}
		mustCommit(t, s, p, c)
		check(i)
	}
}
