package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/dalvdb/dalv/engine"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
	"github.com/dalvdb/dalv/store"
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

// storageScenario measures the engine and its store alone: engine.Engine
// over store/pebble in a fresh directory in this process, opened with the
// server's defaults, synced by devices like the sync scenario's, one PUT
// at a time, the same work as a sync less the transport and the token. It
// is the rate the server would have if a sync cost nothing but its own
// work, and (with the floor's no-op call) the least CPU a sync can take.
func (b *bencher) storageScenario(ctx context.Context, vals map[string]float64) error {
	dir := filepath.Join(b.dir, fmt.Sprintf("engine-run%d", b.run))
	st, err := dalvpebble.Open(dir, dalvpebble.Options{})
	if err != nil {
		return fmt.Errorf("open the store in %s: %w", dir, err)
	}
	defer func() {
		if !b.cfg.KeepData {
			_ = os.RemoveAll(dir)
		}
	}()
	eng, err := engine.New(engine.Config{Store: st})
	if err != nil {
		_ = st.Close()
		return err
	}
	workers, grown, err := b.deviceSet("e", func(user, id string) (*device, error) {
		p := store.Partition{Name: user}
		return newSyncingDevice(func(ctx context.Context, req *dalvv1.SyncRequest) (*dalvv1.SyncResponse, error) {
			return eng.Sync(ctx, engine.SyncRequest{
				Partition: p, DeviceID: req.GetDeviceId(), BaseVersion: req.GetBaseVersion(),
				Batch: req.GetBatch(), Ops: req.GetOps(), ResetHorizon: req.GetResetHorizon(),
			})
		}, id, b.cfg.ValueBytes, b.cfg.Keys), nil
	})
	if err != nil {
		_ = st.Close()
		return err
	}
	res, err := b.load(ctx, loadSpec{label: string(Storage), unit: "syncs/s", workers: workers, grown: grown})
	var paced *loadResult
	if err == nil && b.cfg.PacedRate > 0 {
		// The same syncs offered at the sync's paced rate, so that the
		// sync's paced p99 has its own work's beside it.
		interval := time.Duration(float64(time.Second) * float64(len(workers)) / b.cfg.PacedRate)
		paced, err = b.load(ctx, loadSpec{label: "storage paced", unit: "syncs/s", workers: workers, interval: interval})
	}
	if cerr := st.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the store: %w", cerr)
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
// plus the CPU of a sync in the engine alone (its own work, commit and
// all). Beside it go that floor as a multiple of the no-op call's CPU, to
// hold against the sync's CPU target, and the syncs/s these cores could
// give at that floor with the load generator's own CPU per sync on them
// too.
func recordCPUFloor(vals map[string]float64) {
	noop, work := vals[metricID(Floor, "server_cpu")], vals[metricID(Storage, "bench_cpu")]
	if noop <= 0 || work <= 0 {
		return
	}
	floor := noop + work
	vals[metricID(Storage, "floor_cpu")] = floor
	vals[metricID(Storage, "floor_cpu_ratio")] = floor / noop
	if gen := vals[metricID(Sync, "bench_cpu")]; gen > 0 {
		vals[metricID(Storage, "floor_rate")] = float64(runtime.NumCPU()) * 1e6 / (floor + gen)
	}
}
