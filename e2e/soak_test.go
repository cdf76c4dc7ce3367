package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dalvdb/dalv/internal/diskfault"
	"github.com/dalvdb/dalv/internal/proc"
)

// TestSoakMixed runs the history load (devices syncing, backends
// committing and reading, a feed reader, device watches), as histories of
// two minutes each on fresh users, one after another, for
// DALV_SOAK_MINUTES (2 by default; `make soak-mixed` runs 60) on one node on
// the embedded store and on three nodes over PostgreSQL at once, with a
// fault every few minutes: the node SIGKILLed and restarted, or its disk
// slowed, and for PostgreSQL connection cuts, black holes and the server
// killed (-m immediate). Every twelfth of the run, at least every minute, it logs each
// server's goroutines, resident memory and open files. It fails if the
// history checker or the feed or watch checks find anything, or if, on a
// server that ran long enough, goroutines or open files grew, or, in a run
// of ten minutes or more, resident memory did: the lowest of the last
// third of its samples above the highest of its first third (memory by more
// than 10%, goroutines and files by more than a small slack). In a shorter
// run memory is still filling Pebble's memtable and caches, so it is only
// logged. A restarted server starts its samples anew.
func TestSoakMixed(t *testing.T) {
	t.Parallel()
	run := 2 * time.Minute
	if n, err := strconv.Atoi(os.Getenv("DALV_SOAK_MINUTES")); err == nil && n > 0 {
		run = time.Duration(n) * time.Minute
	}
	// A fault every eighth of the run, at least every 3 minutes; a sample
	// every twelfth, at least every minute.
	every, sampleEvery := min(run/8, 3*time.Minute), min(run/12, time.Minute)
	t.Run("one node", func(t *testing.T) {
		t.Parallel()
		trigger := filepath.Join(t.TempDir(), "disk-faults")
		start := func(o proc.Options) *proc.Server {
			o.Env = append(o.Env, diskfault.EnvVar+"="+trigger)
			return startServerWith(t, o)
		}
		s := &soak{nodes: []*proc.Server{start(proc.Options{})}, every: sampleEvery, memory: run >= 10*time.Minute}
		soakRun(t, s, run, func(pause func(time.Duration) bool) string {
			var kills, slow int
			for round := 0; pause(every); round++ {
				if round%4 == 0 {
					s.restart(t, 0, start)
					kills++
					continue
				}
				if err := os.WriteFile(trigger, []byte(diskfault.SlowSync), 0o600); err != nil {
					t.Error(err)
				}
				slow++
				pause(every / 3)
				if err := os.Remove(trigger); err != nil {
					t.Error(err)
				}
			}
			return fmt.Sprintf("%d SIGKILLs and restarts, %d slow disks (each fsync %v longer for %v)", kills, slow, diskfault.SlowSyncDelay, every/3)
		})
	})
	t.Run("three nodes over PostgreSQL", func(t *testing.T) {
		t.Parallel()
		pg, proxy, nodes := faultyPostgres(t)
		s := &soak{every: sampleEvery, memory: run >= 10*time.Minute, nodes: nodes}
		soakRun(t, s, run, func(pause func(time.Duration) bool) string {
			var cuts, holes, kills int
			for round := 0; pause(every); round++ {
				switch round % 3 {
				case 0:
					proxy.SetDown(true) // connections cut, new ones refused
					cuts++
					pause(time.Second)
					proxy.SetDown(false)
				case 1:
					proxy.SetDelay(2 * time.Second) // black-holed past the statement timeout
					holes++
					pause(3 * time.Second)
					proxy.SetDelay(0)
				default:
					if err := pg.RestartImmediate(); err != nil {
						t.Error(err)
						return "PostgreSQL did not restart"
					}
					kills++
				}
			}
			return fmt.Sprintf("%d connection cuts, %d black holes, %d PostgreSQL kills (-m immediate)", cuts, holes, kills)
		})
	})
}

// soak is the servers of a soak, which its faults may replace, and their
// resource samples.
type soak struct {
	every  time.Duration // between samples
	memory bool          // whether resident memory must not grow

	mu      sync.Mutex
	nodes   []*proc.Server
	samples map[int][]soakSample // by process id
}

// soakSample is one reading of a server's resources.
type soakSample struct {
	node                 int
	goroutines, rss, fds float64
}

