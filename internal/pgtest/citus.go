package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// CitusEnv names the environment variable holding the URL of a Citus
// coordinator (with workers added) that the Citus tests use instead of a
// cluster of their own.
const CitusEnv = "DALV_TEST_CITUS"

// CitusWorkers is how many workers a throwaway Citus cluster has.
const CitusWorkers = 2

var citus struct {
	once    sync.Once
	cluster *CitusCluster
	url     string
	skip    string // why the Citus tests do not run, or ""
	err     error
	said    sync.Once
}

// CitusCluster is a throwaway Citus cluster: a coordinator and
// [CitusWorkers] workers, each a [Throwaway] on its own loopback port.
type CitusCluster struct {
	// Coordinator is the server clients connect to; Workers hold the shards.
	Coordinator *Throwaway
	Workers     []*Throwaway
}

// Citus returns the URL of a Citus coordinator: $DALV_TEST_CITUS, or else a
// throwaway cluster started once per test binary and stopped by [StopCitus].
// Where the citus extension is not installed, it prints one line saying the
// Citus tests did not run and why (once per test binary), and skips t:
// Citus is not in Debian's packages, so CI runs without it. A cluster that
// fails to start fails t.
func Citus(t testing.TB) string {
	t.Helper()
	citus.once.Do(func() {
		if u := os.Getenv(CitusEnv); u != "" {
			citus.url, citus.err = u, ping(u)
			return
		}
		if citus.skip = CitusMissing(); citus.skip != "" {
			return
		}
		citus.cluster, citus.err = StartCitus()
		if citus.err == nil {
			citus.url = citus.cluster.Coordinator.URL
		}
	})
	if citus.skip != "" {
		citus.said.Do(func() { fmt.Fprintf(os.Stderr, "pgtest: the Citus tests did not run: %s\n", citus.skip) })
		t.Skip(citus.skip)
	}
	if citus.err != nil {
		t.Fatalf("pgtest: Citus: %v", citus.err)
	}
	return citus.url
}

// CitusMissing says why the Citus tests cannot run here: neither
// $DALV_TEST_CITUS nor the citus extension in the installed PostgreSQL's
// library directory. It returns "" when they can.
func CitusMissing() string {
	if os.Getenv(CitusEnv) != "" {
		return ""
	}
	bin, err := findBin()
	if err != nil {
		return "no PostgreSQL server binaries to start a cluster with, and " + CitusEnv + " is not set"
	}
	lib := filepath.Join(filepath.Dir(bin), "lib", "citus.so")
	if _, err := os.Stat(lib); err != nil {
		return fmt.Sprintf("the citus extension is not installed (no %s), and %s is not set", lib, CitusEnv)
	}
	return ""
}

// CitusThrowaway returns the throwaway cluster [Citus] started, or nil when
// the tests run on $DALV_TEST_CITUS's.
func CitusThrowaway() *CitusCluster { return citus.cluster }

// StopCitus stops the throwaway cluster [Citus] started, if any. [Main]
// calls it; a TestMain of its own calls it after m.Run.
func StopCitus() {
	if c := citus.cluster; c != nil {
		c.Stop()
	}
}

// citusSettings are the servers' settings beyond [Start]'s: Citus loaded,
// logical decoding for shard moves, prepared transactions for Citus's own
// two-phase commits, no recovery of those in the background, so that
// pg_dist_transaction counts every two-phase commit, and no dropping in the
// background of the placements a shard move leaves behind, so that a test
// that finds a write missing can look for it there.
const citusSettings = "-c shared_preload_libraries=citus -c wal_level=logical -c max_prepared_transactions=200 -c citus.recover_2pc_interval=-1 -c citus.defer_shard_delete_interval=-1"

// StartCitus starts a coordinator and [CitusWorkers] workers, creates the
// extension in each one's postgres database, and adds the workers to the
// coordinator.
func StartCitus() (*CitusCluster, error) {
	c := &CitusCluster{}
	for i := range 1 + CitusWorkers {
		// Synchronous commits: DalvDB refuses a cluster that commits
		// asynchronously, where a shard move can lose acknowledged commits.
		s, err := start(true, citusSettings)
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("start Citus server %d: %w", i, err)
		}
		if i == 0 {
			c.Coordinator = s
		} else {
			c.Workers = append(c.Workers, s)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err = exec1(ctx, s.URL, "CREATE EXTENSION citus")
		cancel()
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("create extension citus: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host, port := c.Coordinator.hostPort()
	if err := exec1(ctx, c.Coordinator.URL, "SELECT citus_set_coordinator_host($1, $2)", host, port); err != nil {
		c.Stop()
		return nil, fmt.Errorf("citus_set_coordinator_host: %w", err)
	}
	for _, w := range c.Workers {
		host, port := w.hostPort()
		if err := exec1(ctx, c.Coordinator.URL, "SELECT citus_add_node($1, $2)", host, port); err != nil {
			c.Stop()
			return nil, fmt.Errorf("citus_add_node: %w", err)
		}
	}
	return c, nil
}

// Stop stops every server of the cluster and removes their directories.
func (c *CitusCluster) Stop() {
	for _, s := range append([]*Throwaway{c.Coordinator}, c.Workers...) {
		if s != nil {
			s.Stop()
		}
	}
}

// hostPort returns the loopback host and the port s listens on.
func (s *Throwaway) hostPort() (string, int) { return "127.0.0.1", s.port }
