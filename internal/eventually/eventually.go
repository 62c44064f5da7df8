// Package eventually is the tests' one polling wait: for a condition no event announces
// (a registry key, an admin page, a process's output), bounded in time and in count, failing
// the test with what it waited for. A condition an xDS client can wait on is waited on with
// xdsclient.Client.WaitFor, which wakes on each update instead.
package eventually

import (
	"testing"
	"time"
)

// True polls cond until it holds, failing t with what if it does not within the bound.
func True(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	Saying(t, what, within, func() (bool, string) { return cond(), "" })
}

// Saying is True for a cond that also describes what it saw, reported if it never holds.
// The period is a thousandth of the bound, between 5 and 100 ms: fine for the in-process
// waits of seconds, light on the Envoy and processes the system tests poll for a minute.
func Saying(t testing.TB, what string, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	period := min(max(within/1000, 5*time.Millisecond), 100*time.Millisecond)
	deadline := time.Now().Add(within)
	last := ""
	for i := 0; i <= int(within/period); i++ {
		ok, saw := cond()
		if ok {
			return
		}
		last = saw
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(period)
	}
	if last != "" {
		t.Fatalf("timed out after %s waiting for %s; last seen: %s", within, what, last)
	}
	t.Fatalf("timed out after %s waiting for %s", within, what)
}
