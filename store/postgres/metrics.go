package postgres

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The store's own metrics, read from PostgreSQL at each scrape.
var (
	descFeedStall = prometheus.NewDesc("dalv_feed_stall_seconds",
		"Age of the oldest open transaction in the database that holds a transaction id: the change feed delivers no commit that began after it until it ends.",
		nil, nil)
	descFeedLag = prometheus.NewDesc("dalv_feed_lag_seconds",
		"Age of the oldest committed feed record that readers may not pass yet (0 when none waits).",
		nil, nil)
	descPoolConns = prometheus.NewDesc("dalv_postgres_pool_connections",
		"Connections of this process's pool, by state.",
		[]string{"state"}, nil)
	descHeldCommits = prometheus.NewDesc("dalv_postgres_held_commits_total",
		"Commits tried in a grouped statement on a partition state this process holds: committed, or moved (another process had committed to the partition, or was committing; the commit ran as a transaction).",
		[]string{"outcome"}, nil)
	descHeldStatements = prometheus.NewDesc("dalv_postgres_held_statements_total",
		"Statements that wrote commits on held partition states; each writes the commits that queued while others were in flight, so commits per statement is the grouping.",
		nil, nil)
	descHeldReads = prometheus.NewDesc("dalv_postgres_held_reads_total",
		"Reads of what a sparse state (of a partition too big to hold whole) lacked for a commit: the keys and device records it had not seen at its head.",
		nil, nil)
	descHeldReadStatements = prometheus.NewDesc("dalv_postgres_held_read_statements_total",
		"Statements that made the reads of dalv_postgres_held_reads_total; each makes the reads that queued while another was in flight.",
		nil, nil)
	descCommits = prometheus.NewDesc("dalv_postgres_commits_total",
		"Commits written by this process, by way: grouped (in a statement of held partitions' commits), call (on Citus, one call that the partition's worker runs), or transaction (an Update's own).",
		[]string{"way"}, nil)
	descHeldParts = prometheus.NewDesc("dalv_postgres_held_partitions",
		"Partition states this process holds, to commit to them in grouped statements.",
		nil, nil)
)

// feedStall reads the age of the oldest transaction holding an id.
const feedStall = `SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(xact_start)), 0)::float8
	FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname = current_database()`

// feedLag reads the age of the oldest feed row above the readers' bound,
// among the first lagRows of them in feed order. The bound is known only as
// the query runs, so PostgreSQL plans a filter on it as matching a third of
// the feed: unbounded, it scanned the whole table (in parallel workers, at
// every scrape), where ordered and limited it reads the feed order index
// from the bound. The rows past the bound are those committed while the
// oldest open transaction runs, fewer than lagRows in a second at this
// project's rates; past that, the first ones are the oldest anyway.
const feedLag = `SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp()) - min(nanos) / 1e9, 0)::float8
	FROM (SELECT nanos FROM dalv_feed WHERE feed_key >= ` + feedHorizon + `
		ORDER BY feed_key LIMIT ` + lagRows + `) past`

// lagRows bounds the rows feedLag reads.
const lagRows = "1000"

// Describe implements [prometheus.Collector]: the server registers the
// store's metrics when its store is one.
func (s *Store) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFeedStall
	ch <- descFeedLag
	ch <- descPoolConns
	ch <- descHeldCommits
	ch <- descHeldStatements
	ch <- descHeldReads
	ch <- descHeldReadStatements
	ch <- descHeldParts
	ch <- descCommits
}

// Collect implements [prometheus.Collector]. A metric PostgreSQL does not
// answer for within a second is left out of the scrape.
func (s *Store) Collect(ch chan<- prometheus.Metric) {
	if s.gate.Enter() != nil {
		return
	}
	defer s.gate.Exit()
	st := s.pool.Stat()
	ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(descHeldCommits, prometheus.CounterValue, float64(s.held.committed.Load()), "committed")
	ch <- prometheus.MustNewConstMetric(descHeldCommits, prometheus.CounterValue, float64(s.held.moved.Load()), "moved")
	ch <- prometheus.MustNewConstMetric(descHeldStatements, prometheus.CounterValue, float64(s.held.statements.Load()))
	ch <- prometheus.MustNewConstMetric(descHeldReads, prometheus.CounterValue, float64(s.held.readsDone.Load()))
	ch <- prometheus.MustNewConstMetric(descHeldReadStatements, prometheus.CounterValue, float64(s.held.readStatements.Load()))
	ch <- prometheus.MustNewConstMetric(descHeldParts, prometheus.GaugeValue, float64(s.held.states.len()))
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(s.held.committed.Load()), "grouped")
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(s.transactions.Load()), "transaction")
	ch <- prometheus.MustNewConstMetric(descCommits, prometheus.CounterValue, float64(s.calls.Load()), "call")
	if s.streams != nil {
		return // the feed has no transaction horizon on Citus
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var stall, lag float64
	if err := s.pool.QueryRow(ctx, feedStall).Scan(&stall); err == nil {
		ch <- prometheus.MustNewConstMetric(descFeedStall, prometheus.GaugeValue, stall)
	}
	if err := s.pool.QueryRow(ctx, feedLag).Scan(&lag); err == nil {
		ch <- prometheus.MustNewConstMetric(descFeedLag, prometheus.GaugeValue, max(lag, 0))
	}
}

var _ prometheus.Collector = (*Store)(nil)
