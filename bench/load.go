package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

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
}

// loadResult is what one load measured.
type loadResult struct {
	calls   uint64        // completed during the measurement
	elapsed time.Duration // of the measurement
	hist    histogram     // latency of every call completed during it
	cpu     cpuTimes      // used during it
}

func (r *loadResult) rate() float64 { return float64(r.calls) / r.elapsed.Seconds() }

// perCall is the server's and the bench's CPU time per completed call.
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
// is its error.
func (b *bencher) load(ctx context.Context, spec loadSpec) (*loadResult, error) {
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
	begin := time.Now()
	for i, c := range spec.workers {
		h := &hists[i]
		next := begin.Add(spec.interval * time.Duration(i) / time.Duration(len(spec.workers)))
		wg.Go(func() {
			for phase.Load() != phaseDone {
				var t0 time.Time
				if spec.interval > 0 {
					if time.Sleep(time.Until(next)); phase.Load() == phaseDone {
						return
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
		cpu0 = b.mon.cpu()
		phase.Store(phaseMeasure)
		if spec.measuring != nil {
			waitFor = spec.measuring()
		}
	}
	if b.cfg.Warmup == 0 {
		measure()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastN, lastT := uint64(0), started
	for {
		var next time.Time
		if mStart.IsZero() {
			next = started.Add(b.cfg.Warmup)
		} else {
			next = mStart.Add(b.cfg.Duration)
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
			fmt.Fprintf(b.out, "run %d/%d  %-10s %s %3.0fs  %9s %s  rss %s%s\n", b.run, b.cfg.Runs, spec.label, state,
				now.Sub(started).Seconds(), group(rate), spec.unit, mb(b.mon.current()), status)
			continue
		case <-timer.C:
		case <-failed:
			timer.Stop()
			cancel()
			stop()
			fmt.Fprintf(b.out, "run %d/%d  %-10s FAILED: %v\n", b.run, b.cfg.Runs, spec.label, firstErr)
			if err := b.serverErr(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrCallFailed, firstErr)
		case <-b.serverDone():
			timer.Stop()
			cancel()
			stop()
			return nil, b.serverErr()
		case <-ctx.Done():
			timer.Stop()
			stop()
			return nil, ctx.Err()
		}
		if mStart.IsZero() {
			measure()
			continue
		}
		// The measurement ends: calls finishing from now on are not counted.
		phase.Store(phaseDone)
		res.elapsed = time.Since(mStart)
		cpu1 := b.mon.cpu()
		res.cpu = cpu1.sub(cpu0)
		break
	}
	stop()
	for i := range hists {
		res.hist.Merge(&hists[i])
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

// serverDone is closed when the server the bench started exits; never
// without one.
func (b *bencher) serverDone() <-chan struct{} {
	if b.srv == nil {
		return nil
	}
	return b.srv.Done()
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
