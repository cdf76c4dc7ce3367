package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"connectrpc.com/connect"

	"github.com/dalvdb/dalv/auth"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// tokenTTL is how long the bench's device tokens live: longer than any run.
const tokenTTL = 24 * time.Hour

// device is one simulated device of the sync scenario: it PUTs its own key,
// one op per sync, each batch numbered after the last and based on the
// version the last answer gave.
type device struct {
	c     *clients
	auth  []string
	req   *dalvv1.SyncRequest // reused: the call is done with it on return
	value []byte              // the PUT's value, rewritten per batch
	base  uint64
}

func (b *bencher) newDevice(user, id string) (*device, error) {
	tok, err := auth.Mint(b.secret, user, tokenTTL, time.Now())
	if err != nil {
		return nil, err
	}
	d := &device{c: b.clients, auth: authorization(tok), value: make([]byte, b.cfg.ValueBytes)}
	for i := range d.value {
		d.value[i] = 'v'
	}
	d.req = &dalvv1.SyncRequest{
		DeviceId: id,
		Ops: []*dalvv1.Op{{
			Kind:  dalvv1.OpKind_OP_KIND_PUT,
			Key:   "bench/" + id,
			Value: &dalvv1.Value{Kind: &dalvv1.Value_Scalar{Scalar: d.value}},
		}},
	}
	return d, nil
}

// sync uploads the next batch.
func (d *device) sync(ctx context.Context) error {
	d.req.Batch++
	d.req.BaseVersion = d.base
	putNumber(d.value, d.req.Batch)
	req := connect.NewRequest(d.req)
	req.Header()["Authorization"] = d.auth
	resp, err := d.c.device.Sync(ctx, req)
	if err != nil {
		return fmt.Errorf("device %s, batch %d: %w", d.req.DeviceId, d.req.Batch, err)
	}
	m := resp.Msg
	if m.GetStatus() != dalvv1.SyncStatus_SYNC_STATUS_ACCEPTED || m.GetVersion() <= d.base {
		return fmt.Errorf("%w: device %s, batch %d from version %d: status %v, version %d, conflicts %q",
			ErrWrongAnswer, d.req.DeviceId, d.req.Batch, d.base, m.GetStatus(), m.GetVersion(), m.GetConflicts())
	}
	d.base = m.GetVersion()
	return nil
}

// putNumber writes n in decimal at the end of b, as far as it fits.
func putNumber(b []byte, n uint64) {
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return
		}
	}
}

// syncScenario: Devices devices over Users users sync one PUT at a time,
// first as fast as the server answers (closed loop), then paced at
// PacedRate.
func (b *bencher) syncScenario(ctx context.Context, vals map[string]float64) error {
	workers, err := b.devices("")
	if err != nil {
		return err
	}
	spec := loadSpec{label: string(Sync), unit: "syncs/s", workers: workers}
	if b.cfg.ServerProfile != "" && b.run == b.cfg.Runs {
		spec.measuring = b.profileServer
	}
	res, err := b.load(ctx, spec)
	if err != nil {
		return err
	}
	cpu := res.perCall()
	vals[metricID(Sync, "rate")] = res.rate()
	vals[metricID(Sync, "p50")] = ms(res.hist.Quantile(0.50))
	vals[metricID(Sync, "p99")] = ms(res.hist.Quantile(0.99))
	vals[metricID(Sync, "errors")] = 0 // any error stops the run
	vals[metricID(Sync, "bench_cpu")] = us(cpu.self)
	if b.srv != nil {
		vals[metricID(Sync, "server_cpu")] = us(cpu.server)
		vals[metricID(Sync, "server_cores")] = res.cores(res.cpu.server)
	}
	vals[metricID(Sync, "bench_cores")] = res.cores(res.cpu.self)
	vals[metricID(Sync, "other_cores")] = res.cores(res.cpu.others())

	if b.cfg.PacedRate < 0 {
		return nil
	}
	if workers, err = b.devices("p"); err != nil {
		return err
	}
	interval := time.Duration(float64(time.Second) * float64(len(workers)) / b.cfg.PacedRate)
	res, err = b.load(ctx, loadSpec{label: "sync paced", unit: "syncs/s", workers: workers, interval: interval})
	if err != nil {
		return err
	}
	vals[metricID(Sync, "paced_rate")] = res.rate()
	vals[metricID(Sync, "paced_p50")] = ms(res.hist.Quantile(0.50))
	vals[metricID(Sync, "paced_p99")] = ms(res.hist.Quantile(0.99))
	vals[metricID(Sync, "paced_other_cores")] = res.cores(res.cpu.others())
	return nil
}

// devices returns the sync workers of a new set of devices and users; tag
// tells sets of one run apart.
func (b *bencher) devices(tag string) ([]call, error) {
	workers := make([]call, b.cfg.Devices)
	for i := range workers {
		user := fmt.Sprintf("b%s-r%d%s-u%d", b.id, b.run, tag, i%b.cfg.Users)
		d, err := b.newDevice(user, fmt.Sprintf("b%s-r%d%s-d%d", b.id, b.run, tag, i))
		if err != nil {
			return nil, err
		}
		workers[i] = d.sync
	}
	return workers, nil
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
