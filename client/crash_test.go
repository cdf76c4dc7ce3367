package client_test

// TestCrashKeepsAcknowledgedWrites SIGKILLs a child process that writes to a
// replica (half of the rounds also syncing with a real server in the
// background) at random moments, and after each kill reopens the file and
// checks that every write whose call returned is there, that no transaction
// shows in part, and that the file is consistent. At the end it syncs and
// checks the server holds the same.
//
// Knobs: DALV_CRASH_KILLS (kills, default 50), DALV_CRASH_SEED (the seed of
// the kill moments; logged). Replay with, e.g.
//
//	DALV_CRASH_SEED=42 go test -race -run TestCrashKeepsAcknowledgedWrites ./client/

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dalvdb/dalv/client"
)

// crashWrite makes write n: every third one is a transaction that sets
// tx/a, tx/b and tx/c to n and adds n to the list log; the others put p/n.
// Writing n twice is harmless, so a child may redo the write it was killed
// in.
func crashWrite(r *client.Replica, n int) error {
	v := []byte(strconv.Itoa(n))
	if n%3 != 0 {
		return r.Put(fmt.Sprintf("p/%06d", n), v)
	}
	return r.Update(func(tx *client.Tx) error {
		for _, k := range []string{"tx/a", "tx/b", "tx/c"} {
			if err := tx.Put(k, v); err != nil {
				return err
			}
		}
		return tx.ListAdd("log", v)
	})
}

// crashChild writes from DALV_CRASH_START on, printing "ack N" after each
// write returns, until it is killed.
func crashChild() int {
	start, err := strconv.Atoi(os.Getenv("DALV_CRASH_START"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "DALV_CRASH_START:", err)
		return 2
	}
	o := client.Options{}
	if url := os.Getenv("DALV_CRASH_SERVER"); url != "" {
		o.ServerURL = url
		o.TokenSource = tokens(os.Getenv("DALV_CRASH_USER"))
		o.RetryMin, o.RetryMax = 5*time.Millisecond, 50*time.Millisecond
	}
	r, err := client.Open(os.Getenv("DALV_CRASH_FILE"), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 2
	}
	if o.ServerURL != "" {
		if err := r.Start(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "start:", err)
			return 2
		}
	}
	w := bufio.NewWriter(os.Stdout)
	for n := start; ; n++ {
		if err := crashWrite(r, n); err != nil {
			fmt.Fprintln(os.Stderr, "write:", err)
			return 2
		}
		// Acknowledged only once the line is out of this process.
		fmt.Fprintf(w, "ack %d\n", n)
		w.Flush()
	}
}

// crashCheck checks what a reopened replica shows against the acknowledged
// writes: each acked put is there, the transaction keys agree with each
// other and with the log, and the log holds every acked transaction.
func crashCheck(state map[string]string, logItems []string, acked int) error {
	for n := 1; n <= acked; n++ {
		if n%3 == 0 {
			continue
		}
		k := fmt.Sprintf("p/%06d", n)
		if got := state[k]; got != `"`+strconv.Itoa(n)+`"` {
			return fmt.Errorf("acknowledged write %s = %s, want %d", k, got, n)
		}
	}
	a, b, c := state["tx/a"], state["tx/b"], state["tx/c"]
	if a != b || b != c {
		return fmt.Errorf("half a transaction: tx/a=%s tx/b=%s tx/c=%s", a, b, c)
	}
	maxLog := 0
	seen := make(map[int]bool)
	for _, it := range logItems {
		n, err := strconv.Atoi(it)
		if err != nil {
			return fmt.Errorf("log item %q", it)
		}
		seen[n] = true
		maxLog = max(maxLog, n)
	}
	for n := 3; n <= acked; n += 3 {
		if !seen[n] {
			return fmt.Errorf("acknowledged transaction %d missing from the log %v", n, logItems)
		}
	}
	if maxLog > 0 && a != `"`+strconv.Itoa(maxLog)+`"` {
		return fmt.Errorf("half a transaction: log reaches %d, tx/a is %s", maxLog, a)
	}
	if maxLog == 0 && a != "" {
		return fmt.Errorf("tx/a is %s with an empty log", a)
	}
	return nil
}

