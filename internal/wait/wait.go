// Package wait lets tests wait on a condition with a deadline instead of
// sleeping: For polls the condition until it holds, and fails the test with
// the condition's last error when the deadline passes first.
package wait

import (
	"testing"
	"time"
)

// Poll is how often [For] checks its condition.
const Poll = 10 * time.Millisecond

// For polls cond every [Poll] until it returns nil, and fails t with cond's
// last error when timeout passes first.
func For(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	ForEvery(t, timeout, Poll, cond)
}

// ForEvery is [For] polling every every.
func ForEvery(t testing.TB, timeout, every time.Duration, cond func() error) {
	t.Helper()
	if err := until(timeout, every, cond); err != nil {
		t.Fatalf("condition not met within %v: %v", timeout, err)
	}
}

// Until polls cond every [Poll] until it returns nil, and returns nil, or
// cond's last error when timeout passes first: for a test that looks
// further into a condition that did not hold before failing.
func Until(timeout time.Duration, cond func() error) error {
	return until(timeout, Poll, cond)
}

func until(timeout, every time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}
