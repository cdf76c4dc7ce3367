package bench

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// cpuTimes are CPU times (user and system) used by the servers under load
// (the embedded bench's server, or the PostgreSQL bench's nodes, together),
// by the bench process, and by the whole machine (every process, all
// cores).
type cpuTimes struct{ server, self, machine time.Duration }

// readCPU reads the CPU time the processes pids (the servers), this process
// and the machine have used so far. A process it cannot read counts 0.
func readCPU(pids []int) cpuTimes {
	c := cpuTimes{self: selfCPU()}
	for _, pid := range pids {
		d, _ := processCPU(pid)
		c.server += d
	}
	c.machine, _ = machineCPU()
	return c
}

// others is the CPU time used by neither the servers nor the bench: other
// processes on the machine, which make figures noisy.
func (c cpuTimes) others() time.Duration { return max(0, c.machine-c.server-c.self) }

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{server: c.server - o.server, self: c.self - o.self, machine: c.machine - o.machine}
}

// PgCPU is CPU time per sync (or pgbench transaction), in microseconds, by
// who spent it while the load was measured: the client (the bench's load
// generator, or pgbench), the dalv nodes, and the rest of the machine
// (PostgreSQL, and anything else running).
type PgCPU struct {
	Client float64 `json:"client_us"`
	Nodes  float64 `json:"nodes_us"`
	Rest   float64 `json:"rest_us"`
}

// split divides c, CPU used over a measurement, over ops operations, with
// client the CPU of a client process other than this one (pgbench).
func (c cpuTimes) split(client time.Duration, ops float64) PgCPU {
	if ops <= 0 {
		return PgCPU{}
	}
	us := func(d time.Duration) float64 { return float64(max(d, 0).Microseconds()) / ops }
	return PgCPU{Client: us(c.self + client), Nodes: us(c.server), Rest: us(c.machine - c.self - client - c.server)}
}

// clockTick is the unit of /proc/PID/stat's CPU times (USER_HZ, which is
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

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

// nodeProcs is the GOMAXPROCS each of n nodes of the PostgreSQL bench runs
// with: its share of the machine's cores, at least one, as an operator
// would set it for a container given that share (Go's own default there,
// from the container's CPU limit rounded up, is never below two). On their
// own, n Go processes on these cores would each keep as many threads
// looking for work as the machine has cores, and burn the time PostgreSQL
// and the other nodes need. $GOMAXPROCS, when set, overrides it.
func nodeProcs(n int) int {
	if v := envProcs(); v > 0 {
		return v
	}
	return max(1, runtime.NumCPU()/n)
}

// ClientProcs is the GOMAXPROCS `dalv bench --store` gives itself, the load
// generator: one, or $GOMAXPROCS when set. Its devices need well under a
// core, and more processors would only look for work on the cores the
// nodes and PostgreSQL share; so limited, its CPU per sync is about what
// pgbench's client spends per transaction.
func ClientProcs() int {
	if v := envProcs(); v > 0 {
		return v
	}
	return 1
}

// envProcs is $GOMAXPROCS, or 0 when it is not set to a number above 0.
func envProcs() int {
	if v, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && v > 0 {
		return v
	}
	return 0
}