// readCrashState reads a replica's keys as strings, and the log's items.
func readCrashState(t *testing.T, r *client.Replica) (map[string]string, []string) {
	t.Helper()
	state := make(map[string]string)
	var logItems []string
	for k, v := range localState(t, r) {
		if k == "log" {
			for _, it := range v.GetList().GetItems() {
				logItems = append(logItems, string(it))
			}
			continue
		}
		state[k] = show(v)
	}
	return state, logItems
}

func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	kills := 50
	if s := os.Getenv("DALV_CRASH_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("DALV_CRASH_KILLS=%q", s)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DALV_CRASH_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DALV_CRASH_SEED=%q", s)
		}
		seed = n
	}
	t.Logf("seed %d (DALV_CRASH_SEED=%d to replay the kill moments), %d kills", seed, seed, kills)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	srv := startServer(t, "--rate-limit", "-1")
	const user = "crash"
	path := filepath.Join(t.TempDir(), "replica.db")
	acked := 0
	for i := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"=crash", "DALV_CRASH_FILE="+path, "DALV_CRASH_START="+strconv.Itoa(acked+1))
		if i%2 == 1 {
			cmd.Env = append(cmd.Env, "DALV_CRASH_SERVER="+srv.url(), "DALV_CRASH_USER="+user)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a random number of acknowledgements plus a random
		// delay, so the kill lands anywhere in a write (or in a sync).
		want := 1 + rng.IntN(30)
		delay := time.Duration(rng.IntN(3000)) * time.Microsecond
		lines := make(chan int)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ack "))
				if err == nil {
					lines <- n
				}
			}
		}()
		got := 0
		deadline := time.After(30 * time.Second)
	wait:
		for got < want {
			select {
			case n, ok := <-lines:
				if !ok {
					break wait
				}
				if n != acked+1 {
					t.Fatalf("round %d: child acknowledged %d after %d", i, n, acked)
				}
				acked, got = n, got+1
			case <-deadline:
				break wait
			}
		}
		time.Sleep(delay) // a random moment, not a synchronisation
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for n := range lines { // acknowledgements that got out before the kill
			if n != acked+1 {
				t.Fatalf("round %d: child acknowledged %d after %d", i, n, acked)
			}
			acked = n
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("round %d: child ended by itself (%v) before the kill:\n%s", i, err, stderr.String())
		}
		r, err := client.Open(path, client.Options{})
		if err != nil {
			t.Fatalf("round %d: reopen after the kill: %v", i, err)
		}
		state, logItems := readCrashState(t, r)
		if err := crashCheck(state, logItems, acked); err != nil {
			t.Fatalf("round %d (seed %d), %d acknowledged: %v", i, seed, acked, err)
		}
		if err := r.Check(); err != nil {
			t.Fatalf("round %d: replica inconsistent after the kill: %v", i, err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// Sync what is left and compare with the server.
	r, err := client.Open(path, client.Options{ServerURL: "http://dalv.test", HTTPClient: newNet(srv).client(), TokenSource: tokens(user)})
	if err != nil {
		t.Fatal(err)
	}
	defer closeChecked(t, r)
	mustSync(t, r)
	requireSame(t, srv, user, r)
	want, _ := srv.state(t, user)
	state := make(map[string]string)
	var logItems []string
	for k, v := range want {
		if k == "log" {
			for _, it := range v.GetList().GetItems() {
				logItems = append(logItems, string(it))
			}
			continue
		}
		state[k] = show(v)
	}
	if err := crashCheck(state, logItems, acked); err != nil {
		t.Fatalf("server after the final sync: %v", err)
	}
	if !slices.IsSortedFunc(logItems, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y }) {
		t.Errorf("server log out of order: %v", logItems)
	}
	t.Logf("%d writes acknowledged across %d kills", acked, kills)
}
