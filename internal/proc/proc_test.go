package proc

import (
	"net"
	"os"
	"strconv"
	"testing"
)

func TestReadMemory(t *testing.T) {
	t.Parallel()
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.Anon <= 0 || m.File <= 0 || m.Anon+m.File > m.RSS {
		t.Errorf("ReadMemory = %+v: want anonymous and file-backed parts, together at most the RSS", m)
	}
	if rss, err := RSS(os.Getpid()); err != nil || rss <= 0 {
		t.Errorf("RSS = %d, %v: want the resident bytes", rss, err)
	}
	if _, err := ReadMemory(-1); err == nil {
		t.Error("ReadMemory(-1) succeeded, want an error for no such process")
	}
}

// TestFreePortsBelowEphemeralRange checks that the ports FreePorts picks are
// distinct, bindable, and never ones the kernel could hand an outgoing
// connection in the meantime.
func TestFreePortsBelowEphemeralRange(t *testing.T) {
	t.Parallel()
	ports, err := FreePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	high := ephemeralLow()
	seen := map[int]bool{}
	for _, p := range ports {
		if p < lowestPort || p >= high {
			t.Errorf("port %d is outside [%d, %d)", p, lowestPort, high)
		}
		if seen[p] {
			t.Errorf("port %d picked twice", p)
		}
		seen[p] = true
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d is not free: %v", p, err)
			continue
		}
		ln.Close()
	}
}
