package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dalvdb/dalv/client"
	dalvv1 "github.com/dalvdb/dalv/gen/dalv/v1"
)

// damagedReplica is a closed replica file holding synced data and pending
// writes, ready to be damaged.
type damagedReplica struct {
	file    string
	device  string
	pending map[string]string // key -> value of each pending write, one batch each
	ps      int               // page size
	pages   map[string][]uint64
}

const (
	damagedSynced  = 300 // keys the server holds, synced to the replica
	damagedPending = 20  // pending batches: one put each
)

// openSalvaged opens the damaged replica file of user with OnCorrupt set,
// and returns it (closed at the test's end) with the report OnCorrupt got.
func openSalvaged(t *testing.T, srv *server, file, user string) (*client.Replica, client.CorruptReport) {
	t.Helper()
	var rep client.CorruptReport
	r, err := client.Open(file, client.Options{ServerURL: srv.url(), TokenSource: tokens(user),
		OnCorrupt: func(cr client.CorruptReport) { rep = cr }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeChecked(t, r) })
	return r, rep
}

// commitKV has a backend commit damagedSynced keys, kv/0000 on, to user's
// partition, the value of the i-th being val(i).
func commitKV(t *testing.T, srv *server, user string, val func(i int) string) {
	t.Helper()
	var ops []*dalvv1.Op
	for i := range damagedSynced {
		ops = append(ops, put(fmt.Sprintf("kv/%04d", i), val(i)))
	}
	srv.commit(t, user, ops...)
}

// xs is a value of 200 bytes for commitKV.
func xs(int) string { return strings.Repeat("x", 200) }

