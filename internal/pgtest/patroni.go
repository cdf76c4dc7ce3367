package pgtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dalvdb/dalv/internal/proc"
	"github.com/dalvdb/dalv/internal/wait"
)

// Patroni is a PostgreSQL primary and a synchronous standby managed by
// Patroni, with a one-member etcd as Patroni's store, each process on its
// own loopback ports and in a temporary directory of the test's own.
type Patroni struct {
	// URL is a multi-host URL of both members with
	// target_session_attrs=read-write: it connects to whichever is primary.
	URL     string
	members []patroniMember
	dir     string
}

type patroniMember struct {
	name string
	url  string // this member's own URL
	data string // its data directory
	pgid int    // the process group of its Patroni and PostgreSQL
}

// patroniInstall is the Debian command that installs what StartPatroni runs.
var patroniInstall = []string{"apt-get", "install", "-y", "--no-install-recommends", "patroni", "etcd-server"}

// StartPatroni starts etcd and two Patroni members in synchronous mode
// (synchronous_commit=on: a commit is acknowledged once the standby has
// it), waits until one is primary and the other its synchronous standby,
// and stops them all when t ends. As root it installs Patroni and etcd from
// Debian's packages when they are missing, and runs every process as user
// postgres, since PostgreSQL refuses root.
func StartPatroni(t testing.TB) *Patroni {
	t.Helper()
	bin, err := findBin()
	if err != nil {
		t.Fatal(err)
	}
	if err := lookPatroni(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dalv-patroni-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Patroni{dir: dir}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Runs after the processes' own clean-ups have killed Patroni: the
	// postmasters, in sessions of their own, are not in its process group.
	t.Cleanup(func() {
		for _, m := range p.members {
			if pid, err := postmasterPID(m.data); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	var asUser []string
	if os.Geteuid() == 0 {
		owner, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL must run as user postgres, and there is none: %v", err)
		}
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	// etcd client, etcd peer, then a PostgreSQL and a REST port per member
	ports, err := proc.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	p.start(t, asUser, "etcd", "etcd", "--name", "e", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "e="+peerURL)

	hosts := make([]string, 2)
	for i := range 2 {
		m := patroniMember{name: fmt.Sprintf("m%d", i+1), data: filepath.Join(dir, fmt.Sprintf("m%d", i+1))}
		pgPort, restPort := ports[2+2*i], ports[3+2*i]
		m.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pgPort)
		hosts[i] = fmt.Sprintf("127.0.0.1:%d", pgPort)
		conf := filepath.Join(dir, m.name+".yml")
		if err := os.WriteFile(conf, []byte(patroniConfig(m.name, dir, bin, ports[0], pgPort, restPort)), 0o644); err != nil {
			t.Fatal(err)
		}
		m.pgid = p.start(t, asUser, m.name, "patroni", conf)
		p.members = append(p.members, m)
		if i == 0 {
			// The first member bootstraps the cluster; the second clones it.
			p.waitPrimary(t, 60*time.Second)
		}
	}
	p.URL = fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&target_session_attrs=read-write", strings.Join(hosts, ","))
	p.WaitSynchronous(t, 60*time.Second)
	return p
}

// lookPatroni finds patroni and etcd in PATH, installing Debian's packages
// as root when they are missing.
func lookPatroni() error {
	missing := func() error {
		for _, b := range []string{"patroni", "etcd"} {
			if _, err := exec.LookPath(b); err != nil {
				return err
			}
		}
		return nil
	}
	if missing() == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("pgtest: patroni or etcd is missing (%v): install them with: %s", missing(), strings.Join(patroniInstall, " "))
	}
	cmd := exec.Command(patroniInstall[0], patroniInstall[1:]...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: %s: %v\n%s", strings.Join(patroniInstall, " "), err, out)
	}
	return missing()
}

// patroniConfig is a member's Patroni configuration: a short loop and TTL
// so that a failover takes seconds, synchronous mode, and
// primary_start_timeout 0 so that a crashed primary fails over at once
// rather than being restarted in place.
func patroniConfig(name, dir, bin string, etcdPort, pgPort, restPort int) string {
	return fmt.Sprintf(`scope: dalv-test
name: %[1]s
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:%[5]d
  connect_address: 127.0.0.1:%[5]d
etcd3:
  hosts: 127.0.0.1:%[3]d
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    primary_start_timeout: 0
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        synchronous_commit: "on"
        wal_log_hints: "on"
        max_connections: 300
        fsync: "off"
        full_page_writes: "on"
  initdb:
    - encoding: UTF8
    - locale: C
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:%[4]d
  connect_address: 127.0.0.1:%[4]d
  data_dir: %[2]s/%[1]s
  bin_dir: %[6]s
  pgpass: %[2]s/%[1]s.pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: %[2]s
`, name, dir, etcdPort, pgPort, restPort, bin)
}

// start runs a process of the cluster's, its output in dir/name.log, and
// kills it (with its children) when t ends. It returns the process group
// of the process and its children.
func (p *Patroni) start(t testing.TB, asUser []string, name string, argv ...string) int {
	t.Helper()
	argv = append(slices.Clone(asUser), argv...)
	log, err := os.Create(filepath.Join(p.dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		// Patroni and PostgreSQL run in the process group started here
		// (runuser forks them); PostgreSQL's postmaster also dies when its
		// children see it gone.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			t.Logf("%s's log:\n%s", name, tail(out, 4000))
		}
	})
	return cmd.Process.Pid
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Primary returns the index of the member that is primary now, or an
// error when none is.
func (p *Patroni) Primary() (int, error) {
	var errs []error
	for i, m := range p.members {
		var inRecovery bool
		err := queryRow(m.url, "SELECT pg_is_in_recovery()", &inRecovery)
		if err == nil && !inRecovery {
			return i, nil
		}
		errs = append(errs, fmt.Errorf("%s: in recovery %v, %v", m.name, inRecovery, err))
	}
	return -1, errors.Join(errs...)
}

func (p *Patroni) waitPrimary(t testing.TB, timeout time.Duration) int {
	t.Helper()
	var i int
	wait.ForEvery(t, timeout, 50*time.Millisecond, func() (err error) {
		i, err = p.Primary()
		return err
	})
	return i
}

// WaitSynchronous waits until the primary has a synchronous standby that
// streams from it, so that every commit acknowledged from then on is on
// both members.
func (p *Patroni) WaitSynchronous(t testing.TB, timeout time.Duration) {
	t.Helper()
	wait.ForEvery(t, timeout, 50*time.Millisecond, func() error {
		i, err := p.Primary()
		if err != nil {
			return err
		}
		var n int
		if err := queryRow(p.members[i].url, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming'", &n); err != nil {
			return err
		}
		if n == 0 {
			return errors.New("the primary has no synchronous standby yet")
		}
		return nil
	})
}

// KillPrimary kills the primary's node: SIGKILL to its Patroni and its
// PostgreSQL (postmaster and backends) at once. It returns once Patroni
// has promoted the other member, which takes up to the leader key's TTL.
//
// Only the postmaster killed, Patroni 3.0 restarts it in place and keeps
// it primary (primary_start_timeout 0 did not fail over in a test of
// Debian's 3.0.2), which tests a restart rather than a failover.
func (p *Patroni) KillPrimary(t testing.TB) {
	t.Helper()
	old := p.waitPrimary(t, 30*time.Second)
	// Patroni starts the postmaster in a session of its own: kill both.
	pid, err := postmasterPID(p.members[old].data)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(-p.members[old].pgid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s's Patroni: %v", p.members[old].name, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s's postmaster %d: %v", p.members[old].name, pid, err)
	}
	// The postmaster's backends exit when they see it gone.
	start := time.Now()
	wait.ForEvery(t, 60*time.Second, 50*time.Millisecond, func() error {
		i, err := p.Primary()
		if err != nil {
			return err
		}
		if i == old {
			return fmt.Errorf("%s is still primary", p.members[old].name)
		}
		return nil
	})
	t.Logf("killed %s (Patroni and PostgreSQL); %s primary after %v", p.members[old].name, p.members[1-old].name, time.Since(start).Round(100*time.Millisecond))
}

// postmasterPID reads the postmaster's process id from data/postmaster.pid.
func postmasterPID(data string) (int, error) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}
