package postgres

import (
	"context"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrations are the schema's versions: migrations/NNNN_what.sql brings the
// schema from version NNNN-1 to NNNN, and migrations/citus/NNNN_what.sql
// the schema on Citus, whose tables are laid out and distributed for it. A
// released file is never edited; a change is a new file.
//
//go:embed migrations/*.sql migrations/citus/*.sql
var migrations embed.FS

// The directories of the two layouts' migrations.
const (
	plainMigrations = "migrations"
	citusMigrations = "migrations/citus"
)

// migration is one schema version's SQL.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations of dir in version order,
// checking that versions run 1, 2, 3... without a gap.
func loadMigrations(dir string) ([]migration, error) {
	files, err := fs.Glob(migrations, dir+"/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, f := range files {
		name := path.Base(f)
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must be NNNN_what.sql", name)
		}
		b, err := migrations.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: expected version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// SchemaVersion is the schema version this package creates and reads on
// PostgreSQL without Citus.
func SchemaVersion() int {
	ms, err := loadMigrations(plainMigrations)
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrate brings the schema in the connection's search path (creating
// schema first, when it is set) to the latest version. A session advisory
// lock keyed by the schema keeps nodes that start at once from migrating
// together: the first migrates, the others wait and find it done.
// It returns the schema's name. On Citus (citus set) it creates the
// distributed layout, sending one statement at a time, as Citus requires.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, citus bool) (string, error) {
	err := migrateSchema(ctx, pool, &schema, citus)
	return schema, err
}

func migrateSchema(ctx context.Context, pool *pgxpool.Pool, schemap *string, citus bool) error {
	dir := plainMigrations
	if citus {
		dir = citusMigrations
	}
	ms, err := loadMigrations(dir)
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	schema := *schemap
	defer conn.Release()
	if schema == "" {
		if err := conn.QueryRow(ctx, "SELECT COALESCE(current_schema(), '')").Scan(&schema); err != nil {
			return err
		}
		if schema == "" {
			return fmt.Errorf("no schema to create tables in: the search_path names none that exists; create it, or set the schema")
		}
		*schemap = schema
	}
	h := fnv.New64a()
	h.Write([]byte("dalv migrate " + schema))
	lockKey := int64(h.Sum64())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return err
	}
	defer func() {
		// A failed unlock leaves the lock to the connection's end: close it.
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey); err != nil {
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	// Only a missing schema is created: on Citus, CREATE SCHEMA is sent to
	// every worker, in a two-phase commit, even when the schema exists.
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regnamespace($1) IS NOT NULL", pgx.Identifier{schema}.Sanitize()).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("create schema %s: %w", schema, err)
		}
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS dalv_schema (
		id boolean PRIMARY KEY DEFAULT true CHECK (id),
		version integer NOT NULL)`); err != nil {
		return err
	}
	var have int
	err = conn.QueryRow(ctx, "SELECT version FROM dalv_schema").Scan(&have)
	switch {
	case err == pgx.ErrNoRows:
		have = 0
	case err != nil:
		return err
	}
	if citus {
		if err := checkUndistributed(ctx, conn, schema); err != nil {
			return err
		}
	}
	if have > len(ms) {
		return fmt.Errorf("the database's dalv schema is at version %d, newer than this dalv's %d: run a newer dalv", have, len(ms))
	}
	for _, m := range ms[have:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			stmts := []string{m.sql}
			if citus {
				stmts = splitStatements(m.sql)
			}
			for _, sql := range stmts {
				if _, err := tx.Exec(ctx, sql); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO dalv_schema (version) VALUES ($1)
				ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version`, m.version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %s: %w", m.name, err)
		}
	}
	return nil
}

// splitStatements splits a migration into its statements: each ends with a
// semicolon at the end of a line outside a $$-quoted body. Lines of
// comments outside bodies are left out.
func splitStatements(sql string) []string {
	var (
		out    []string
		cur    strings.Builder
		inBody bool
	)
	for line := range strings.Lines(sql) {
		trimmed := strings.TrimSpace(line)
		if !inBody && (trimmed == "" || strings.HasPrefix(trimmed, "--")) {
			continue
		}
		cur.WriteString(line)
		if strings.Count(line, "$$")%2 == 1 {
			inBody = !inBody
		}
		if !inBody && strings.HasSuffix(trimmed, ";") {
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
		}
	}
	if rest := strings.TrimSpace(cur.String()); rest != "" {
		out = append(out, rest)
	}
	return out
}

// checkUndistributed refuses to lay out Citus's tables in a schema that
// holds DalvDB's tables of PostgreSQL without Citus: DalvDB does not move
// existing data into the distributed layout.
func checkUndistributed(ctx context.Context, conn *pgxpool.Conn, schema string) error {
	var plain bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('dalv_heads') IS NOT NULL AND NOT EXISTS (
		SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass('dalv_heads'))`).Scan(&plain)
	if err != nil {
		return err
	}
	if plain {
		return fmt.Errorf("schema %s holds DalvDB tables made without Citus; on Citus, DalvDB lays out and distributes its tables itself in an empty schema: give it another schema (search_path), and move the data with a backend's reads and commits", schema)
	}
	return nil
}
