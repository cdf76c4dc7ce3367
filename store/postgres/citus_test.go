package postgres

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/internal/pgtest"
	"github.com/dalvdb/dalv/internal/wait"
	"github.com/dalvdb/dalv/store"
	"github.com/dalvdb/dalv/store/storetest"
)

// These tests run the store on Citus: a coordinator and two workers that
// pgtest starts when the citus extension is installed (or the cluster at
// $DALV_TEST_CITUS). Where it is not, they print one line and do not run.

// citusShards is the shard count of the tests' tables: several streams on
// each worker, and quick to create.
const citusShards = 8

// citusMoves is how many shard moves TestCitusShardMove makes under load:
// a few by default, more when hunting for a rare loss.
var citusMoves = flag.Int("citus.moves", 3, "shard moves TestCitusShardMove makes under load")

// openCitus opens a store on a fresh schema of the Citus cluster, its
// tables distributed over citusShards shards; it returns the store and
// the schema's URL.
func openCitus(t *testing.T, opts Options) (*Store, string) {
	t.Helper()
	_, u := pgtest.SchemaOn(t, pgtest.Citus(t))
	u = pgtest.WithParam(u, "citus.shard_count", fmt.Sprint(citusShards))
	if opts.MaxConns == 0 {
		opts.MaxConns = 4
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, u, opts)
	if err != nil {
		t.Fatalf("Open on Citus: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if s.streams == nil {
		t.Fatal("Open on a Citus coordinator did not take the Citus layout")
	}
	if n := len(s.streams.names); n != citusShards {
		t.Fatalf("%d streams, want one per shard (%d)", n, citusShards)
	}
	return s, u
}

// TestCitusPos checks the positions of per-stream feeds: no cluster
// needed.
func TestCitusPos(t *testing.T) {
	st := &streams{names: []string{"0", "7", "1"}}
	for _, seqs := range [][]int64{{0, 0, 0}, {1, 0, 0}, {0, 0, 300}, {1 << 40, 5, 1 << 62}} {
		pos := st.encodePos(seqs)
		if (pos == "") != (seqs[0] == 0 && seqs[1] == 0 && seqs[2] == 0) {
			t.Errorf("encodePos(%v) = %x: empty only for zeros", seqs, pos)
		}
		got, err := st.decodePos(pos)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(seqs) {
			t.Errorf("decodePos(encodePos(%v)) = %v, %v", seqs, got, err)
		}
	}
	other := &streams{names: []string{"0", "7"}}
	for _, bad := range []store.FeedPos{"x", "\x03\x01", "\x03\x01\x02\x03\x04", other.encodePos([]int64{1, 2}),
		encodePos(5, "u:a")} {
		if _, err := st.decodePos(bad); !errors.Is(err, store.ErrInvalidPos) {
			t.Errorf("decodePos(%x) = %v, want %v", bad, err, store.ErrInvalidPos)
		}
	}
}

// TestCitusMigration checks that the Citus migrations split into
// statements as they must be sent, function bodies whole.
func TestCitusMigration(t *testing.T) {
	ms, err := loadMigrations(citusMigrations)
	if err != nil || len(ms) == 0 {
		t.Fatalf("loadMigrations = %d, %v", len(ms), err)
	}
	// A function that Citus runs on a worker writes with INSERT ... VALUES
	// and keyed UPDATEs only: an INSERT ... SELECT there wrote to a shard's
	// old placement during moves (TestCitusShardMove lost commits with one).
	insertSelect := regexp.MustCompile(`(?is)INSERT\s+INTO\s+\w+\s*\([^)]*\)\s*SELECT`)
	for _, m := range ms {
		for _, sql := range splitStatements(m.sql) {
			if strings.HasPrefix(sql, "CREATE FUNCTION") && insertSelect.MatchString(sql) {
				t.Errorf("migration %d: a function writes with INSERT ... SELECT: %.60q", m.version, sql)
			}
		}
	}
	var fn string
	for _, sql := range splitStatements(ms[0].sql) {
		if strings.Contains(sql, "--") && !strings.Contains(sql, "$$") {
			t.Errorf("statement holds a comment: %q", sql)
		}
		if !strings.HasSuffix(sql, ";") {
			t.Errorf("statement does not end with a semicolon: %q", sql)
		}
		if strings.HasPrefix(sql, "CREATE FUNCTION dalv_commit") {
			fn = sql
		}
	}
	if strings.Count(fn, "$$") != 2 || !strings.HasSuffix(fn, "$$;") {
		t.Errorf("dalv_commit's statement is cut: %q", fn)
	}
	if got := splitStatements("SELECT 1;\n-- a comment\nSELECT\n  2;\nSELECT 3"); fmt.Sprintf("%q", got) != `["SELECT 1;" "SELECT\n  2;" "SELECT 3"]` {
		t.Errorf("splitStatements = %q", got)
	}
}

// TestCitusEntriesSQL checks the parameters of the INSERT of many entries.
func TestCitusEntriesSQL(t *testing.T) {
	sql := citusInsertEntries(3)
	for _, want := range []string{"($1, $3, $2, $4, $5, $6)", "($1, $7, $2, $8, $9, $10)", "($1, $11, $2, $12, $13, $14)"} {
		if !strings.Contains(sql, want) {
			t.Errorf("citusInsertEntries(3) = %s, lacks %s", sql, want)
		}
	}
	if strings.Contains(sql, "$15") {
		t.Errorf("citusInsertEntries(3) = %s: a parameter too many", sql)
	}
}

func TestCitusConformance(t *testing.T) {
	storetest.RunOptions(t, func(t *testing.T) store.Store {
		s, _ := openCitus(t, Options{})
		return s
	}, storetest.Options{Dump: dump})
}

func TestCitusConformanceNoReadAhead(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openCitus(t, Options{})
		s.hooks.noReadAhead = true
		return s
	})
}