// restart SIGKILLs node i and starts it again on its data directory and
// address, with start.
func (s *soak) restart(t *testing.T, i int, start func(proc.Options) *proc.Server) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.nodes[i]
	if err := old.Kill(); err != nil {
		t.Error(err)
		return
	}
	s.nodes[i] = start(proc.Options{Data: old.Data, Args: []string{"--addr", old.Addr}})
}

// sample reads each server's goroutines, resident memory and open files
// from its /metrics and logs them.
func (s *soak) sample(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, srv := range s.nodes {
		fams, err := scrapeErr(srv)
		if err != nil {
			t.Logf("soak: node %d: %v", i+1, err)
			continue
		}
		var sm soakSample
		sm.node = i + 1
		for name, v := range map[string]*float64{"go_goroutines": &sm.goroutines, "process_resident_memory_bytes": &sm.rss, "process_open_fds": &sm.fds} {
			if m := metric(fams, name, nil); m != nil {
				*v = m.GetGauge().GetValue()
			}
		}
		if s.samples == nil {
			s.samples = map[int][]soakSample{}
		}
		s.samples[srv.PID()] = append(s.samples[srv.PID()], sm)
		t.Logf("soak: node %d (pid %d): %.0f goroutines, %.1f MB resident, %.0f open files", sm.node, srv.PID(), sm.goroutines, sm.rss/(1<<20), sm.fds)
	}
}

// check fails t for each server, among those sampled at least six times,
// whose resources grew: the lowest of the last third of its samples over
// the highest of its first third, by more than 10% for memory (when
// s.memory), or by more than 10% and 10 for goroutines and open files.
func (s *soak) check(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pid, ss := range s.samples {
		if len(ss) < 6 {
			continue
		}
		head, tail := ss[:len(ss)/3], ss[len(ss)-len(ss)/3:]
		for _, r := range []struct {
			what  string
			of    func(soakSample) float64
			slack float64
		}{
			{"resident memory (bytes)", func(x soakSample) float64 {
				if !s.memory {
					return 0
				}
				return x.rss
			}, 0},
			{"goroutines", func(x soakSample) float64 { return x.goroutines }, 10},
			{"open files", func(x soakSample) float64 { return x.fds }, 10},
		} {
			first, last := slices.Max(soakValues(head, r.of)), slices.Min(soakValues(tail, r.of))
			if last > first*1.10+r.slack {
				t.Errorf("node %d (pid %d): %s grew from at most %.0f in the first third of its %d samples to at least %.0f in the last", ss[0].node, pid, r.what, first, len(ss), last)
			}
		}
	}
}

func soakValues(ss []soakSample, of func(soakSample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, x := range ss {
		out[i] = of(x)
	}
	return out
}

// soakRound is how long each history of a soak runs: long enough for a
// fault or two, short enough that checking it stays within time and memory
// (Porcupine's cache holds a bitset of a partition's calls for each step of
// its search, so it grows with the square of the calls: a two-minute
// history over PostgreSQL of 150,000 calls once took more than 8 minutes
// and 24 GB).
const soakRound = time.Minute

// soakRun runs the history load against s's nodes for run, as histories
// of soakRound each on fresh users, one after another, with faults across
// them all and the servers' resources sampled meanwhile; then it checks the
// samples.
func soakRun(t *testing.T, s *soak, run time.Duration, faults func(pause func(time.Duration) bool) string) {
	deadline := time.Now().Add(run)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(s.every)
		defer tick.Stop()
		s.sample(t)
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				s.sample(t)
			}
		}
	}()
	injected := make(chan string, 1)
	go func() {
		injected <- faults(func(d time.Duration) bool {
			if time.Until(deadline) < d {
				return false
			}
			time.Sleep(d) // the faults' schedule, not a synchronisation
			return true
		})
	}()
	round := &historyRound{cursor: "start", faults: "the soak's faults"}
	for i := 0; time.Until(deadline) > time.Second; i++ {
		round.users = fmt.Sprintf("soak%d-", i)
		s.mu.Lock()
		nodes := slices.Clone(s.nodes) // a node restarted meanwhile keeps its address
		s.mu.Unlock()
		checkHistory(t, nodes, min(time.Until(deadline), soakRound), round, nil)
	}
	t.Logf("faults: %s", <-injected)
	close(stop)
	<-done
	s.check(t)
}
