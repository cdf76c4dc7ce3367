package bench

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
)

// sampleEvery is how often the servers' resident memory is sampled.
const sampleEvery = 100 * time.Millisecond

// monitor watches the servers under load (the embedded bench's server, or
// the PostgreSQL bench's nodes): it samples their resident memory, summed,
// every sampleEvery and keeps the peak since the last reset, reads their
// CPU time, and tells when one exits. With no server (a URL was given) it
// reports zeros and never an exit.
type monitor struct {
	srvs []*proc.Server
	pids []int
	last atomic.Int64
	top  atomic.Int64
	// exited is closed when the first server exits.
	exited     chan struct{}
	exitedOnce sync.Once
	quit       chan struct{}
	wg         sync.WaitGroup
}

func startMonitor(srvs ...*proc.Server) *monitor {
	m := &monitor{srvs: srvs, exited: make(chan struct{}), quit: make(chan struct{})}
	if len(srvs) == 0 {
		return m
	}
	for _, s := range srvs {
		m.pids = append(m.pids, s.PID())
		m.wg.Go(func() {
			select {
			case <-s.Done():
				m.exitedOnce.Do(func() { close(m.exited) })
			case <-m.quit:
			}
		})
	}
	m.sample()
	m.wg.Go(func() {
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-m.quit:
				return
			case <-t.C:
				m.sample()
			}
		}
	})
	return m
}

func (m *monitor) sample() {
	if len(m.pids) == 0 {
		return
	}
	var sum int64
	for _, pid := range m.pids {
		rss, err := proc.RSS(pid)
		if err != nil {
			return // the process is gone; the scenario finds out
		}
		sum += rss
	}
	m.last.Store(sum)
	for {
		top := m.top.Load()
		if sum <= top || m.top.CompareAndSwap(top, sum) {
			return
		}
	}
}

// reset starts a new peak from a fresh sample.
func (m *monitor) reset() {
	m.top.Store(0)
	m.sample()
}

// peak is the highest resident memory sampled since reset, in bytes.
func (m *monitor) peak() int64 {
	m.sample()
	return m.top.Load()
}

// current is the last sample, in bytes.
func (m *monitor) current() int64 { return m.last.Load() }

// cpu reads the CPU time the servers, this process and the machine have
// used so far.
func (m *monitor) cpu() cpuTimes { return readCPU(m.pids) }

// done is closed when a server exits; never without one.
func (m *monitor) done() <-chan struct{} {
	if len(m.srvs) == 0 {
		return nil
	}
	return m.exited
}

// err says why a server is gone, if one is.
func (m *monitor) err() error {
	for _, s := range m.srvs {
		if err := exitErr(s); err != nil {
			return err
		}
	}
	return nil
}

func (m *monitor) stop() {
	close(m.quit)
	m.wg.Wait()
}
