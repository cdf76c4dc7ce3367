package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchAgainstRefuses checks that dalv bench --against refuses what it
// cannot compare, saying why, before it starts anything.
func TestBenchAgainstRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--against", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"--against", dir}, "is not an executable file"},
		{[]string{"--against", notExec}, "is not an executable file"},
		{[]string{"--against", notExec, "--url", "http://127.0.0.1:1"}, "leave out --url, --store and --server-cpuprofile"},
		{[]string{"--against", notExec, "--store", "postgres://127.0.0.1:1/x"}, "leave out --url, --store and --server-cpuprofile"},
		{[]string{"--against", notExec, "--server-cpuprofile", filepath.Join(dir, "p")}, "leave out --url, --store and --server-cpuprofile"},
	} {
		cmd := newBenchCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dalv bench %s = %v, want an error saying %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