// damagePages zeroes the first 16 bytes of the pages of bucket in the
// replica file (the first n of them, or all when n is 0), in place: a
// replica that has the file open sees it, as the file is mapped.
func damagePages(t *testing.T, file, bucket string, n int) {
	t.Helper()
	ps, pages, err := client.BucketPages(file)
	if err != nil {
		t.Fatal(err)
	}
	ids := pages[bucket]
	if n > 0 {
		ids = ids[:n]
	}
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := f.WriteAt(make([]byte, 16), int64(id)*int64(ps)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// makeDamageable builds a replica of user: damagedSynced keys written by a
// backend and synced, then damagedPending local writes not yet synced.
func makeDamageable(t *testing.T, srv *server, user string) *damagedReplica {
	t.Helper()
	commitKV(t, srv, user, func(i int) string { return strings.Repeat(fmt.Sprintf("%04d", i), 50) })
	d := &damagedReplica{file: filepath.Join(t.TempDir(), "app.replica"), pending: map[string]string{}}
	r, err := client.Open(d.file, client.Options{ServerURL: srv.url(), TokenSource: tokens(user)})
	if err != nil {
		t.Fatal(err)
	}
	mustSync(t, r)
	for i := range damagedPending {
		k, v := fmt.Sprintf("pend/%02d", i), strings.Repeat(fmt.Sprintf("p%02d", i), 40)
		if err := r.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
		d.pending[k] = v
	}
	if got := r.Status().Pending; got != damagedPending {
		t.Fatalf("pending batches = %d, want %d", got, damagedPending)
	}
	d.device = r.DeviceID()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if d.ps, d.pages, err = client.BucketPages(d.file); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"parts/o/kv", "pending"} {
		if len(d.pages[b]) == 0 {
			t.Fatalf("bucket %s has no pages of its own (pages: %v)", b, d.pages)
		}
	}
	return d
}

// rewrite applies fn to the file's bytes.
func (d *damagedReplica) rewrite(t *testing.T, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(d.file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.file, fn(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// openInChild opens the file in a child process, so that a crash ends the
// child, not the test binary. It returns the child's output and exit code.
func openInChild(t *testing.T, file string) (string, int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=open", "DALV_CLIENT_TEST_FILE="+file)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestOpenDamagedReplica damages a replica file in each way a disk or a
// careless copy does and checks that Open returns ErrCorrupt naming the
// file (in a child process, so that a crash would end the child and not
// the test binary), and that with OnCorrupt set Open sets the file aside,
// queues the pending writes it could read, and syncs the rest back from a
// real server.
func TestOpenDamagedReplica(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	for _, tc := range []struct {
		name string
		// damage damages the file.
		damage func(t *testing.T, d *damagedReplica)
		// all: every pending write and the device id must be salvaged.
		all bool
	}{
		{name: "truncated to half", damage: func(t *testing.T, d *damagedReplica) {
			st, err := os.Stat(d.file)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(d.file, st.Size()/2); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "bytes flipped", all: true, damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				// In three pages of synced data: the high byte of the
				// element count, of the first element's offset, and a
				// byte of the page id.
				for _, id := range d.pages["parts/o/kv"][:3] {
					off := int(id) * d.ps
					b[off+11] ^= 0xff
					b[off+16+7] ^= 0xff
					b[off+2] ^= 0x5a
				}
				return b
			})
		}},
		{name: "random bytes in the middle", all: true, damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				// The page of synced data nearest the middle of the file.
				mid, best := uint64(len(b)/d.ps/2), uint64(0)
				for _, id := range d.pages["parts/o/kv"] {
					if best == 0 || absDiff(id, mid) < absDiff(best, mid) {
						best = id
					}
				}
				rng := rand.New(rand.NewPCG(1, 2))
				for i := range d.ps {
					b[int(best)*d.ps+i] = byte(rng.Uint32())
				}
				return b
			})
		}},
		{name: "page headers zeroed", all: true, damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				for _, id := range d.pages["parts/o/kv"] {
					clear(b[int(id)*d.ps:][:16])
				}
				return b
			})
		}},
		{name: "pending pages zeroed", damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				for _, id := range d.pages["pending"] {
					clear(b[int(id)*d.ps:][:16])
				}
				return b
			})
		}},
		{name: "zero-length file", damage: func(t *testing.T, d *damagedReplica) {
			if err := os.Truncate(d.file, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "meta pages both damaged", all: true, damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				for _, off := range []int{0, d.ps} {
					b[off+16] ^= 0xff // magic
					b[off+72] ^= 0xff // checksum
				}
				return b
			})
		}},
		{name: "meta pages both zeroed", damage: func(t *testing.T, d *damagedReplica) {
			d.rewrite(t, func(b []byte) []byte {
				clear(b[:2*d.ps])
				return b
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			user := "damaged-" + strings.ReplaceAll(tc.name, " ", "-")
			d := makeDamageable(t, srv, user)
			tc.damage(t, d)
			damaged, err := os.ReadFile(d.file)
			if err != nil {
				t.Fatal(err)
			}

			// Without OnCorrupt: an error, not a crash, and the file
			// stays as it is.
			out, code := openInChild(t, d.file)
			if code != 3 || !strings.Contains(out, "corrupt: true") || !strings.Contains(out, d.file) {
				t.Fatalf("open in a child: exit code %d, want 3 with an error matching ErrCorrupt that names %s; output:\n%s", code, d.file, limitOut(out))
			}
			t.Logf("open: %s", strings.SplitN(out, "\n", 2)[0])
			if now, err := os.ReadFile(d.file); err != nil || !bytes.Equal(now, damaged) {
				t.Fatalf("a refused Open changed the file (err %v)", err)
			}

			// With OnCorrupt: recovered.
			var reps []client.CorruptReport
			r, err := client.Open(d.file, client.Options{ServerURL: srv.url(), TokenSource: tokens(user),
				OnCorrupt: func(rep client.CorruptReport) { reps = append(reps, rep) }})
			if err != nil {
				t.Fatalf("open with OnCorrupt: %v", err)
			}
			t.Cleanup(func() { closeChecked(t, r) })
			if len(reps) != 1 {
				t.Fatalf("OnCorrupt called %d times, want once", len(reps))
			}
			rep := reps[0]
			t.Logf("report: moved to %s; device kept %v; %d batches, %d ops salvaged; lost %q", filepath.Base(rep.MovedTo), rep.DeviceIDKept, rep.Batches, rep.Ops, rep.Lost)
			if !errors.Is(rep.Err, client.ErrCorrupt) {
				t.Errorf("report.Err = %v, want one matching ErrCorrupt", rep.Err)
			}
			if aside, err := os.ReadFile(rep.MovedTo); err != nil || !bytes.Equal(aside, damaged) {
				t.Errorf("the damaged file was not set aside untouched at %q (err %v)", rep.MovedTo, err)
			}
			if got, want := r.DeviceID(), rep.DeviceID; got != want {
				t.Errorf("device id %s, report says %s", got, want)
			}
			if got, want := rep.DeviceIDKept, r.DeviceID() == d.device; got != want {
				t.Errorf("report.DeviceIDKept = %v, but the device id kept is %v", got, want)
			}
			if got := r.Status().Pending; got != rep.Batches || rep.Ops != rep.Batches {
				t.Errorf("pending batches %d, report says %d batches of %d ops (one op each)", got, rep.Batches, rep.Ops)
			}
			if rep.Batches < damagedPending && len(rep.Lost) == 0 {
				t.Errorf("%d of %d pending batches salvaged, but the report lists nothing lost", rep.Batches, damagedPending)
			}
			if tc.all {
				if rep.Batches != damagedPending || !rep.DeviceIDKept || len(rep.Lost) > 0 {
					t.Errorf("salvaged %d of %d batches, device kept %v, lost %q; want everything", rep.Batches, damagedPending, rep.DeviceIDKept, rep.Lost)
				}
			}
			salvaged := 0
			for k, v := range d.pending {
				if got := getString(t, r, k); got == fmt.Sprintf("%q", v) {
					salvaged++
				} else if got != "<absent>" {
					t.Errorf("pending key %s = %s after recovery, want %q or absent", k, got, v)
				}
			}
			if salvaged != rep.Batches {
				t.Errorf("%d pending writes readable after recovery, report says %d", salvaged, rep.Batches)
			}

			// Synced: the server holds the salvaged writes, once each,
			// and the replica holds the server's data.
			mustSync(t, r)
			if got := r.Status().Pending; got != 0 {
				t.Errorf("pending after sync: %d", got)
			}
			state, _ := srv.state(t, user)
			onServer := 0
			for k, v := range d.pending {
				if w := state[k]; w != nil && string(w.GetScalar()) == v {
					onServer++
				}
			}
			if onServer != salvaged {
				t.Errorf("%d pending writes on the server, %d salvaged", onServer, salvaged)
			}
			if diff := diffStates(localState(t, r), state); diff != "" {
				t.Errorf("replica differs from the server: %s", diff)
			}
			if got := len(state); got != damagedSynced+salvaged {
				t.Errorf("server holds %d keys, want %d", got, damagedSynced+salvaged)
			}
		})
	}
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// limitOut keeps a child's output short in a failure message.
func limitOut(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "\n..."
	}
	return s
}