// citusNode is one node of the test cluster.
type citusNode struct {
	url         string
	coordinator bool
}

// citusNodes returns the cluster's active nodes, the coordinator among
// them, as conn's coordinator knows them.
func citusNodes(t *testing.T, conn *pgx.Conn) []citusNode {
	t.Helper()
	rows, _ := conn.Query(context.Background(), `SELECT nodename, nodeport, groupid = 0 FROM pg_dist_node WHERE isactive ORDER BY nodeport`)
	var (
		host  string
		port  int
		n     citusNode
		nodes []citusNode
	)
	if _, err := pgx.ForEachRow(rows, []any{&host, &port, &n.coordinator}, func() error {
		n.url = fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=disable", host, port)
		nodes = append(nodes, n)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return nodes
}

// twoPhase is what the cluster's nodes record of two-phase commits.
type twoPhase struct {
	// Records counts pg_dist_transaction's rows on every node: a
	// worker records the two-phase commits it coordinates itself, as it
	// would for a delegated function's statements that it sent to another
	// node.
	Records int
	// WorkerRecords is the part of Records on the workers.
	WorkerRecords int
	// Prepared counts prepared transactions not yet committed or rolled
	// back, on every node: writes nobody can see until they are.
	Prepared int
}

// twoPhaseCommits reads what u's cluster records of two-phase commits.
// The test cluster keeps the records (citus.recover_2pc_interval = -1); a
// node that recovers them in the background would hide some, so it fails.
func twoPhaseCommits(t *testing.T, u string) twoPhase {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tp twoPhase
	for _, node := range citusNodes(t, conn) {
		c, err := pgx.Connect(ctx, node.url)
		if err != nil {
			t.Fatal(err)
		}
		var (
			interval          string
			records, prepared int
		)
		err = c.QueryRow(ctx, `SELECT current_setting('citus.recover_2pc_interval'),
			(SELECT count(*) FROM pg_dist_transaction), (SELECT count(*) FROM pg_prepared_xacts)`).Scan(&interval, &records, &prepared)
		c.Close(ctx)
		if err != nil {
			t.Fatalf("%s: %v", node.url, err)
		}
		if interval != "-1" {
			t.Fatalf("%s recovers two-phase commits every %s, so pg_dist_transaction does not count them: run it with citus.recover_2pc_interval = -1", node.url, interval)
		}
		tp.Records += records
		tp.Prepared += prepared
		if !node.coordinator {
			tp.WorkerRecords += records
		}
	}
	return tp
}

// TestCitusOnePhase commits to partitions of every shard (first commits,
// later ones, devices, idempotency keys, many entries, an erase) and reads
// them back: not one is a two-phase commit, so each ran on one worker.
func TestCitusOnePhase(t *testing.T) {
	s, u := openCitus(t, Options{})
	before := twoPhaseCommits(t, u)
	shards := make(map[int64]bool)
	for i := range 40 {
		p := store.Partition{Name: fmt.Sprintf("user%d", i)}
		for round := range 3 {
			err := s.Update(context.Background(), p, func(r store.Reader) (*store.Commit, error) {
				h, err := r.Head()
				if err != nil {
					return nil, err
				}
				v := h.Version + 1
				c := &store.Commit{Version: v, Time: time.Now(), Device: "phone", Batch: v, Ops: []byte("ops"),
					Erase: round == 2 && i%5 == 0}
				if i%3 == 0 {
					c.IdempotencyKey, c.KeyDigest = fmt.Sprint("key", v), []byte("digest")
				}
				for k := range 1 + i%7*10 {
					c.Entries = append(c.Entries, store.Entry{Key: fmt.Sprint("k", k), Value: []byte("v"), Version: v, ScalarVersion: v,
						Deleted: k%4 == 3})
				}
				return c, nil
			})
			if err != nil {
				t.Fatalf("commit %d to %s: %v", round+1, p, err)
			}
		}
		var shard int64
		if err := s.pool.QueryRow(context.Background(), citusShardOf, partID(p)).Scan(&shard); err != nil {
			t.Fatal(err)
		}
		shards[shard] = true
	}
	if len(shards) != citusShards {
		t.Errorf("the partitions fell in %d shards, want all %d", len(shards), citusShards)
	}
	// Retention drops tombstones, idempotency keys and feed records, shard
	// by shard; and a second store opens the schema as a node starting does.
	st, err := s.Compact(context.Background(), time.Now().Add(time.Hour))
	if err != nil || st.Tombstones == 0 || st.Keys == 0 || st.FeedRecords == 0 {
		t.Errorf("Compact = %+v, %v; want tombstones, keys and feed records dropped", st, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	again, err := Open(ctx, u, Options{MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if after := twoPhaseCommits(t, u); after != before {
		t.Errorf("%d two-phase commits recorded and %d prepared transactions left among 120 commits, a compaction and a node's start, want none",
			after.Records-before.Records, after.Prepared-before.Prepared)
	}
	// The erases and the commits with idempotency keys take a transaction;
	// the others, one call.
	if tx, calls, grouped := s.transactions.Load(), s.calls.Load(), s.held.committed.Load(); tx+calls != 120 || tx == 0 || calls == 0 || grouped != 0 {
		t.Errorf("commits counted: %d as transactions, %d as calls, %d grouped; want 120 of the first two, some of each, and none grouped (grouped commits are off on Citus)", tx, calls, grouped)
	}
}

// TestCitusFeedEveryCursor commits to partitions of every shard, and so on
// both workers, from several goroutines, while readers follow the feed and
// keep every cursor they are given; each reader starts again now and then
// from one of its earlier cursors, and must get exactly what it got the
// first time from there. At the end, the feed from each kept cursor holds
// exactly the commits not read before it, each partition's in version
// order.
func TestCitusFeedEveryCursor(t *testing.T) {
	s, _ := openCitus(t, Options{})
	const writers, parts, each, readers = 6, 24, 30, 3
	ctx := context.Background()
	var writing sync.WaitGroup
	for w := range writers {
		writing.Go(func() {
			for i := range each {
				p := store.Partition{Name: fmt.Sprintf("u%d", (w*7+i)%parts)}
				if _, err := commitOne(ctx, s, p, "k"); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { writing.Wait(); close(done) }()

	type read struct {
		pos  store.FeedPos
		seen []string // every record read up to pos, in order
	}
	var (
		mu   sync.Mutex
		kept []read
	)
	var reading sync.WaitGroup
	for rd := range readers {
		reading.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(rd), 1))
			var cursors []read
			cur := read{}
			finished := false
			for !finished {
				select {
				case <-done:
					finished = true // one more read after the last commit
				default:
				}
				if len(cursors) > 0 && rng.IntN(4) == 0 {
					// Start again from an earlier cursor: what follows it is
					// every commit not read before it, once, each
					// partition's in version order, and it has all that
					// was read after it.
					from := cursors[rng.IntN(len(cursors))]
					again := append([]string(nil), from.seen...)
					err := s.Feed(ctx, from.pos, func(r store.FeedRecord) (bool, error) {
						again = append(again, string(r.Ops))
						return true, nil
					})
					if err != nil {
						t.Errorf("reader %d: Feed from an earlier cursor: %v", rd, err)
						return
					}
					lastAgain, err := feedOrder(again)
					if err != nil {
						t.Errorf("reader %d: from an earlier cursor: %v", rd, err)
						return
					}
					lastRead, _ := feedOrder(cur.seen)
					for part, v := range lastRead {
						if lastAgain[part] < v {
							t.Errorf("reader %d: from an earlier cursor, %s up to version %d, had read up to %d", rd, part, lastAgain[part], v)
							return
						}
					}
				}
				err := s.Feed(ctx, cur.pos, func(r store.FeedRecord) (bool, error) {
					cur = read{pos: r.Pos, seen: append(cur.seen[:len(cur.seen):len(cur.seen)], string(r.Ops))}
					cursors = append(cursors, cur)
					return rng.IntN(8) != 0, nil
				})
				if err != nil {
					t.Errorf("reader %d: %v", rd, err)
					return
				}
			}
			// Read to the end.
			if err := s.Feed(ctx, cur.pos, func(r store.FeedRecord) (bool, error) {
				cur = read{pos: r.Pos, seen: append(cur.seen[:len(cur.seen):len(cur.seen)], string(r.Ops))}
				return true, nil
			}); err != nil {
				t.Errorf("reader %d: %v", rd, err)
			}
			checkFeedRecords(t, fmt.Sprintf("reader %d", rd), cur.seen, writers*each)
			mu.Lock()
			kept = append(kept, cursors...)
			mu.Unlock()
		})
	}
	reading.Wait()
	if t.Failed() {
		return
	}
	for _, k := range kept {
		rest := append([]string(nil), k.seen...)
		if err := s.Feed(ctx, k.pos, func(r store.FeedRecord) (bool, error) {
			rest = append(rest, string(r.Ops))
			return true, nil
		}); err != nil {
			t.Fatal(err)
		}
		checkFeedRecords(t, fmt.Sprintf("from a cursor after %d records", len(k.seen)), rest, writers*each)
	}
}

// feedOrder reads records of the form "PARTITION@VERSION": each
// partition's versions must be 1, 2, 3... in order. It returns each
// partition's last.
func feedOrder(records []string) (map[string]int, error) {
	last := make(map[string]int)
	for _, r := range records {
		part, vs, ok := strings.Cut(r, "@")
		v, err := strconv.Atoi(vs)
		if !ok || err != nil {
			return nil, fmt.Errorf("record %q", r)
		}
		if v != last[part]+1 {
			return nil, fmt.Errorf("%s@%d after version %d (each once, in order, none skipped)", part, v, last[part])
		}
		last[part] = v
	}
	return last, nil
}

// checkFeedRecords checks records read (see feedOrder): total of them,
// each partition's in version order.
func checkFeedRecords(t *testing.T, who string, records []string, total int) {
	t.Helper()
	if _, err := feedOrder(records); err != nil {
		t.Errorf("%s: %v", who, err)
	}
	if len(records) != total {
		t.Errorf("%s: %d records, want %d", who, len(records), total)
	}
}

// TestCitusShardMove moves shards between the two workers, then lets the
// rebalancer even them out, while writers commit to partitions of every
// shard and a reader follows the feed: every acknowledged commit is there
// after the moves, and the feed may stall during a move, but never skips a
// commit or repeats one, and each partition's commits come in version
// order.
func TestCitusShardMove(t *testing.T) {
	s, u := openCitus(t, Options{})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ports []int
	rows, _ := conn.Query(ctx, `SELECT DISTINCT nodeport FROM pg_dist_shard_placement ORDER BY 1`)
	var port int
	if _, err := pgx.ForEachRow(rows, []any{&port}, func() error { ports = append(ports, port); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(ports) < 2 {
		t.Fatalf("shards on %d workers, want 2 or more", len(ports))
	}
	rows, _ = conn.Query(ctx, `SELECT shardid FROM pg_dist_shard WHERE logicalrelid = 'dalv_heads'::regclass ORDER BY shardid`)
	shards, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}

	before := twoPhaseCommits(t, u)

	const writers, parts = 6, 32
	perPart := make(map[string]*atomic.Int64)
	for i := range parts {
		perPart[fmt.Sprintf("u%d", i)] = new(atomic.Int64)
	}
	var (
		writing   sync.WaitGroup
		committed atomic.Int64
		stop      = make(chan struct{})
	)
	for w := range writers {
		writing.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := store.Partition{Name: fmt.Sprintf("u%d", (w*11+i)%parts)}
				if _, err := commitOne(ctx, s, p, "k"); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				committed.Add(1)
				perPart[p.Name].Add(1)
			}
		})
	}
	var (
		reading  sync.WaitGroup
		seen     []string
		maxStall time.Duration
		readDone = make(chan struct{})
	)
	reading.Go(func() {
		var pos store.FeedPos
		lastRecord := time.Now()
		for finished := false; !finished; {
			select {
			case <-readDone:
				finished = true
			default:
			}
			n := 0
			err := s.Feed(ctx, pos, func(r store.FeedRecord) (bool, error) {
				seen = append(seen, string(r.Ops))
				pos = r.Pos
				n++
				return true, nil
			})
			if err != nil {
				t.Errorf("reader: %v", err)
				return
			}
			if n > 0 {
				maxStall = max(maxStall, time.Since(lastRecord))
				lastRecord = time.Now()
			}
		}
	})

	// Each move takes the next shard group, round the shards, from where
	// it is to the other worker.
	var (
		last struct {
			shard int64
			dest  int
		}
		// longestMove bounds how long the feed may stall: a move blocks
		// its shards' commits only while it switches over.
		longestMove time.Duration
	)
	for i := range *citusMoves {
		var (
			shard = shards[i%len(shards)]
			host  string
			from  int
		)
		if err := conn.QueryRow(ctx, `SELECT nodename, nodeport FROM pg_dist_shard_placement WHERE shardid = $1`,
			shard).Scan(&host, &from); err != nil {
			t.Fatalf("placement of shard %d: %v", shard, err)
		}
		dest := ports[0]
		if from == ports[0] {
			dest = ports[1]
		}
		start := time.Now()
		if _, err := conn.Exec(ctx, `SELECT citus_move_shard_placement($1, $2, $3, $2, $4, shard_transfer_mode => 'force_logical')`,
			shard, host, from, dest); err != nil {
			t.Fatalf("move shard %d from %d to %d: %v", shard, from, dest, err)
		}
		took := time.Since(start)
		longestMove = max(longestMove, took)
		t.Logf("moved shard %d (and its colocated shards) from port %d to %d in %v, %d commits so far",
			shard, from, dest, took, committed.Load())
		last.shard, last.dest = shard, dest
	}
	var placed int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_dist_shard_placement WHERE shardid = $1 AND nodeport = $2`,
		last.shard, last.dest).Scan(&placed); *citusMoves > 0 && (err != nil || placed != 1) {
		t.Errorf("shard %d on port %d after the move: %d placements, %v", last.shard, last.dest, placed, err)
	}
	// Then the rebalancer evens the shard groups out over the workers, as
	// an operator would after adding one, moving whatever the moves above
	// left uneven.
	start := time.Now()
	if _, err := conn.Exec(ctx, `SELECT rebalance_table_shards('dalv_heads', shard_transfer_mode => 'force_logical')`); err != nil {
		t.Fatalf("rebalance: %v", err)
	}
	rows, _ = conn.Query(ctx, `SELECT p.nodeport, count(*) FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)
		WHERE s.logicalrelid = 'dalv_heads'::regclass GROUP BY 1 ORDER BY 1`)
	var perWorker []int
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&port, &n}, func() error { perWorker = append(perWorker, n); return nil }); err != nil {
		t.Fatal(err)
	}
	longestMove = max(longestMove, time.Since(start))
	t.Logf("rebalanced in %v: shard groups per worker %v, %d commits so far", time.Since(start), perWorker, committed.Load())
	if len(perWorker) != len(ports) || slices.Max(perWorker)-slices.Min(perWorker) > 1 {
		t.Errorf("after the rebalance, shard groups per worker: %v; want them even", perWorker)
	}
	close(stop)
	writing.Wait()
	close(readDone)
	reading.Wait()
	t.Logf("%d commits (%d in one call, %d as transactions); the feed's longest wait between records: %v",
		committed.Load(), s.calls.Load(), s.transactions.Load(), maxStall)
	if maxStall > longestMove {
		t.Errorf("the feed stalled for %v, longer than the longest move (%v), while writers committed", maxStall, longestMove)
	}
	checkFeedRecords(t, "the reader across the moves", seen, int(committed.Load()))
	var all []string
	if err := s.Feed(ctx, "", func(r store.FeedRecord) (bool, error) {
		all = append(all, string(r.Ops))
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	checkFeedRecords(t, "the feed read again from the start", all, int(committed.Load()))
	for name, n := range perPart {
		h := head(t, s, store.Partition{Name: name})
		if h.Version != uint64(n.Load()) {
			t.Errorf("%s: %d commits acknowledged, head at version %d; in each placement:\n%s",
				name, n.Load(), h.Version, citusEveryPlacement(t, conn, partID(store.Partition{Name: name})))
		}
	}
	// The moves are two-phase commits of the coordinator's; the workers
	// coordinate none, and nothing is left prepared, where its writes
	// would wait unseen for recovery.
	after := twoPhaseCommits(t, u)
	if after.Prepared != 0 || after.WorkerRecords != before.WorkerRecords {
		t.Errorf("after the moves: %d prepared transactions left, %d two-phase commits coordinated by workers; want none",
			after.Prepared, after.WorkerRecords-before.WorkerRecords)
	}
}

// citusEveryPlacement reports, for a test that found a partition's commits
// missing, the partition's head and newest feed record in every shard table
// on every node, including placements a move left behind for cleanup: it
// tells a write that went to the old placement from one that was lost.
func citusEveryPlacement(t *testing.T, conn *pgx.Conn, part string) string {
	ctx := context.Background()
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return err.Error()
	}
	var out strings.Builder
	for _, node := range citusNodes(t, conn) {
		u := node.url
		c, err := pgx.Connect(ctx, u)
		if err != nil {
			fmt.Fprintf(&out, "%s: %v\n", u, err)
			continue
		}
		// Citus hides shard tables from pg_class unless told otherwise.
		if _, err := c.Exec(ctx, `SET citus.show_shards_for_app_name_prefixes = '*'`); err != nil {
			fmt.Fprintf(&out, "%s: %v\n", u, err)
		}
		rows, _ := c.Query(ctx, `SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind = 'r' AND (relname ~ '^dalv_heads_[0-9]+$' OR relname ~ '^dalv_feed_[0-9]+$')
			ORDER BY 1`, schema)
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			fmt.Fprintf(&out, "%s: %v\n", u, err)
		}
		rows, _ = c.Query(ctx, `SELECT gid FROM pg_prepared_xacts ORDER BY 1`)
		gids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil || len(gids) > 0 {
			fmt.Fprintf(&out, "%s: prepared transactions %v, %v\n", u, gids, err)
		}
		for _, tb := range tables {
			q := fmt.Sprintf(`SELECT count(*), coalesce(max(version), -1) FROM %s.%s WHERE part = $1`,
				pgx.Identifier{schema}.Sanitize(), pgx.Identifier{tb}.Sanitize())
			var n, v int64
			if err := c.QueryRow(ctx, q, part).Scan(&n, &v); err != nil {
				fmt.Fprintf(&out, "%s %s: %v\n", u, tb, err)
			} else if n > 0 {
				fmt.Fprintf(&out, "%s %s: %d rows, newest version %d\n", u, tb, n, v)
			}
		}
		c.Close(ctx)
	}
	return out.String()
}

// head reads p's head.
func head(t *testing.T, s *Store, p store.Partition) store.Head {
	t.Helper()
	var h store.Head
	err := s.View(context.Background(), p, func(r store.Reader) (err error) {
		h, err = r.Head()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestCitusRefusals checks what a node refuses to start on: a schema that
// holds DalvDB's tables made without Citus, tables whose shards no longer
// match the feed's streams (as after a shard split), and nodes that commit
// asynchronously.
func TestCitusRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, plain := pgtest.SchemaOn(t, pgtest.Citus(t))
	pgtest.ExecOn(t, plain, `CREATE TABLE dalv_heads (part text PRIMARY KEY)`)
	if s, err := Open(ctx, plain, Options{MaxConns: 2}); err == nil || !strings.Contains(err.Error(), "made without Citus") {
		if s != nil {
			s.Close()
		}
		t.Errorf("Open on a schema with tables made without Citus = %v, want a refusal that says so", err)
	}

	s, u := openCitus(t, Options{})
	if _, err := commitOne(ctx, s, store.Partition{Name: "alice"}, "k"); err != nil {
		t.Fatal(err)
	}
	pgtest.ExecOn(t, u, `DELETE FROM dalv_streams WHERE num = $1`, citusShards-1)
	if s, err := Open(ctx, u, Options{MaxConns: 2}); err == nil || !strings.Contains(err.Error(), "a shard split is not supported") {
		if s != nil {
			s.Close()
		}
		t.Errorf("Open with a stream missing = %v, want a refusal that says shards and streams differ", err)
	}

	// A role whose sessions commit asynchronously: Citus gives the role and
	// its setting to every node, so each node's sessions of it do.
	role := fmt.Sprintf("dalv_async_%d", rand.Uint32())
	pgtest.ExecOn(t, u, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() { pgtest.ExecOn(t, u, `DROP ROLE `+role) })
	pgtest.ExecOn(t, u, `ALTER ROLE `+role+` SET synchronous_commit = off`)
	var nodes int
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_dist_node`).Scan(&nodes); err != nil {
		t.Fatal(err)
	}
	async, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	async.User = url.User(role)
	if s, err = Open(ctx, async.String(), Options{MaxConns: 2}); s != nil {
		s.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "synchronous_commit is off on Citus node") {
		t.Fatalf("Open where every node commits asynchronously = %v, want a refusal that says so", err)
	}
	_, list, _ := strings.Cut(err.Error(), "Citus node ")
	list, _, _ = strings.Cut(list, " for this user")
	if named := len(strings.Split(list, ", ")); named != nodes {
		t.Errorf("the refusal names %d nodes (%s), want all %d", named, list, nodes)
	}
}

// TestCitusRecheck turns synchronous_commit off for the store's user after
// Open: the store's next check refuses commits (unavailable, naming the
// nodes) and reports itself unhealthy, and accepts commits again once the
// setting is back.
func TestCitusRecheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, u := pgtest.SchemaOn(t, pgtest.Citus(t))
	u = pgtest.WithParam(u, "citus.shard_count", fmt.Sprint(citusShards))
	// A role of its own, whose setting no other test's sessions take.
	// Citus gives the role, and its settings, to every node.
	role := fmt.Sprintf("dalv_recheck_%d", rand.Uint32())
	pgtest.ExecOn(t, u, `CREATE ROLE `+role+` LOGIN SUPERUSER`)
	t.Cleanup(func() { pgtest.ExecOn(t, u, `DROP OWNED BY `+role+`; DROP ROLE `+role) })
	as, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	as.User = url.User(role)
	s, err := Open(ctx, as.String(), Options{MaxConns: 2, CheckInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	p := store.Partition{Name: "alice"}
	if _, err := commitOne(ctx, s, p, "k"); err != nil {
		t.Fatal(err)
	}

	// The pool's sessions, and Citus's connections from them to the
	// nodes, keep the setting they began with: new ones take the role's.
	pgtest.ExecOn(t, u, `ALTER ROLE `+role+` SET synchronous_commit = off`)
	s.pool.Reset()
	wait.For(t, 30*time.Second, func() error {
		_, err := commitOne(ctx, s, p, "k")
		if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "synchronous_commit is off on Citus node") {
			return fmt.Errorf("commit with synchronous_commit off = %v, want unavailable naming the nodes", err)
		}
		return nil
	})
	if err := s.Healthy(); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Healthy with synchronous_commit off = %v, want unavailable", err)
	}

	pgtest.ExecOn(t, u, `ALTER ROLE `+role+` RESET synchronous_commit`)
	s.pool.Reset()
	wait.For(t, 30*time.Second, func() error {
		_, err := commitOne(ctx, s, p, "k")
		return err
	})
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy once every node commits synchronously again = %v, want nil", err)
	}
}
