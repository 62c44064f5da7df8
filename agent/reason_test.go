package agent

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tetherlb/tether/registry"
)

func TestCleanReason(t *testing.T) {
	long := strings.Repeat("é", 400) // 800 bytes: the cut must fall between characters
	for _, in := range []string{"", "short", long, "line\nbreak\x00and \xff bad", strings.Repeat("x", 512), strings.Repeat("x", 513)} {
		got := cleanReason(in)
		if len(got) > registry.MaxReason || !utf8.ValidString(got) || strings.ContainsAny(got, "\n\x00") {
			t.Errorf("cleanReason(%.20q...) = %.40q... (%d bytes)", in, got, len(got))
		}
		inst := registry.Instance{ID: "a", Address: "127.0.0.1", Port: 1, State: registry.StateFull, Reason: got}
		if err := inst.Validate(); err != nil {
			t.Errorf("cleanReason(%.20q...): the registry refuses it: %v", in, err)
		}
	}
	if got := cleanReason(strings.Repeat("x", 512)); got != strings.Repeat("x", 512) {
		t.Error("a reason at the limit was changed")
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:5000/healthcheck.wx":             "http://127.0.0.1:5000/healthcheck.wx",
		"https://u:pw@app.example.com/s?token=abc#frag":    "https://u@app.example.com/s",
		"http://10.0.0.5/available?key=secret&other=value": "http://10.0.0.5/available",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