// seedReplica makes a small real replica file (pending writes over a few
// pages) and returns its bytes, its page size and its buckets' pages.
func seedReplica(t testing.TB) ([]byte, int, map[string][]uint64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "seed.replica")
	r, err := client.Open(path, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := r.Put(fmt.Sprintf("k/%03d", i), []byte(strings.Repeat("v", 100+i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.ListAdd("list", []byte("a")); err != nil {
		t.Fatal(err)
	}
	r.Close()
	seed, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps, pages, err := client.BucketPages(path)
	if err != nil {
		t.Fatal(err)
	}
	return seed, ps, pages
}

// openDamaged opens data as a replica file: Open must return a replica
// (whose reads and writes must not crash) or an error matching
// ErrCorrupt; with OnCorrupt it must return a replica.
func openDamaged(t *testing.T, dir string, data []byte) {
	t.Helper()
	path := filepath.Join(dir, "r.replica")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := client.Open(path, client.Options{})
	if err != nil {
		if !errors.Is(err, client.ErrCorrupt) {
			t.Fatalf("open: %v, want nil or an error matching ErrCorrupt", err)
		}
	} else {
		_, _ = r.List("")
		_, _ = r.Get("k/001")
		_ = r.Put("new", []byte("x"))
		r.Close()
	}
	r, err = client.Open(path, client.Options{OnCorrupt: func(client.CorruptReport) {}})
	if err != nil {
		t.Fatalf("open with OnCorrupt: %v", err)
	}
	_, _ = r.List("")
	r.Close()
}

// TestOpenBucketStoredAsValue opens a file whose own partition's entries
// bucket is a plain value: damage the page checks cannot see (the flags of
// a bucket's element flipped), which bbolt reports as an incompatible value
// when Open makes sure the bucket is there. Open refuses it as corrupt, and
// with OnCorrupt sets it aside and opens a fresh file.
func TestOpenBucketStoredAsValue(t *testing.T) {
	t.Parallel()
	good, _, _ := seedReplica(t)
	path := filepath.Join(t.TempDir(), "r.replica")
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		own := tx.Bucket([]byte("parts")).Bucket([]byte("o"))
		if err := own.DeleteBucket([]byte("kv")); err != nil {
			return err
		}
		return own.Put([]byte("kv"), []byte("x"))
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if r, err := client.Open(path, client.Options{}); !errors.Is(err, client.ErrCorrupt) {
		if err == nil {
			r.Close()
		}
		t.Fatalf("open: %v, want an error matching ErrCorrupt", err)
	}
	r, err := client.Open(path, client.Options{OnCorrupt: func(client.CorruptReport) {}})
	if err != nil {
		t.Fatalf("open with OnCorrupt: %v", err)
	}
	r.Close()
}

// TestOpenRandomlyDamaged flips random bits of a real replica file and
// opens it, DALV_DAMAGE_ROUNDS times (default 200), logging the seed;
// replay with DALV_DAMAGE_SEED.
func TestOpenRandomlyDamaged(t *testing.T) {
	t.Parallel()
	rounds, seed := 200, uint64(time.Now().UnixNano())
	if v := os.Getenv("DALV_DAMAGE_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("DALV_DAMAGE_ROUNDS: %v", err)
		}
		rounds = n
	}
	if v := os.Getenv("DALV_DAMAGE_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("DALV_DAMAGE_SEED: %v", err)
		}
		seed = n
	}
	t.Logf("DALV_DAMAGE_SEED=%d", seed)
	good, _, _ := seedReplica(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	corrupt := 0
	for i := range rounds {
		b := bytes.Clone(good)
		for range 1 + rng.IntN(8) {
			b[rng.IntN(len(b))] ^= byte(1 << rng.IntN(8))
		}
		dir := filepath.Join(t.TempDir(), strconv.Itoa(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		openDamaged(t, dir, b)
		if _, err := os.Stat(filepath.Join(dir, "r.replica.salvage")); err == nil {
			t.Fatalf("round %d: a salvage file was left behind", i)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt-*")); len(m) > 0 {
			corrupt++
		}
	}
	t.Logf("%d of %d damaged files were refused as corrupt; the rest opened", corrupt, rounds)
}

// FuzzOpenReplicaFile opens arbitrary bytes as a replica file, as
// openDamaged does. The seeds are a small real replica and damaged copies
// of it, made here rather than kept as binary files. Run it with
//
//	go test -run '^$' -fuzz FuzzOpenReplicaFile -fuzztime 60s ./client/
func FuzzOpenReplicaFile(f *testing.F) {
	seed, ps, pages := seedReplica(f)
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	f.Add(seed[:2*ps])
	f.Add([]byte{})
	for _, ids := range pages {
		for _, id := range ids {
			b := bytes.Clone(seed)
			clear(b[int(id)*ps:][:16])
			f.Add(b)
			b = bytes.Clone(seed)
			b[int(id)*ps+11] ^= 0xff
			f.Add(b)
		}
	}
	b := bytes.Clone(seed)
	b[16] ^= 0xff
	b[ps+16] ^= 0xff
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) { openDamaged(t, t.TempDir(), data) })
}

// TestOnCorruptAppliesSalvagedBatchOnce: a batch the server applied but
// whose answer was lost is still pending when the file is damaged. The
// fresh replica keeps the device id and the batch number, so the server
// recognises the batch and does not apply it again.
func TestOnCorruptAppliesSalvagedBatchOnce(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "salvage-once"
	commitKV(t, srv, user, xs)
	r, n := device(t, srv, "app.replica", user, client.Options{})
	mustSync(t, r)
	if err := r.ListAdd("log", []byte("once")); err != nil {
		t.Fatal(err)
	}
	n.setLoseSync(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Sync(ctx); err == nil {
		t.Fatal("sync succeeded though its answer was lost")
	}
	_, applied := srv.state(t, user)
	if applied != 2 {
		t.Fatalf("server at version %d after the lost answer, want 2 (the backend's commit and the batch)", applied)
	}
	if got := r.Status().Pending; got != 1 {
		t.Fatalf("pending = %d, want 1", got)
	}
	file, device := r.Path(), r.DeviceID()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	damagePages(t, file, "parts/o/kv", 0)

	r2, rep := openSalvaged(t, srv, file, user)
	if !rep.DeviceIDKept || r2.DeviceID() != device || rep.Batches != 1 {
		t.Errorf("report: device kept %v (%s, was %s), %d batches; want the device kept and 1 batch", rep.DeviceIDKept, r2.DeviceID(), device, rep.Batches)
	}
	mustSync(t, r2)
	state, version := srv.state(t, user)
	if version != applied {
		t.Errorf("server at version %d after the salvaged batch went up again, want %d: it applied twice", version, applied)
	}
	if got := show(state["log"]); got != "[once]" {
		t.Errorf("log = %s on the server, want [once]", got)
	}
	if diff := diffStates(localState(t, r2), state); diff != "" {
		t.Errorf("replica differs from the server: %s", diff)
	}
}

// TestReadOfPageDamagedWhileOpen damages the synced data's pages under an
// open replica (the file is mapped, so reads see it): reads return an error
// matching ErrCorrupt where bbolt panics, and the process goes on.
func TestReadOfPageDamagedWhileOpen(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "damaged-while-open"
	commitKV(t, srv, user, xs)
	r := openReplica(t, "app.replica", client.Options{ServerURL: srv.url(), TokenSource: tokens(user)})
	mustSync(t, r)
	damagePages(t, r.Path(), "parts/o/kv", 0)
	if _, err := r.Get("kv/0150"); !errors.Is(err, client.ErrCorrupt) || !strings.Contains(err.Error(), r.Path()) {
		t.Errorf("get = %v, want an error matching ErrCorrupt naming the file", err)
	}
	if _, err := r.List(""); !errors.Is(err, client.ErrCorrupt) {
		t.Errorf("list = %v, want an error matching ErrCorrupt", err)
	}
}

// TestOnCorruptKeepsDeferredConflicts: a conflict waiting in the inbox
// holds the device's own value; recovery carries it over, and it can be
// settled after.
func TestOnCorruptKeepsDeferredConflicts(t *testing.T) {
	t.Parallel()
	srv := startServer(t)
	const user = "salvage-inbox"
	commitKV(t, srv, user, xs)
	r, err := client.Open(filepath.Join(t.TempDir(), "app.replica"), client.Options{ServerURL: srv.url(), TokenSource: tokens(user)})
	if err != nil {
		t.Fatal(err)
	}
	mustSync(t, r)
	if err := r.Put("doc", []byte("mine")); err != nil {
		t.Fatal(err)
	}
	srv.commit(t, user, put("doc", "theirs"))
	mustSync(t, r) // no resolver: the conflict waits in the inbox
	if c, err := r.Conflicts(); err != nil || len(c) != 1 {
		t.Fatalf("conflicts = %v (err %v), want one", c, err)
	}
	file := r.Path()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	damagePages(t, file, "parts/o/kv", 1)

	r2, rep := openSalvaged(t, srv, file, user)
	if rep.Conflicts != 1 || len(rep.Lost) > 0 {
		t.Errorf("report: %d conflicts carried over, lost %q; want 1 and nothing lost", rep.Conflicts, rep.Lost)
	}
	mustSync(t, r2)
	c, err := r2.Conflicts()
	if err != nil || len(c) != 1 || show(c[0].Local) != `"mine"` || show(c[0].Remote) != `"theirs"` {
		t.Fatalf("conflicts after recovery = %v (err %v), want doc: local mine, remote theirs", c, err)
	}
	if err := r2.Settle("doc", client.Use(c[0].Local)); err != nil {
		t.Fatal(err)
	}
	mustSync(t, r2)
	if state, _ := srv.state(t, user); show(state["doc"]) != `"mine"` {
		t.Errorf("doc = %s on the server after settling, want \"mine\"", show(state["doc"]))
	}
}
