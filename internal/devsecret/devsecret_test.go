package devsecret

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestLoadOrCreateKeepsSecrets(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	if _, err := Load(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of an empty directory = %v, want os.ErrNotExist", err)
	}
	first, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("LoadOrCreate = %v, created %v; want new secrets", err, created)
	}
	fi, err := os.Stat(Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("secrets file mode = %v, want %v", got, want)
	}
	again, created, err := LoadOrCreate(dir)
	if err != nil || created {
		t.Fatalf("second LoadOrCreate = %v, created %v; want the kept secrets", err, created)
	}
	if again.JWTSecret != first.JWTSecret || !slices.Equal(again.BackendKeys, first.BackendKeys) {
		t.Errorf("second LoadOrCreate = %+v, want %+v", again, first)
	}
}

func TestLoadRefusesIncompleteFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(Path(dir), []byte("DALV_JWT_SECRET=abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load of a file without backend keys succeeded")
	}
	if _, _, err := LoadOrCreate(dir); err == nil {
		t.Fatal("LoadOrCreate replaced an incomplete file instead of saying so")
	}
}
