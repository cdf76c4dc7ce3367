package bench

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// meter is what the loads of a bench share: where progress lines go, which
// run of how many is measuring, the warm-up and measurement lengths, and the
// monitor of the servers under load. Both benches embed one.
type meter struct {
	out              io.Writer
	run, runs        int
	warmup, duration time.Duration
	mon              *monitor
}

// progress writes a progress line, after the run it belongs to.
func (m *meter) progress(format string, args ...any) {
	fmt.Fprintf(m.out, "run %d/%d  "+format+"\n", append([]any{m.run, m.runs}, args...)...)
}

// call is one worker's next call; a worker calls it in a loop, one call at
// a time, until the measurement ends.
type call func(ctx context.Context) error

// loadSpec is a load of concurrent workers, each making one call after
// another. Closed-loop (interval 0), each call starts when the last ends, so
// the concurrency is the number of workers and the rate is what the server
// gives. Paced, each worker starts a call every interval, staggered, so the
// offered rate is fixed; a late call's latency counts from when it should
// have started, so a server that falls behind is not hidden by the load
// slowing down with it (coordinated omission).
type loadSpec struct {
	label    string // in progress lines: the scenario
	unit     string // of the progress rate, e.g. "syncs/s"
	workers  []call
	interval time.Duration
	// measuring, when set, runs as the measurement starts and returns a
	// function to wait for after it ends.
	measuring func() (wait func() error)
	// status, when set, adds to each progress line; it is given the time
	// since the last one.
	status func(since time.Duration) string
	// grown, when set, keeps the warm-up going past its duration until it
	// reports true (see growth).
	grown func() bool
}

// growth counts the devices of a load that cycle over keys of their own
// until each has PUT every one of them: the load warms up until then, so
// that it measures partitions of the size asked for, not while they grow.
type growth struct {
	devices int64
	done    atomic.Int64
}

// add counts d, if it cycles over keys.
func (g *growth) add(d *device) {
	if d.keys > 1 {
		g.devices++
		d.grown = &g.done
	}
}

// grown reports whether every device added has PUT each of its keys.
func (g *growth) grown() bool { return g.done.Load() >= g.devices }

// loadResult is what one load measured.
type loadResult struct {
	calls   uint64        // completed during the measurement
	elapsed time.Duration // of the measurement
	hist    histogram     // latency of every call completed during it
	// wake is, for a paced load, how late the callers woke for the calls
	// they slept before: the load generator's own scheduling delay, apart
	// from any wait for the call before.
	wake histogram
	cpu  cpuTimes // used during it
}

func (r *loadResult) rate() float64 { return float64(r.calls) / r.elapsed.Seconds() }

// record adds the load's rate, latency and CPU use to vals as figures of
// sc; server says whether the CPU time of a server the bench started is
// part of it.
func (r *loadResult) record(vals map[string]float64, sc Scenario, server bool) {
	cpu := r.perCall()
	vals[metricID(sc, "rate")] = r.rate()
	vals[metricID(sc, "p50")] = ms(r.hist.Quantile(0.50))
	vals[metricID(sc, "p99")] = ms(r.hist.Quantile(0.99))
	vals[metricID(sc, "bench_cpu")] = us(cpu.self)
	if server {
		vals[metricID(sc, "server_cpu")] = us(cpu.server)
		vals[metricID(sc, "server_cores")] = r.cores(r.cpu.server)
	}
	vals[metricID(sc, "bench_cores")] = r.cores(r.cpu.self)
	vals[metricID(sc, "other_cores")] = r.cores(r.cpu.others())
}

// perCall is the servers' and the bench's CPU time per completed call.
func (r *loadResult) perCall() cpuTimes {
	if r.calls == 0 {
		return cpuTimes{}
	}
	n := time.Duration(r.calls)
	return cpuTimes{server: r.cpu.server / n, self: r.cpu.self / n, machine: r.cpu.machine / n}
}

// cores is how many cores' worth of CPU time d is over the measurement.
func (r *loadResult) cores(d time.Duration) float64 { return d.Seconds() / r.elapsed.Seconds() }

const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDone
)

