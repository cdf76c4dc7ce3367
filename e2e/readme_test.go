package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeSession is the README's curl session: the fenced block of "A first
// session with curl" that runs curl, as lines.
func readmeSession(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## A first session with curl\n")
	if !ok {
		t.Fatal(`README.md has no section "A first session with curl"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	for rest := section; ; {
		var block string
		_, rest, ok = strings.Cut(rest, "```sh\n")
		if !ok {
			break
		}
		block, rest, ok = strings.Cut(rest, "```\n")
		if !ok {
			t.Fatal("README.md: a fenced block of the curl session is not closed")
		}
		if strings.Contains(block, "curl ") {
			return strings.Split(strings.TrimSuffix(block, "\n"), "\n")
		}
	}
	t.Fatal("README.md: no fenced block with curl in \"A first session with curl\"")
	return nil
}

// readmeScript turns the session into a shell script and the answers it
// documents. An answer is the run of "# " lines right after a command
// (with no blank line between); the script echoes a marker after each
// answered command, so that its output splits into one part per answer
// and a last part, what the commands after the last answer printed.
func readmeScript(lines []string) (script string, answers []string) {
	const marker = "@@@ answer @@@"
	var s strings.Builder
	var answer []string
	afterCode := false
	flush := func() {
		if answer != nil {
			answers = append(answers, strings.Join(answer, "\n")+"\n")
			answer = nil
		}
	}
	for _, l := range lines {
		isComment := strings.HasPrefix(l, "#")
		switch {
		case isComment && (afterCode || answer != nil):
			if answer == nil {
				s.WriteString("echo '" + marker + "'\n")
			}
			answer = append(answer, strings.TrimPrefix(strings.TrimPrefix(l, "#"), " "))
			afterCode = false
			continue
		case strings.TrimSpace(l) == "" || isComment:
			afterCode = false
		default:
			afterCode = true
		}
		flush()
		s.WriteString(l + "\n")
	}
	flush()
	return s.String(), answers
}

// TestReadmeSession runs the README's curl session, as a newcomer pastes
// it into a second terminal, against a fresh `dalv serve --dev` started in
// the same directory, and compares every answer with the README's. The
// real binary stands in for `go run ./cmd/dalv`, and the server's address
// for 127.0.0.1:7070.
func TestReadmeSession(t *testing.T) {
	t.Parallel()
	lines := readmeSession(t)
	dir := t.TempDir()
	srv := startDev(t, filepath.Join(dir, "dalv-data"))

	script, answers := readmeScript(lines)
	for _, sub := range []struct{ old, new string }{
		{"http://127.0.0.1:7070", srv.URL()},
		{"go run ./cmd/dalv ", binary + " "},
	} {
		if !strings.Contains(script, sub.old) {
			t.Fatalf("the README's session no longer has %q: update this test", sub.old)
		}
		script = strings.ReplaceAll(script, sub.old, sub.new)
	}
	if len(answers) == 0 {
		t.Fatal("the README's session shows no answers")
	}

	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(c, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = dir
	// A second terminal: no secret exported; the operator commands reach
	// the server's address, which is not the default one.
	cmd.Env = append(noSecrets(), "DALV_ADDR="+srv.URL())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the README's session failed: %v\nscript:\n%s\nstdout:\n%s\nstderr:\n%s", err, script, stdout.String(), stderr.String())
	}
	parts := strings.Split(stdout.String(), "@@@ answer @@@\n")
	if got, want := len(parts), len(answers)+1; got != want {
		t.Fatalf("the session printed %d parts, want %d:\n%s", got, want, stdout.String())
	}
	for i, want := range answers {
		if got := parts[i]; got != want {
			t.Errorf("answer %d:\ngot:  %q\nwant: %q (README.md)", i+1, got, want)
		}
	}
	if got := parts[len(answers)]; got != "" {
		t.Errorf("the session printed %q after its last documented answer", got)
	}
}
