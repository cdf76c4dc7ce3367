package diskfault

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestTriggerFS checks the trigger file: no file, an empty one, each kind
// on the operations it hits and spares, and an unknown kind.
func TestTriggerFS(t *testing.T) {
	dir := t.TempDir()
	trigger := filepath.Join(dir, "trigger")
	fs := TriggerFS(vfs.Default, trigger)
	write := func(name string) error {
		f, err := fs.Create(filepath.Join(dir, name), vfs.WriteCategoryUnspecified)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write([]byte("x")); err != nil {
			return err
		}
		return f.Sync()
	}
	for _, tc := range []struct {
		trigger string // "-": no file
		name    string
		want    error
	}{
		{"-", "000001.log", nil},
		{"", "000001.log", nil},
		{"wal-write", "000002.log", syscall.EIO},
		{"wal-write", "000003.sst", nil},
		{"wal-sync", "000004.log", syscall.EIO},
		{"wal-sync", "MANIFEST-000001", nil},
		{"enospc\n", "000005.sst", syscall.ENOSPC},
		{"enospc", "000006.log", syscall.ENOSPC},
	} {
		_ = os.Remove(trigger)
		if tc.trigger != "-" {
			if err := os.WriteFile(trigger, []byte(tc.trigger), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		err := write(tc.name)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("trigger %q, write and sync %s: %v, want %v", tc.trigger, tc.name, err, tc.want)
		}
	}
	if err := os.WriteFile(trigger, []byte("melt"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := write("000007.log"); err == nil {
		t.Error("an unknown fault in the trigger file was ignored")
	}
}
