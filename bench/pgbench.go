package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/store/postgres"
)

// The PostgreSQL bench's reference: pgbench, with as many clients as the
// bench has devices, running two scripts in the bench's schema: a
// comparable single-row transaction (tx.sql), and DalvDB's commit of one
// PUT as one statement (commit.sql).

// findPgbench finds pgbench, or returns "" (the report says it is missing).
func findPgbench() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	slices.Sort(dirs)
	if len(dirs) > 0 {
		return dirs[len(dirs)-1]
	}
	return ""
}

// setupTx creates pgbench's tables in the bench's schema, a row for each
// client, and writes the comparable single-row transaction: an UPDATE of
// the client's row by key and an INSERT.
//
// On Citus both tables are distributed by the row's id, colocated, so the
// transaction is single-shard: one worker's, committed in one phase.
func (pb *pgBench) setupTx(ctx context.Context, conn *pgx.Conn) error {
	s := pgx.Identifier{pb.schema}.Sanitize()
	stmts := []string{
		fmt.Sprintf(`CREATE TABLE %s.pgb_heads (id integer PRIMARY KEY, version bigint NOT NULL)`, s),
		fmt.Sprintf(`CREATE TABLE %s.pgb_log (id integer NOT NULL, version bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())`, s),
	}
	if pb.citus {
		stmts = append(stmts,
			fmt.Sprintf(`SELECT create_distributed_table('%s.pgb_heads', 'id')`, s),
			fmt.Sprintf(`SELECT create_distributed_table('%[1]s.pgb_log', 'id', colocate_with => '%[1]s.pgb_heads')`, s))
	}
	stmts = append(stmts, fmt.Sprintf(`INSERT INTO %s.pgb_heads SELECT g, 0 FROM generate_series(1, %d) g`, s, pb.cfg.Devices))
	for _, sql := range stmts {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create pgbench's tables: %w", err)
		}
	}
	pb.script = fmt.Sprintf(`\set id :client_id + 1
BEGIN;
UPDATE %[1]s.pgb_heads SET version = version + 1 WHERE id = :id;
INSERT INTO %[1]s.pgb_log (id, version) VALUES (:id, 1);
END;
`, s)
	return os.WriteFile(filepath.Join(pb.dir, "tx.sql"), []byte(pb.script), 0o644)
}

