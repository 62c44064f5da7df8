package overview

import (
	"testing"
	"time"
)

func TestClean(t *testing.T) {
	if got := clean("a\tb\nc", 0); got != "a b c" {
		t.Errorf("clean = %q", got)
	}
	if got := clean("abcdef", 4); got != "abc…" {
		t.Errorf("clean cut = %q", got)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{5 * time.Second: "5s", 125 * time.Second: "2m05s", 3*time.Hour + 4*time.Minute: "3h04m", 72 * time.Hour: "3d", -time.Second: "0s"} {
		if got := age(now.Add(-d), now); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
}
