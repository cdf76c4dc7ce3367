// Package pgtest gives tests a PostgreSQL server: the one named by
// $DALV_TEST_POSTGRES, or else a throwaway one it starts from the installed
// server binaries (initdb into a temporary directory, a free loopback port)
// and stops when the tests end. With neither, tests fail with a message
// that says how to get one: they never skip.
//
// A test package uses it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// and each test takes a fresh schema with [Schema]. A package whose TestMain
// is taken calls [Server] from a test instead, which holds the server for
// that test's lifetime (its subtests included).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dalvdb/dalv/internal/proc"
)

// Env names the environment variable holding the URL of the PostgreSQL
// database tests use, e.g.
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable.
const Env = "DALV_TEST_POSTGRES"

// howTo says how to give the tests a PostgreSQL.
const howTo = `the PostgreSQL tests need a PostgreSQL server, and found none:
  - set ` + Env + ` to a database URL, e.g.
      export ` + Env + `='postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
    (the tests create and drop schemas of their own in it); or
  - install PostgreSQL's server binaries (Debian: apt-get install postgresql;
    initdb and pg_ctl in PATH or /usr/lib/postgresql/*/bin), and the tests
    start a throwaway server of their own`

var (
	mu      sync.Mutex
	baseURL string
)

// Main makes a PostgreSQL available, runs m, stops the server it started,
// and returns the exit code for os.Exit.
func Main(m *testing.M) int {
	u := os.Getenv(Env)
	if u == "" {
		srv, err := Start()
		if err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			return 1
		}
		defer srv.Stop()
		u = srv.URL
	}
	defer StopCitus()
	if err := ping(u); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %s=%s: %v\n", Env, u, err)
		return 1
	}
	mu.Lock()
	baseURL = u
	mu.Unlock()
	return m.Run()
}

// URL returns the database URL Main found or started.
func URL(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if baseURL == "" {
		t.Fatal("pgtest: no database: call pgtest.Main from TestMain")
	}
	return baseURL
}

func ping(u string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return onConn(ctx, u, func(conn *pgx.Conn) error { return conn.Ping(ctx) })
}

// onConn runs fn on a connection of its own to the database at u.
func onConn(ctx context.Context, u string, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return fn(conn)
}

// Server returns the URL of $DALV_TEST_POSTGRES, or else starts a
// throwaway server that is stopped when t ends. With neither, it fails t
// with a message that says how to get one.
func Server(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(Env); u != "" {
		if err := ping(u); err != nil {
			t.Fatalf("pgtest: %s=%s: %v", Env, u, err)
		}
		return u
	}
	srv, err := Start()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(srv.Stop)
	return srv.URL
}

// Schema creates a schema of a fresh name in the database Main found or
// started, drops it (and all it holds) when the test ends, and returns its
// name and a URL whose search_path is it.
func Schema(t testing.TB) (name, schemaURL string) {
	t.Helper()
	return SchemaOn(t, URL(t))
}

// SchemaOn is [Schema] in the database at base.
func SchemaOn(t testing.TB, base string) (name, schemaURL string) {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name = "dalv_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := exec1(ctx, base, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := exec1(ctx, base, "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", name, err)
		}
	})
	return name, WithParam(base, "search_path", name)
}

// Exec runs one statement in the database Main found or started.
func Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ExecOn(t, URL(t), sql, args...)
}

// ExecOn runs one statement in the database at u.
func ExecOn(t testing.TB, u, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := exec1(ctx, u, sql, args...); err != nil {
		t.Fatalf("pgtest: %s: %v", sql, err)
	}
}

func exec1(ctx context.Context, u, sql string, args ...any) error {
	return onConn(ctx, u, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
}

// QueryOn runs a query of one row in the database at u, on a connection of
// its own, and scans the row into dst. It fails t on an error.
func QueryOn(t testing.TB, u, sql string, dst ...any) {
	t.Helper()
	if err := queryRow(u, sql, dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// queryRow is QueryOn that returns its error.
func queryRow(u, sql string, dst ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return onConn(ctx, u, func(conn *pgx.Conn) error { return conn.QueryRow(ctx, sql).Scan(dst...) })
}

// WithParam returns the URL u with the query parameter key set to value.
// u must be a postgres:// URL.
func WithParam(u, key, value string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return u
	}
	q := pu.Query()
	q.Set(key, value)
	pu.RawQuery = q.Encode()
	return pu.String()
}

// Throwaway is a PostgreSQL server of its own.
type Throwaway struct {
	// URL is its postgres database's URL.
	URL    string
	port   int
	dir    string
	bin    string   // the directory of PostgreSQL's programs
	opts   string   // postgres's options, as pg_ctl passes them
	asUser []string // the command prefix that runs as the server's owner
}

// Start initialises a PostgreSQL cluster in a temporary directory and starts
// it on a free loopback port, with durability off (fsync, synchronous
// commits) for speed. As root, it runs the server as the postgres user,
// since PostgreSQL refuses root.
func Start() (*Throwaway, error) { return start(false, "") }

// StartDurable is Start with synchronous commits: a commit is in the WAL
// (the operating system's cache of it: fsync stays off) before it is
// acknowledged, so it survives RestartImmediate, which kills the server as
// a crash does.
func StartDurable() (*Throwaway, error) { return start(true, "") }

// start starts a throwaway server; settings are more of postgres's -c
// options, separated by spaces.
func start(durable bool, settings string) (*Throwaway, error) {
	s, err := newThrowaway()
	if err != nil {
		return nil, err
	}
	if out, err := s.run(filepath.Join(s.bin, "initdb"), "-D", s.data(), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(s.dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if err := s.serve(durable, settings); err != nil {
		os.RemoveAll(s.dir)
		return nil, err
	}
	return s, nil
}

// newThrowaway makes the directory of a server yet to be created.
func newThrowaway() (*Throwaway, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "dalv-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Throwaway{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		owner, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root, PostgreSQL's server must run as another user, and there is no user postgres (%v);\n%s", err, howTo)
		}
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root, PostgreSQL's server must run as user postgres, and runuser is missing: %v", err)
		}
		s.asUser = []string{runuser, "-u", "postgres", "--"}
	}
	return s, nil
}

