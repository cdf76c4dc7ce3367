package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"
)

// syncScenario: Devices devices over Users users sync one PUT at a time,
// first as fast as the server answers (closed loop), then paced at
// PacedRate.
func (b *bencher) syncScenario(ctx context.Context, vals map[string]float64) error {
	workers, grown, err := b.devices("")
	if err != nil {
		return err
	}
	sw := b.serverDuring(ctx)
	spec := loadSpec{label: string(Sync), unit: "syncs/s", workers: workers, measuring: sw.measuring, grown: grown}
	if b.cfg.ServerProfile != "" && b.run == b.cfg.Runs {
		spec.measuring = both(b.profileServer, sw.measuring)
	}
	res, err := b.load(ctx, spec)
	if err != nil {
		return err
	}
	res.record(vals, Sync, b.srv != nil)
	vals[metricID(Sync, "errors")] = 0 // any error stops the run
	if sw.ok && sw.start.hasAllocs && res.calls > 0 {
		vals[metricID(Sync, "alloc_bytes")] = (sw.end.allocBytes - sw.start.allocBytes) / float64(res.calls)
		vals[metricID(Sync, "alloc_objects")] = (sw.end.allocObjects - sw.start.allocObjects) / float64(res.calls)
	}

	if b.cfg.PacedRate < 0 {
		return nil
	}
	if workers, grown, err = b.devices("p"); err != nil {
		return err
	}
	interval := time.Duration(float64(time.Second) * float64(len(workers)) / b.cfg.PacedRate)
	sw = b.serverDuring(ctx)
	res, err = b.load(ctx, loadSpec{label: "sync paced", unit: "syncs/s", workers: workers, interval: interval, measuring: sw.measuring, grown: grown})
	if err != nil {
		return err
	}
	vals[metricID(Sync, "paced_rate")] = res.rate()
	vals[metricID(Sync, "paced_p50")] = ms(res.hist.Quantile(0.50))
	vals[metricID(Sync, "paced_p99")] = ms(res.hist.Quantile(0.99))
	if res.wake.Count() > 0 {
		vals[metricID(Sync, "paced_wake_p99")] = ms(res.wake.Quantile(0.99))
	}
	vals[metricID(Sync, "paced_other_cores")] = res.cores(res.cpu.others())
	if sw.ok && sw.start.hasSyncs && sw.end.syncs.count(sw.start.syncs) > 0 {
		vals[metricID(Sync, "paced_server_p99")] = 1000 * sw.end.syncs.quantile(sw.start.syncs, 0.99)
	}
	if n := sw.end.fsyncs.count(sw.start.fsyncs); sw.ok && sw.start.hasWAL && n > 0 {
		vals[metricID(Sync, "paced_fsync_p99")] = 1000 * sw.end.fsyncs.quantile(sw.start.fsyncs, 0.99)
		vals[metricID(Sync, "paced_per_fsync")] = float64(res.calls) / float64(n)
		vals[metricID(Sync, "paced_stalls")] = sw.end.stalls - sw.start.stalls
	}
	return nil
}

// devices returns the sync workers of a new set of devices and users, and
// their growth; tag tells sets of one run apart.
func (b *bencher) devices(tag string) ([]call, func() bool, error) {
	return b.deviceSet(tag, func(user, id string) (*device, error) {
		return b.newDevice(b.clients, user, id, b.cfg.ValueBytes, b.cfg.Keys)
	})
}

// deviceSet returns the sync workers of Devices devices over Users users,
// each made by newDev, and their growth; tag tells sets of one run apart.
func (b *bencher) deviceSet(tag string, newDev func(user, id string) (*device, error)) ([]call, func() bool, error) {
	workers := make([]call, b.cfg.Devices)
	g := &growth{}
	for i := range workers {
		user := fmt.Sprintf("b%s-r%d%s-u%d", b.id, b.run, tag, i%b.cfg.Users)
		d, err := newDev(user, fmt.Sprintf("b%s-r%d%s-d%d", b.id, b.run, tag, i))
		if err != nil {
			return nil, nil, err
		}
		g.add(d)
		workers[i] = d.sync
	}
	return workers, g.grown, nil
}

// profileServer takes a CPU profile of the server for the measurement's
// duration (whole seconds, at least one) through its pprof listener, and
// writes it to Config.ServerProfile.
func (b *bencher) profileServer() func() error {
	secs := max(1, int(b.cfg.Duration/time.Second))
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", b.pprofAddr, secs)
			resp, err := http.Get(url)
			if err != nil {
				return fmt.Errorf("server profile: %w", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("server profile: %s from %s", resp.Status, url)
			}
			f, err := os.Create(b.cfg.ServerProfile)
			if err != nil {
				return fmt.Errorf("server profile: %w", err)
			}
			if _, err := f.ReadFrom(resp.Body); err != nil {
				_ = f.Close()
				return fmt.Errorf("server profile: %w", err)
			}
			return f.Close()
		}()
	}()
	return func() error {
		err := <-errc
		if err == nil {
			fmt.Fprintf(b.out, "server CPU profile (%ds of run %d's sync load) in %s\n", secs, b.run, b.cfg.ServerProfile)
		}
		return err
	}
}

// ms is d in milliseconds; us in microseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// serverWindow is what the server's metrics say of one measurement: ok when
// both scrapes worked.
type serverWindow struct {
	sample     func() (serverSample, bool)
	ok         bool
	start, end serverSample
}

// serverDuring returns a serverWindow to give a measurement as its measuring
// hook.
func (b *bencher) serverDuring(ctx context.Context) *serverWindow {
	return &serverWindow{sample: func() (serverSample, bool) {
		fams, err := b.scrapeMetrics(ctx, b.url)
		if err != nil {
			return serverSample{}, false
		}
		return serverSampleOf(fams), true
	}}
}

// both is a measuring hook that runs a and then b as the measurement
// starts, and waits for both after it ends.
func both(a, b func() (wait func() error)) func() (wait func() error) {
	return func() func() error {
		waitA, waitB := a(), b()
		return func() error { return errors.Join(waitA(), waitB()) }
	}
}

// measuring scrapes the server's metrics as the measurement starts and
// once it has ended. A scrape that fails leaves the window without
// figures rather than failing the run.
func (w *serverWindow) measuring() func() error {
	start, ok := w.sample()
	return func() error {
		end, ok2 := w.sample()
		w.start, w.end, w.ok = start, end, ok && ok2
		return nil
	}
}
