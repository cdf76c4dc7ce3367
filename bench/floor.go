package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"connectrpc.com/grpchealth"
	"github.com/cockroachdb/pebble/v2"

	dalvpebble "github.com/dalvdb/dalv/store/pebble"
)

// floorScenario measures the no-op Connect call, grpc.health.v1.Health/Check,
// through the same server, clients and concurrency as the sync scenario:
// what the transport costs before any work.
func (b *bencher) floorScenario(ctx context.Context, vals map[string]float64) error {
	workers := make([]call, b.cfg.Devices)
	for i := range workers {
		check := b.clients.healthCheck()
		workers[i] = func(ctx context.Context) error {
			status, err := check(ctx)
			if err != nil {
				return fmt.Errorf("health check: %w", err)
			}
			if status != grpchealth.StatusServing {
				return fmt.Errorf("%w: health check says %v", ErrWrongAnswer, status)
			}
			return nil
		}
	}
	res, err := b.load(ctx, loadSpec{label: string(Floor), unit: "calls/s", workers: workers})
	if err != nil {
		return err
	}
	res.record(vals, Floor, b.srv != nil)
	if s, ok := vals[metricID(Sync, "rate")]; ok {
		vals[metricID(Floor, "ratio")] = 100 * s / res.rate()
	}
	if s, f := vals[metricID(Sync, "server_cpu")], vals[metricID(Floor, "server_cpu")]; s > 0 && f > 0 {
		vals[metricID(Floor, "cpu_ratio")] = s / f
	}
	return nil
}

// Each storage-floor commit writes about what a one-op sync writes: the
// store's batch for one is five Sets and a Delete (entry, version index,
// head, device record, feed record; the old version index entry) of about
// 260 bytes of keys and values.
const (
	storageKeyBytes   = 32
	storageValueBytes = 100
)

// storageScenario measures the storage engine alone: Pebble in a fresh
// directory in this process, Devices goroutines each committing a batch of
// two Sets with pebble.Sync, one after another. It is the rate the server
// would have if syncs cost nothing but their commit.
func (b *bencher) storageScenario(ctx context.Context, vals map[string]float64) error {
	dir := filepath.Join(b.dir, fmt.Sprintf("pebble-run%d", b.run))
	// Opened as store/pebble opens it by default, so the floor is the
	// server's engine less the server.
	opts, err := dalvpebble.DBOptions(dalvpebble.Options{})
	if err != nil {
		return err
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return fmt.Errorf("open pebble in %s: %w", dir, err)
	}
	defer func() {
		if !b.cfg.KeepData {
			_ = os.RemoveAll(dir)
		}
	}()
	workers := make([]call, b.cfg.Devices)
	value := make([]byte, storageValueBytes)
	for i := range value {
		value[i] = 'v'
	}
	for i := range workers {
		var n uint64
		k1 := fmt.Appendf(nil, "e/%06d/", i)
		k1 = append(k1, make([]byte, storageKeyBytes-len(k1))...)
		k2 := append([]byte("f"), k1[1:]...)
		workers[i] = func(context.Context) error {
			n++
			binary.BigEndian.PutUint64(k1[len(k1)-8:], n)
			binary.BigEndian.PutUint64(k2[len(k2)-8:], n)
			batch := db.NewBatch()
			defer batch.Close()
			if err := batch.Set(k1, value, nil); err != nil {
				return err
			}
			if err := batch.Set(k2, value, nil); err != nil {
				return err
			}
			if err := batch.Commit(pebble.Sync); err != nil {
				return fmt.Errorf("pebble commit: %w", err)
			}
			return nil
		}
	}
	res, err := b.load(ctx, loadSpec{label: string(Storage), unit: "commits/s", workers: workers})
	var paced *loadResult
	if err == nil && b.cfg.PacedRate > 0 {
		// The same commits offered at the sync's paced rate, so that the
		// sync's paced p99 has the disk's beside it.
		interval := time.Duration(float64(time.Second) * float64(len(workers)) / b.cfg.PacedRate)
		paced, err = b.load(ctx, loadSpec{label: "storage paced", unit: "commits/s", workers: workers, interval: interval})
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close pebble: %w", cerr)
	}
	if err != nil {
		return err
	}
	res.record(vals, Storage, false) // the server idles
	if s, ok := vals[metricID(Sync, "rate")]; ok {
		vals[metricID(Storage, "ratio")] = 100 * s / res.rate()
	}
	if paced != nil {
		vals[metricID(Storage, "paced_p99")] = ms(paced.hist.Quantile(0.99))
	}
	recordCPUFloor(vals)
	return nil
}

// recordCPUFloor adds the least server CPU a sync can take, from the same
// run's parts: the no-op call's server CPU (the transport every call pays)
// plus a synced Pebble commit's CPU (the write a sync cannot skip). Beside it
// go that floor as a multiple of the no-op call's CPU, to hold against the
// sync's CPU target, and the syncs/s these cores could give at that floor
// with the load generator's own CPU per sync on them too.
func recordCPUFloor(vals map[string]float64) {
	noop, commit := vals[metricID(Floor, "server_cpu")], vals[metricID(Storage, "bench_cpu")]
	if noop <= 0 || commit <= 0 {
		return
	}
	floor := noop + commit
	vals[metricID(Storage, "floor_cpu")] = floor
	vals[metricID(Storage, "floor_cpu_ratio")] = floor / noop
	if gen := vals[metricID(Sync, "bench_cpu")]; gen > 0 {
		vals[metricID(Storage, "floor_rate")] = float64(runtime.NumCPU()) * 1e6 / (floor + gen)
	}
}