// load runs spec for the warm-up, then measures it for the duration,
// printing a progress line every second. The first failed call stops it and
// is its error; a server that exits stops it with ErrServerDied.
func (m *meter) load(ctx context.Context, spec loadSpec) (*loadResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		phase    atomic.Int32
		done     atomic.Uint64
		failOnce sync.Once
		failed   = make(chan struct{})
		firstErr error
		wg       sync.WaitGroup
	)
	hists := make([]histogram, len(spec.workers))
	wakes := make([]histogram, len(spec.workers))
	begin := time.Now()
	for i, c := range spec.workers {
		h, wake := &hists[i], &wakes[i]
		next := begin.Add(spec.interval * time.Duration(i) / time.Duration(len(spec.workers)))
		wg.Go(func() {
			for phase.Load() != phaseDone {
				var t0 time.Time
				if spec.interval > 0 {
					slept := time.Until(next) > 0
					if time.Sleep(time.Until(next)); phase.Load() == phaseDone {
						return
					}
					if slept && phase.Load() == phaseMeasure {
						wake.Record(time.Since(next))
					}
					t0, next = next, next.Add(spec.interval)
				} else {
					t0 = time.Now()
				}
				err := c(ctx)
				d := time.Since(t0)
				if err != nil {
					if ctx.Err() == nil {
						failOnce.Do(func() {
							firstErr = err
							close(failed)
						})
					}
					return
				}
				if phase.Load() == phaseMeasure {
					h.Record(d)
				}
				done.Add(1)
			}
		})
	}
	stop := func() {
		phase.Store(phaseDone)
		wg.Wait()
	}

	res := &loadResult{}
	started := time.Now()
	var (
		mStart  time.Time
		cpu0    cpuTimes
		waitFor func() error
	)
	measure := func() {
		mStart = time.Now()
		cpu0 = m.mon.cpu()
		phase.Store(phaseMeasure)
		if spec.measuring != nil {
			waitFor = spec.measuring()
		}
	}
	if m.warmup == 0 && (spec.grown == nil || spec.grown()) {
		measure()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastN, lastT := uint64(0), started
	for {
		var next time.Time
		if mStart.IsZero() {
			next = started.Add(m.warmup)
			if spec.grown != nil && !time.Now().Before(next) {
				next = time.Now().Add(50 * time.Millisecond) // look again soon
			}
		} else {
			next = mStart.Add(m.duration)
		}
		timer := time.NewTimer(time.Until(next))
		select {
		case <-tick.C:
			timer.Stop()
			n, now := done.Load(), time.Now()
			state := "measure"
			if mStart.IsZero() {
				state = "warm-up"
			}
			rate := float64(n-lastN) / now.Sub(lastT).Seconds()
			status := ""
			if spec.status != nil {
				status = spec.status(now.Sub(lastT))
			}
			lastN, lastT = n, now
			m.progress("%-10s %s %3.0fs  %9s %s  rss %s%s", spec.label, state,
				now.Sub(started).Seconds(), group(rate), spec.unit, mb(m.mon.current()), status)
			continue
		case <-timer.C:
		case <-failed:
			timer.Stop()
			cancel()
			stop()
			m.progress("%-10s FAILED: %v", spec.label, firstErr)
			if err := m.mon.err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrCallFailed, firstErr)
		case <-m.mon.done():
			timer.Stop()
			cancel()
			stop()
			return nil, m.mon.err()
		case <-ctx.Done():
			timer.Stop()
			stop()
			return nil, ctx.Err()
		}
		if mStart.IsZero() {
			if spec.grown == nil || spec.grown() {
				measure()
			}
			continue
		}
		// The measurement ends: calls finishing from now on are not counted.
		phase.Store(phaseDone)
		res.elapsed = time.Since(mStart)
		cpu1 := m.mon.cpu()
		res.cpu = cpu1.sub(cpu0)
		break
	}
	stop()
	for i := range hists {
		res.hist.Merge(&hists[i])
		res.wake.Merge(&wakes[i])
	}
	res.calls = res.hist.Count()
	if waitFor != nil {
		if err := waitFor(); err != nil {
			return nil, err
		}
	}
	if firstErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrCallFailed, firstErr)
	}
	return res, nil
}

// group formats v with thousands separators and no decimals.
func group(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// mb formats a byte count in decimal megabytes, the unit of the memory
// target.
func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
