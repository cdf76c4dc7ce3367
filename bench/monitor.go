package bench

import (
	"sync"
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
	mu   sync.Mutex
	last proc.Memory
	top  proc.Memory // the sample with the highest RSS since reset
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
	var sum proc.Memory
	for _, pid := range m.pids {
		mem, err := proc.ReadMemory(pid)
		if err != nil {
			return // the process is gone; the scenario finds out
		}
		sum.RSS += mem.RSS
		sum.Anon += mem.Anon
		sum.File += mem.File
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last = sum
	if sum.RSS > m.top.RSS {
		m.top = sum
	}
}

// reset starts a new peak from a fresh sample.
func (m *monitor) reset() {
	m.mu.Lock()
	m.top = proc.Memory{}
	m.mu.Unlock()
	m.sample()
}

// peak is the sample with the highest resident memory since reset.
func (m *monitor) peak() proc.Memory {
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.top
}

// current is the last sample's resident memory, in bytes.
func (m *monitor) current() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last.RSS
}

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
