// Package proc starts `dalv serve` as a child process and waits until it
// listens, for end-to-end tests, crash tests and `dalv bench`, which all
// speak to a real server over HTTP.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server is a running `dalv serve` process.
type Server struct {
	// Addr is the host:port it listens on.
	Addr string
	// Data is its data directory.
	Data   string
	scheme string // http, or https when it serves TLS
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // of Wait, once done is closed

	mu     sync.Mutex
	stdout strings.Builder // everything it printed, for failure messages
	stderr strings.Builder
}

// Options says how to start a server.
type Options struct {
	// Binary is the dalv executable. Required.
	Binary string
	// Data is the data directory. Required.
	Data string
	// Args are extra flags after `serve --addr 127.0.0.1:0 --data DIR`.
	Args []string
	// Env is added to the environment (KEY=VALUE).
	Env []string
	// Timeout bounds the wait for the listening line (default 30s).
	Timeout time.Duration
	// Stderr, when set, also receives the server's log.
	Stderr io.Writer
	// NoFile, when positive, is the server's limit on open files (soft and
	// hard), set by starting it through util-linux's prlimit, which then
	// runs the server as the same process.
	NoFile int
}

const listening = "DalvDB listening on "

// Start starts the server and returns once it listens. The caller must
// Stop or Kill it.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	args := append([]string{o.Binary, "serve", "--addr", "127.0.0.1:0", "--data", o.Data}, o.Args...)
	if o.NoFile > 0 {
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			return nil, fmt.Errorf("a server with a file limit is started through prlimit (util-linux): %w", err)
		}
		args = append([]string{prlimit, fmt.Sprintf("--nofile=%d:%d", o.NoFile, o.NoFile), "--"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), o.Env...)
	s := &Server{Data: o.Data, cmd: cmd, done: make(chan struct{})}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", o.Binary, err)
	}
	addrc := make(chan string, 1)
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(outPipe)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.stdout.WriteString(line + "\n")
			s.mu.Unlock()
			if rest, ok := strings.CutPrefix(line, listening); ok {
				url, _, _ := strings.Cut(rest, " ")
				select {
				case addrc <- url:
				default:
				}
			}
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(errPipe)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.stderr.WriteString(line + "\n")
			s.mu.Unlock()
			if o.Stderr != nil {
				fmt.Fprintln(o.Stderr, line)
			}
		}
	}()
	go func() {
		readers.Wait()
		s.err = cmd.Wait()
		close(s.done)
	}()
	t := time.NewTimer(o.Timeout)
	defer t.Stop()
	select {
	case url := <-addrc:
		s.scheme, s.Addr, _ = strings.Cut(url, "://")
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("dalv serve exited before listening (%v):\n%s%s", s.err, s.Stdout(), s.Stderr())
	case <-t.C:
		_ = s.Kill()
		return nil, fmt.Errorf("dalv serve did not listen within %v:\n%s", o.Timeout, s.Stderr())
	case <-ctx.Done():
		_ = s.Kill()
		return nil, ctx.Err()
	}
}

// URL is the server's base URL: http://, or https:// when it serves TLS.
func (s *Server) URL() string { return s.scheme + "://" + s.Addr }

// PID is the server's process id.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Stdout returns what the server printed on stdout so far.
func (s *Server) Stdout() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stdout.String()
}

// Stderr returns the server's log so far.
func (s *Server) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// Done is closed when the process has exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// ExitErr is the process's exit error, once Done is closed.
func (s *Server) ExitErr() error { return s.err }

// Stop sends SIGTERM and waits up to timeout for a clean exit, then kills.
func (s *Server) Stop(timeout time.Duration) error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return s.err
	case <-time.After(timeout):
	}
	// SIGQUIT makes the Go runtime print every goroutine's stack to
	// stderr before it exits, so the log shows what held the process.
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.Kill()
	}
	return fmt.Errorf("dalv serve did not stop within %v of SIGTERM (its goroutines' stacks, from SIGQUIT, end its log)", timeout)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill() error {
	err := s.cmd.Process.Signal(syscall.SIGKILL)
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-s.done
	return nil
}

// RSS returns the process's resident memory in bytes (Linux /proc).
func (s *Server) RSS() (int64, error) { return RSS(s.PID()) }

// RSS returns the resident memory of process pid in bytes (Linux /proc).
func RSS(pid int) (int64, error) {
	m, err := ReadMemory(pid)
	return m.RSS, err
}

// Memory is a process's resident memory in bytes, and how much of it is
// anonymous (heap, stacks, memory the process allocated) and how much is
// mapped from files (chiefly its own executable).
type Memory struct {
	RSS, Anon, File int64
}

// ReadMemory reads the resident memory of process pid (Linux /proc).
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	fields := map[string]*int64{"VmRSS:": &m.RSS, "RssAnon:": &m.Anon, "RssFile:": &m.File}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, _ := strings.Cut(line, "\t")
		dst, ok := fields[name]
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("/proc/%d/status: %s %w", pid, name, err)
		}
		*dst = kb << 10
		found++
	}
	if found < len(fields) {
		return Memory{}, fmt.Errorf("/proc/%d/status: no VmRSS, RssAnon or RssFile", pid)
	}
	return m, nil
}

// Build compiles ./cmd/dalv of the module containing the working directory
// into dir and returns the binary's path.
func Build(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := strings.TrimSuffix(strings.TrimSpace(string(out)), "/go.mod")
	bin := dir + "/dalv"
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/dalv")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/dalv: %v\n%s", err, b)
	}
	return bin, nil
}

// FreeAddr returns a loopback address whose port is free right now, for a
// server a test starts, stops and starts again on the same address.
func FreeAddr() (string, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), nil
}

// lowestPort is the least port FreePorts picks: below it lie the ports
// well-known services are configured on.
const lowestPort = 10000

// FreePorts returns n distinct loopback ports that are free right now, for
// servers that bind them later (PostgreSQL, etcd, Patroni, a restarted
// `dalv serve`). The ports are drawn below the kernel's ephemeral range: a
// port from that range can be taken, between the pick and the bind, as the
// local port of any outgoing connection, such as another test's connection
// to PostgreSQL.
func FreePorts(n int) ([]int, error) {
	high := ephemeralLow()
	if high-lowestPort < 1000 {
		return nil, fmt.Errorf("the ephemeral port range starts at %d, which leaves too few ports below it to pick from", high)
	}
	var held []net.Listener
	defer func() {
		for _, ln := range held {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 100*n {
			return nil, fmt.Errorf("found %d of %d free loopback ports between %d and %d", len(ports), n, lowestPort, high)
		}
		port := lowestPort + rand.IntN(high-lowestPort)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // in use; held ones are in use too, so ports stay distinct
		}
		held = append(held, ln)
		ports = append(ports, port)
	}
	return ports, nil
}

// ephemeralLow returns the first port of the kernel's ephemeral range, the
// ports it gives outgoing connections and binds to port 0.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768 // Linux's default, and below the range of most other kernels
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	port, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return port
}