// serve starts the server of s's data directory on a free loopback port.
func (s *Throwaway) serve(durable bool, settings string) error {
	ports, err := proc.FreePorts(1)
	if err != nil {
		return err
	}
	s.port = ports[0]
	commits := "off"
	if durable {
		commits = "on"
	}
	s.opts = fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=%s -c full_page_writes=off -c max_connections=300 %s",
		s.port, s.dir, commits, settings)
	if err := s.Resume(); err != nil {
		return err
	}
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	return nil
}

// data is the server's data directory.
func (s *Throwaway) data() string { return filepath.Join(s.dir, "data") }

// Standby makes a streaming standby of s: a base backup of s, as a server
// of its own on another port, replicating from s. Its URL reaches it only
// for reads until [Throwaway.Promote].
func (s *Throwaway) Standby() (*Throwaway, error) {
	sb, err := newThrowaway()
	if err != nil {
		return nil, err
	}
	if out, err := sb.run(filepath.Join(sb.bin, "pg_basebackup"), "-D", sb.data(), "-R", "-X", "stream",
		"-c", "fast", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "-U", "postgres"); err != nil {
		os.RemoveAll(sb.dir)
		return nil, fmt.Errorf("pg_basebackup: %v\n%s", err, out)
	}
	if err := sb.serve(false, ""); err != nil {
		os.RemoveAll(sb.dir)
		return nil, err
	}
	return sb, nil
}

// Promote ends a standby's recovery: it becomes a primary, on a new
// timeline, and waits until it accepts writes.
func (s *Throwaway) Promote() error {
	if out, err := s.run(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-w", "-t", "60", "promote"); err != nil {
		return fmt.Errorf("pg_ctl promote: %v\n%s", err, out)
	}
	return nil
}

// Halt kills the server as a crash does (pg_ctl -m immediate) and keeps
// its directory, for [Throwaway.Resume].
func (s *Throwaway) Halt() error {
	if out, err := s.run(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-m", "immediate", "-w", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop -m immediate: %v\n%s", err, out)
	}
	return nil
}

// Resume starts the server on its port, as it was started before.
func (s *Throwaway) Resume() error {
	if out, err := s.run(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-o", s.opts, "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

// Restart stops the server (fast: connections are cut, transactions in
// flight roll back) and starts it again on the same port.
func (s *Throwaway) Restart() error {
	if out, err := s.run(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-m", "fast", "-w", "-t", "60", "restart"); err != nil {
		return fmt.Errorf("pg_ctl restart: %v\n%s", err, out)
	}
	return nil
}

// RestartImmediate kills the server as a crash does (pg_ctl -m immediate:
// no checkpoint, connections cut, recovery from the WAL at the next start)
// and starts it again on the same port.
func (s *Throwaway) RestartImmediate() error {
	if out, err := s.run(filepath.Join(s.bin, "pg_ctl"), "-D", s.data(), "-l", filepath.Join(s.dir, "log"), "-m", "immediate", "-w", "-t", "60", "restart"); err != nil {
		return fmt.Errorf("pg_ctl restart -m immediate: %v\n%s", err, out)
	}
	return nil
}

// Stop stops the server at once and removes its directory.
func (s *Throwaway) Stop() {
	_ = s.Halt()
	os.RemoveAll(s.dir)
}

func (s *Throwaway) run(name string, args ...string) ([]byte, error) {
	argv := append(slices.Clone(s.asUser), name)
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// findBin finds the directory of initdb and pg_ctl: PATH first, then
// Debian's /usr/lib/postgresql/VERSION/bin, the highest version.
func findBin() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		dir := filepath.Dir(p)
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir = filepath.Dir(real)
		}
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New(howTo)
}