// setupCommit creates DalvDB's tables in the bench's schema, as a node
// does, with a partition for each pgbench client, and writes the script
// that commits one PUT to the client's partition, with the writes a node
// makes for each commit to a partition it holds: one statement, updating
// the head and writing the device record, the entry and the feed row.
// (Its literals never hold a colon before a letter, which pgbench would
// take for a variable.)
func (pb *pgBench) setupCommit(ctx context.Context, conn *pgx.Conn) error {
	st, err := postgres.Open(ctx, pb.url, postgres.Options{})
	if err != nil {
		return fmt.Errorf("create DalvDB's tables: %w", err)
	}
	st.Close()
	s := pgx.Identifier{pb.schema}.Sanitize()
	if pb.citus {
		return pb.setupCitusCommit(ctx, conn, s)
	}
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s.dalv_heads (part, version, horizon, feed_key)
		SELECT 'u:pgbench-' || g, 0, 0, 0 FROM generate_series(0, %[2]d) g`, s, pb.cfg.Devices-1))
	if err != nil {
		return fmt.Errorf("create pgbench's partitions: %w", err)
	}
	value := strings.Repeat("76", pb.cfg.ValueBytes) // 'v' in hex
	pb.commitScript = fmt.Sprintf(`WITH h AS (
	UPDATE %[1]s.dalv_heads SET version = version + 1,
		feed_key = GREATEST(pg_current_xact_id()::text::bigint + (('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::bigint * 281474976710656), feed_key + 1)
	WHERE part = 'u:' || 'pgbench-' || (:client_id)::text
	RETURNING part, version, feed_key
), d AS (
	INSERT INTO %[1]s.dalv_devices (part, device, batch) SELECT part, '\x70686f6e65'::bytea, version FROM h
	ON CONFLICT (part, device) DO UPDATE SET batch = EXCLUDED.batch
), e AS (
	INSERT INTO %[1]s.dalv_entries (part, key, version, scalar_version, value, tomb_nanos)
	SELECT part, '\x62656e63682f70686f6e65'::bytea, version, version, '\x%[2]s'::bytea, NULL FROM h
	ON CONFLICT (part, key) DO UPDATE SET version = EXCLUDED.version, scalar_version = EXCLUDED.scalar_version,
		value = EXCLUDED.value, tomb_nanos = EXCLUDED.tomb_nanos
), f AS (
	INSERT INTO %[1]s.dalv_feed (part, feed_key, version, nanos, erase, ops)
	SELECT part, feed_key, version, 0, false, '\x%[2]s'::bytea FROM h
)
SELECT feed_key FROM h;
`, s, value)
	return os.WriteFile(filepath.Join(pb.dir, "commit.sql"), []byte(pb.commitScript), 0o644)
}

// libpqURL is the store URL without the parameters that only pgx knows.
func (pb *pgBench) libpqURL() string {
	u, _ := url.Parse(pb.cfg.Store)
	q := u.Query()
	for k := range q {
		switch k {
		case "sslmode", "connect_timeout", "application_name", "sslrootcert", "sslcert", "sslkey", "passfile", "target_session_attrs":
		default:
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// runPgbench runs the pgbench script file (what says what it does) with as
// many clients as devices, for the warm-up and the duration, and reads its
// rate and latencies from its per-transaction log. With rate above 0 it
// offers that many transactions a second in all, on pgbench's schedule
// (-R); each latency then counts from the transaction's scheduled start, as
// the bench's paced loads count theirs.
func (pb *pgBench) runPgbench(ctx context.Context, file, what string, rate float64) (pgSample, error) {
	secs := max(1, int((pb.cfg.Warmup+pb.cfg.Duration)/time.Second))
	prefix := fmt.Sprintf("pgbench-r%d-%s", pb.run, strings.TrimSuffix(file, ".sql"))
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(pb.cfg.Devices), "-j", "2",
		"-T", strconv.Itoa(secs), "-f", file, "-l", "--log-prefix", prefix}
	if rate > 0 {
		args = append(args, "-R", strconv.FormatFloat(rate, 'f', 0, 64))
		what += fmt.Sprintf(", paced at %s tx/s", group(rate))
	}
	args = append(args, pb.libpqURL())
	pb.progress("pgbench -c %d -T %d (%s)", pb.cfg.Devices, secs, what)
	cmd := exec.CommandContext(ctx, pb.pgbench, args...)
	cmd.Dir = pb.dir
	before := readCPU(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return pgSample{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	cpu := readCPU(nil).sub(before)
	// Log lines: client_id transaction_no time_us script_no epoch_s epoch_us.
	files, _ := filepath.Glob(filepath.Join(pb.dir, prefix+".*"))
	var h histogram
	var first, last int64
	warmupEnd := int64(0)
	var lines [][2]int64 // (end time µs, latency µs)
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return pgSample{}, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 {
				continue
			}
			lat, _ := strconv.ParseInt(fs[2], 10, 64)
			sec, _ := strconv.ParseInt(fs[4], 10, 64)
			usec, _ := strconv.ParseInt(fs[5], 10, 64)
			lines = append(lines, [2]int64{sec*1e6 + usec, lat})
		}
		fh.Close()
		os.Remove(f)
	}
	if len(lines) == 0 {
		return pgSample{}, fmt.Errorf("pgbench logged no transactions:\n%s", out)
	}
	first = lines[0][0]
	for _, l := range lines {
		first = min(first, l[0])
	}
	warmupEnd = first + pb.cfg.Warmup.Microseconds()
	last = warmupEnd
	n := 0
	for _, l := range lines {
		if l[0] >= warmupEnd {
			h.Record(time.Duration(l[1]) * time.Microsecond)
			last = max(last, l[0])
			n++
		}
	}
	elapsed := time.Duration(last-warmupEnd) * time.Microsecond
	if elapsed <= 0 {
		return pgSample{}, errors.New("pgbench ran too short to measure")
	}
	s := pgSample{rate: float64(n) / elapsed.Seconds(), p50: h.Quantile(0.50), p99: h.Quantile(0.99)}
	// Over the whole run, warm-up included: pgbench's own CPU is known
	// only for all of it.
	s.cpu = cpu.split(cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime(), float64(len(lines)))
	pb.progress("pgbench (%s): %s tx/s, p99 %.2f ms", what, group(s.rate), ms(s.p99))
	return s, nil
}

// detectCitus notes whether the database runs Citus, and its version and
// workers for the report.
func (pb *pgBench) detectCitus(ctx context.Context, conn *pgx.Conn) error {
	var version string
	err := conn.QueryRow(ctx, "SELECT COALESCE((SELECT extversion FROM pg_extension WHERE extname = 'citus'), '')").Scan(&version)
	if err != nil || version == "" {
		return err
	}
	var workers int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM citus_get_active_worker_nodes()").Scan(&workers); err != nil {
		return err
	}
	pb.citus = true
	pb.version += fmt.Sprintf(", Citus %s with %d worker%s", version, workers, plural(workers))
	return nil
}

// setupCitusCommit creates a partition for each pgbench client, each head
// naming its shard's feed stream, and writes the script that commits one
// PUT to the client's partition as a node does on Citus when it holds no
// state of the partition: it reads the head, then calls dalv_commit, which
// Citus runs on the partition's worker (see citus.go in package postgres).
func (pb *pgBench) setupCitusCommit(ctx context.Context, conn *pgx.Conn, s string) error {
	_, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %[1]s.dalv_heads (part, version, horizon, compactions, stream)
		SELECT p.part, 1, 0, 0, st.stream
		FROM (SELECT 'u:pgbench-' || g AS part, get_shard_id_for_distribution_column('%[1]s.dalv_heads', 'u:pgbench-' || g) AS shard
			FROM generate_series(0, %[2]d) g) p
		JOIN (SELECT stream, get_shard_id_for_distribution_column('%[1]s.dalv_heads', stream) AS shard FROM %[1]s.dalv_streams) st
		USING (shard)`, s, pb.cfg.Devices-1))
	if err != nil {
		return fmt.Errorf("create pgbench's partitions: %w", err)
	}
	value := strings.Repeat("76", pb.cfg.ValueBytes) // 'v' in hex
	part := `'u:' || 'pgbench-' || (:client_id)::text`
	pb.commitScript = fmt.Sprintf(`SELECT version AS v, stream AS st FROM %[1]s.dalv_heads WHERE part = %[3]s \gset
SELECT %[1]s.dalv_commit(%[3]s, :v, 0, 0, (:st)::text, :v + 1, '\x70686f6e65'::bytea, :v + 1, 0,
	ARRAY['\x62656e63682f70686f6e65'::bytea], ARRAY[:v + 1], ARRAY['\x%[2]s'::bytea], ARRAY[false], '\x%[2]s'::bytea);
`, s, value, part)
	return os.WriteFile(filepath.Join(pb.dir, "commit.sql"), []byte(pb.commitScript), 0o644)
}

// twoPhaseCommits counts Citus's records of two-phase commits
// (pg_dist_transaction) on every node: a worker that runs a delegated
// function records the two-phase commits it coordinates itself. ok is
// false when they are not counted: not on Citus, or a node recovers them
// in the background (citus.recover_2pc_interval is not -1), which deletes
// records.
func (pb *pgBench) twoPhaseCommits(ctx context.Context) (n int, ok bool) {
	if !pb.citus {
		return 0, false
	}
	conn, err := pb.connect(ctx)
	if err != nil {
		return 0, false
	}
	defer conn.Close(ctx)
	var all, counted bool
	err = conn.QueryRow(ctx, `SELECT coalesce(sum(r.result::bigint) FILTER (WHERE r.success), 0), bool_and(r.success),
		(SELECT bool_and(success AND result = '-1') FROM run_command_on_all_nodes($$SHOW citus.recover_2pc_interval$$))
		FROM run_command_on_all_nodes($$SELECT count(*) FROM pg_dist_transaction$$) r`).Scan(&n, &all, &counted)
	return n, err == nil && all && counted
}
