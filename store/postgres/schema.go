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
// schema from version NNNN-1 to NNNN. A released file is never edited; a
// change is a new file.
//
//go:embed migrations/*.sql
var migrations embed.FS

// migration is one schema version's SQL.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in version order, checking
// that versions run 1, 2, 3... without a gap.
func loadMigrations() ([]migration, error) {
	files, err := fs.Glob(migrations, "migrations/*.sql")
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

// SchemaVersion is the schema version this package creates and reads.
func SchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil {
		return 0
	}
	return len(ms)
}

// migrate brings the schema in the connection's search path (creating
// schema first, when it is set) to the latest version. A session advisory
// lock keyed by the schema keeps nodes that start at once from migrating
// together: the first migrates, the others wait and find it done.
// It returns the schema's name.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) (string, error) {
	err := migrateSchema(ctx, pool, &schema)
	return schema, err
}

func migrateSchema(ctx context.Context, pool *pgxpool.Pool, schemap *string) error {
	ms, err := loadMigrations()
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
	if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
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
	if have > len(ms) {
		return fmt.Errorf("the database's dalv schema is at version %d, newer than this dalv's %d: run a newer dalv", have, len(ms))
	}
	for _, m := range ms[have:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
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
