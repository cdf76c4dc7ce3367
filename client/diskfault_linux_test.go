package client_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dalvdb/dalv/client"
)

// fillDisk makes every write and sync of the file at path, open in this
// process, fail as on a full disk: it puts /dev/full (ENOSPC on write) in
// place of the file's descriptor, keeping the file's own description (and
// its lock) alive in a copy. The returned function puts the file back.
func fillDisk(t *testing.T, path string) (heal func()) {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	for _, e := range fds {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == abs {
			if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if fd < 0 {
		t.Fatalf("%s is not open in this process", abs)
	}
	saved, err := syscall.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	full, err := os.OpenFile("/dev/full", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	if err := syscall.Dup3(int(full.Fd()), fd, syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := syscall.Dup3(saved, fd, syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		_ = syscall.Close(saved)
	}
}

// TestReplicaDiskFull fills the disk under a replica's file: every write
// then returns an error (ENOSPC), the replica's memory still agrees with its
// file, and the file opened again holds every write that returned nil, and
// of the failed ones none, or the value written.
func TestReplicaDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	r, err := client.Open(path, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	durable := make(map[string]string)
	for i := range 20 {
		k, v := fmt.Sprintf("k/%02d", i), fmt.Sprint(i)
		if err := r.Put(k, []byte(v)); err != nil {
			t.Fatal(err)
		}
		durable[k] = v
	}
	heal := fillDisk(t, path)
	failed := make(map[string]string)
	for i := 20; i < 30; i++ {
		k, v := fmt.Sprintf("k/%02d", i), fmt.Sprint(i)
		err := r.Put(k, []byte(v))
		if err == nil {
			t.Fatalf("Put(%s) on a full disk returned nil", k)
		}
		if !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("Put(%s) on a full disk: %v, want an error wrapping ENOSPC", k, err)
		}
		failed[k] = v
		// Space comes back for one write: it must not carry a failed one.
		if i == 25 {
			heal()
			k := "k/healed"
			if err := r.Put(k, []byte("h")); err != nil {
				t.Errorf("Put after space came back: %v", err)
			} else {
				durable[k] = "h"
			}
			heal = fillDisk(t, path)
		}
	}
	// A write that needs the file to grow fails too (growing maps the file
	// again, and the stand-in has no size).
	if err := r.Put("k/big", make([]byte, 256<<10)); err == nil {
		t.Fatal("Put of 256 KiB on a full disk returned nil")
	} else {
		t.Logf("Put of 256 KiB on a full disk: %v", err)
	}
	failed["k/big"] = ""
	heal()
	// Space is back: reads and writes work again.
	for k, v := range durable {
		if got, err := r.Get(k); err != nil || string(got.GetScalar()) != v {
			t.Errorf("%s after space came back = %v, %v; want %q", k, got, err, v)
		}
	}
	if err := r.Put("k/after", make([]byte, 256<<10)); err != nil {
		t.Errorf("Put of 256 KiB after space came back: %v", err)
	} else {
		durable["k/after"] = string(make([]byte, 256<<10))
	}
	if err := r.Check(); err != nil {
		t.Errorf("after failed writes the replica's memory and file disagree: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Logf("Close after failed writes: %v", err)
	}

	r, err = client.Open(path, client.Options{})
	if err != nil {
		t.Fatalf("reopening after the disk filled: %v", err)
	}
	t.Cleanup(func() { closeChecked(t, r) })
	for k, v := range durable {
		got, err := r.Get(k)
		if err != nil || string(got.GetScalar()) != v {
			t.Errorf("%s after reopening = %v, %v; want %q, acknowledged durable", k, got, err, v)
		}
	}
	for k := range failed {
		if got, err := r.Get(k); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("%s, whose write failed, reads %v, %v after reopening", k, got, err)
		}
	}
	if n := r.Status().Pending; n != len(durable) {
		t.Errorf("%d batches pending after reopening, want the %d durable writes", n, len(durable))
	}
}
