package client_test

// Benchmarks of the replica on this machine. Run them with
//
//	go test -run '^$' -bench . -benchtime 2000x ./client/
//
// BenchmarkGet reports the median of single reads beside the mean;
// BenchmarkDurableWrite compares a durable local write with the floor it
// cannot beat: one fsynced bbolt transaction that puts one key (ns/op is
// the pair). BenchmarkCatchUp1000 is a new device's first
// sync of 1,000 keys from an in-process server, request to exposed state.
// BenchmarkOpen10000 opens and closes a replica of 10,000 synced keys and
// 100 pending writes; check-median-ns is the part of it that checks the
// file's pages.

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	bolt "go.etcd.io/bbolt"

	"github.com/dalvdb/dalv/auth"
	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/gen/dalv/v1/dalvv1connect"
	dalvserver "github.com/dalvdb/dalv/server"
	"github.com/dalvdb/dalv/store/pebble"
)

// inProcess is a DalvDB server in the test process, over httptest.
type inProcess struct {
	URL     string
	Backend dalvv1connect.BackendServiceClient
}

func startInProcess(tb testing.TB) *inProcess {
	tb.Helper()
	st, err := pebble.Open(filepath.Join(tb.TempDir(), "data"), pebble.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	verifier, err := auth.NewHS256([]byte(testSecret), auth.HS256Options{})
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := auth.NewKeySet([]string{testBackendKey})
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := dalvserver.New(dalvserver.Config{Store: st, Verifier: verifier, BackendKeys: keys, RateLimit: -1})
	if err != nil {
		tb.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	tb.Cleanup(func() {
		hs.Close()
		st.Close()
	})
	return &inProcess{URL: hs.URL, Backend: dalvv1connect.NewBackendServiceClient(hs.Client(), hs.URL, connect.WithInterceptors(bearer(testBackendKey)))}
}

// fill commits n keys of about 64 bytes to user's partition.
func (s *inProcess) fill(tb testing.TB, user string, n int) {
	tb.Helper()
	for i := 0; i < n; i += 500 {
		var ops []*dalvv1.Op
		for j := i; j < min(n, i+500); j++ {
			ops = append(ops, put(fmt.Sprintf("items/%06d", j), fmt.Sprintf(`{"name":"item %d","qty":%d,"note":"some text here"}`, j, j%7)))
		}
		if _, err := s.Backend.Commit(context.Background(), connect.NewRequest(&dalvv1.CommitRequest{User: user, Ops: ops})); err != nil {
			tb.Fatal(err)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s := startInProcess(b)
	s.fill(b, "bench", 10_000)
	r := openReplica(b, "r.db", client.Options{ServerURL: s.URL, TokenSource: tokens("bench")})
	mustSync(b, r)
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("items/%06d", (i*7919)%10_000)
	}
	samples := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if _, err := r.Get(keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "median-ns")
}

// BenchmarkDurableWrite alternates a replica Put with the floor, one fsynced
// bbolt transaction putting one key, on two files in the same directory, so
// that drifts of the disk's speed hit both alike; it reports both medians
// and their ratio.
func BenchmarkDurableWrite(b *testing.B) {
	r := openReplica(b, "r.db", client.Options{})
	db, err := bolt.Open(filepath.Join(filepath.Dir(r.Path()), "floor.db"), 0o600, &bolt.Options{NoStatistics: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	v := []byte(`{"theme":"dark","font":"large"}`)
	floor := func(i int) error {
		return db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return bk.Put(fmt.Appendf(nil, "prefs/%d", i%64), v)
		})
	}
	puts := make([]time.Duration, 0, b.N)
	floors := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := r.Put(fmt.Sprintf("prefs/%d", i%64), v); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := floor(i); err != nil {
			b.Fatal(err)
		}
		puts = append(puts, t1.Sub(t0))
		floors = append(floors, time.Since(t1))
	}
	b.StopTimer()
	slices.Sort(puts)
	slices.Sort(floors)
	p, f := puts[len(puts)/2], floors[len(floors)/2]
	b.ReportMetric(float64(p.Nanoseconds()), "put-median-ns")
	b.ReportMetric(float64(f.Nanoseconds()), "floor-median-ns")
	b.ReportMetric(float64(p)/float64(f), "put/floor")
}

func BenchmarkCatchUp1000(b *testing.B) {
	s := startInProcess(b)
	s.fill(b, "bench", 1000)
	dir := b.TempDir()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		r, err := client.Open(filepath.Join(dir, fmt.Sprintf("r%d.db", i)), client.Options{ServerURL: s.URL, TokenSource: tokens("bench")})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := r.Sync(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if items, _ := r.List("items/"); len(items) != 1000 {
			b.Fatalf("%d items after the catch-up", len(items))
		}
		r.Close()
		b.StartTimer()
	}
}

func BenchmarkOpen10000(b *testing.B) {
	s := startInProcess(b)
	s.fill(b, "bench", 10_000)
	path := filepath.Join(b.TempDir(), "r.db")
	r, err := client.Open(path, client.Options{ServerURL: s.URL, TokenSource: tokens("bench")})
	if err != nil {
		b.Fatal(err)
	}
	mustSync(b, r)
	for i := range 100 {
		if err := r.Put(fmt.Sprintf("pending/%d", i), []byte("x")); err != nil {
			b.Fatal(err)
		}
	}
	r.Close()
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	checks := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		r, err := client.Open(path, client.Options{})
		if err != nil {
			b.Fatal(err)
		}
		r.Close()
		t0 := time.Now()
		if err := client.CheckReplicaFile(path); err != nil {
			b.Fatal(err)
		}
		checks = append(checks, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(checks)
	b.ReportMetric(float64(checks[len(checks)/2].Nanoseconds()), "check-median-ns")
	b.ReportMetric(float64(st.Size()), "file-bytes")
}
