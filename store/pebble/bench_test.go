package pebble

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dalvdb/dalv/store"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Error(err)
		}
	})
	return s
}

// BenchmarkUpdateParallel is the sync hot path: many goroutines, each commit
// one key of one of many partitions, read and written the way the engine
// does (head, device batch, the key), durably. With 100 partitions it is
// dalv bench's sync load (100 users) without the server; with 10,000 each
// partition is written rarely, so little of what a commit reads or
// overwrites is still in the memtable.
func BenchmarkUpdateParallel(b *testing.B) {
	for _, partitions := range []int{100, 10_000} {
		b.Run(fmt.Sprint("partitions=", partitions), func(b *testing.B) {
			benchUpdateParallel(b, partitions)
		})
	}
}

func benchUpdateParallel(b *testing.B, partitions int) {
	s := benchStore(b)
	const keys = 16
	parts := make([]store.Partition, partitions)
	for i := range parts {
		parts[i] = store.Partition{Name: fmt.Sprintf("user%05d", i)}
	}
	keyNames := make([]string, keys)
	for i := range keyNames {
		keyNames[i] = fmt.Sprint("prefs/key", i)
	}
	value := []byte(`{"theme":"dark","font":"large","updated":"2025-01-01T00:00:00Z"}`)
	var next atomic.Uint64
	now := time.Now()
	b.SetParallelism(64) // goroutines per core: devices syncing at once
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := next.Add(1)
			p, key := parts[n%uint64(partitions)], keyNames[n/uint64(partitions)%keys]
			err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
				h, err := r.Head()
				if err != nil {
					return nil, err
				}
				if _, err := r.DeviceBatch("device"); err != nil {
					return nil, err
				}
				if _, _, err := r.Get(key); err != nil {
					return nil, err
				}
				v := h.Version + 1
				return &store.Commit{
					Version: v, Time: now,
					Entries: []store.Entry{{Key: key, Value: value, Version: v, ScalarVersion: v}},
					Device:  "device", Batch: n, Ops: value,
				}, nil
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "commits/s")
	// The process's CPU, Pebble's flushes and compactions included: on a
	// shared machine a steadier measure of a commit's cost than its time.
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time this process has used, user and system, in
// nanoseconds.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// BenchmarkChanges reads a partition of 10,000 keys, written 10 per commit,
// from the start and from near its head.
func BenchmarkChanges(b *testing.B) {
	s := benchStore(b)
	p := store.Partition{Name: "alice"}
	const commits, perCommit = 1000, 10
	value := make([]byte, 100)
	for c := range commits {
		v := uint64(c + 1)
		es := make([]store.Entry, perCommit)
		for i := range es {
			es[i] = store.Entry{Key: "items/" + strconv.Itoa(c*perCommit+i), Value: value, Version: v, ScalarVersion: v}
		}
		err := s.Update(context.Background(), p, func(store.Reader) (*store.Commit, error) {
			return &store.Commit{Version: v, Time: time.Now(), Entries: es}, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for _, bc := range []struct {
		name  string
		after uint64
	}{{"All", 0}, {"Last10Commits", commits - 10}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			entries := 0
			for b.Loop() {
				err := s.View(context.Background(), p, func(r store.Reader) error {
					return r.Changes(bc.after, func(store.Entry) (bool, error) {
						entries++
						return true, nil
					})
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(entries)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
