package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	dalvpebble "github.com/dalvdb/dalv/store/pebble"
)

// diskScenario measures what the run's writes take on disk: it stops the
// server, measures its data directory and counts what the store keeps
// (store/pebble's Inspect), then again after compacting the whole key
// space, and starts the server again on the same directory and address for
// the next run. The figures are per retained commit (feed record) and per
// live key, and the directory over the encoded size of what is kept.
func (b *bencher) diskScenario(ctx context.Context, vals map[string]float64) error {
	if b.srv == nil {
		b.progress("%-10s not measured: the server is not the bench's own (--url)", Disk)
		return nil
	}
	data, addr := b.srv.Data, b.srv.Addr
	b.mon.stop()
	if err := b.srv.Stop(30 * time.Second); err != nil {
		return fmt.Errorf("stop server: %w", err)
	}
	if data == "" {
		data = filepath.Join(b.dir, "server")
	}
	after, err := dalvpebble.Inspect(data, false)
	if err != nil {
		return err
	}
	compacted, err := dalvpebble.Inspect(data, true)
	if err != nil {
		return err
	}
	b.progress("%-10s %d live keys, %d tombstones, %d feed records, %d bytes kept: %d bytes on disk, %d after a full compaction",
		Disk, compacted.LiveKeys, compacted.Tombstones, compacted.FeedRecords, compacted.KeptBytes, after.DirBytes, compacted.DirBytes)
	if compacted.FeedRecords > 0 {
		vals[metricID(Disk, "per_commit")] = float64(after.DirBytes) / float64(compacted.FeedRecords)
		vals[metricID(Disk, "per_commit_compacted")] = float64(compacted.DirBytes) / float64(compacted.FeedRecords)
	}
	if compacted.LiveKeys > 0 {
		vals[metricID(Disk, "per_key_compacted")] = float64(compacted.DirBytes) / float64(compacted.LiveKeys)
	}
	if compacted.KeptBytes > 0 {
		vals[metricID(Disk, "ratio")] = float64(after.DirBytes) / float64(compacted.KeptBytes)
		vals[metricID(Disk, "ratio_compacted")] = float64(compacted.DirBytes) / float64(compacted.KeptBytes)
	}
	vals[metricID(Disk, "dir_bytes")] = float64(after.DirBytes)
	if b.srv, b.pprofAddr, err = b.spawnServer(ctx, data, b.cfg.ServerProfile != "", "--addr", addr); err != nil {
		return fmt.Errorf("restart server: %w", err)
	}
	b.mon = startMonitor(b.srv)
	return nil
}
