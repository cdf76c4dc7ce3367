package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
)

// sampleEvery is how often the server's resident memory is sampled.
const sampleEvery = 100 * time.Millisecond

// monitor samples the server's resident memory every sampleEvery and keeps
// the peak since the last reset. With no server (a URL was given) it
// reports zeros.
type monitor struct {
	pid  int
	last atomic.Int64
	top  atomic.Int64
	quit chan struct{}
	wg   sync.WaitGroup
}

func startMonitor(srv *proc.Server) *monitor {
	m := &monitor{quit: make(chan struct{})}
	if srv == nil {
		return m
	}
	m.pid = srv.PID()
	m.sample()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
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
	}()
	return m
}

func (m *monitor) sample() {
	if m.pid == 0 {
		return
	}
	rss, err := proc.RSS(m.pid)
	if err != nil {
		return // the process is gone; the scenario finds out
	}
	m.last.Store(rss)
	for {
		top := m.top.Load()
		if rss <= top || m.top.CompareAndSwap(top, rss) {
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

func (m *monitor) stop() {
	close(m.quit)
	m.wg.Wait()
}

// cpuTimes are the CPU times used by the server, by the bench process, and
// by the whole machine (every process, all cores).
type cpuTimes struct{ server, self, machine time.Duration }

// others is the CPU time used by neither the server nor the bench: other
// processes on the machine, which make figures noisy.
func (c cpuTimes) others() time.Duration { return max(0, c.machine-c.server-c.self) }

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{server: c.server - o.server, self: c.self - o.self, machine: c.machine - o.machine}
}

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, which is
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// cpu reads the CPU time (user and system) the server and this process have
// used; the server's is 0 without a server.
func (m *monitor) cpu() cpuTimes {
	c := cpuTimes{self: selfCPU()}
	if m.pid != 0 {
		c.server, _ = processCPU(m.pid)
	}
	c.machine, _ = machineCPU()
	return c
}

// selfCPU is the CPU time (user and system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineCPU reads the busy time of all cores from /proc/stat: everything
// but idle and iowait.
func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return 0, fmt.Errorf("/proc/stat: no cpu line")
	}
	var ticks int64
	for i, s := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest times are already counted in user
			break
		}
		n, err := strconv.ParseInt(string(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// processCPU reads utime+stime of pid from /proc/PID/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name is in parentheses and may hold spaces; fields
	// count from after its closing one: state is field 3, utime 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(string(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}
