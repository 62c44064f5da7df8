package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

func TestWisejDefaultFile(t *testing.T) {
	hc, err := LoadHealthCheck(filepath.Join("testdata", "HealthCheck.json"))
	if err != nil {
		t.Fatalf("Wisej's default file: %v", err)
	}
	want := HealthCheck{Enabled: true, MaxSessions: 100, MaxMemory: 70, MaxCPU: 100, ReturnCode: 503, RetryAfterMinutes: 10}
	if hc.Enabled != want.Enabled || hc.MaxSessions != want.MaxSessions || hc.MaxMemory != want.MaxMemory ||
		hc.MaxCPU != want.MaxCPU || hc.ReturnCode != want.ReturnCode || hc.RetryAfterMinutes != want.RetryAfterMinutes ||
		hc.ReturnURL != "" || len(hc.Unknown) != 0 {
		t.Fatalf("got %+v, want %+v", hc, want)
	}
	if got := hc.Thresholds(); got != (registry.Thresholds{MaxSessions: 100, MaxCPU: 100, MaxMemory: 70}) {
		t.Fatalf("thresholds %+v", got)
	}
}

func TestExampleFileDisabled(t *testing.T) {
	hc, err := LoadHealthCheck(filepath.Join("..", "examples", "HealthCheck.json"))
	if err != nil {
		t.Fatalf("examples/HealthCheck.json: %v", err)
	}
	if hc.Enabled || hc.Thresholds() != (registry.Thresholds{}) {
		t.Fatalf("a disabled file must give no thresholds: %+v", hc)
	}
}

func TestCommentedFile(t *testing.T) {
	src := `// line comment
/* block */ {
  "enabled": true, // trailing comment
  /* inline */ "maxSessions": 500,
  "maxCPU": 85.5,
  "returnUrl": "https://example.com/busy?a=//not-a-comment/*",
  "returUrl": "https://ignored.example.com/",
  "retryAfter": 2,
  "futureField": 1
}`
	hc, err := ParseHealthCheck([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if hc.MaxSessions != 500 || hc.MaxCPU != 85.5 || hc.RetryAfterMinutes != 2 {
		t.Fatalf("got %+v", hc)
	}
	if hc.ReturnURL != "https://example.com/busy?a=//not-a-comment/*" {
		t.Fatalf("returnUrl %q: comment markers inside strings must be kept; returnUrl wins over returUrl", hc.ReturnURL)
	}
	if strings.Join(hc.Unknown, ",") != "futureField" {
		t.Fatalf("unknown fields %v", hc.Unknown)
	}
	hc, err = ParseHealthCheck([]byte(`{"returUrl": "http://b.example.com/"}`))
	if err != nil || hc.ReturnURL != "http://b.example.com/" {
		t.Fatalf("Wisej's misspelt returUrl: %q, %v", hc.ReturnURL, err)
	}
}

func TestBrokenFiles(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"unclosed comment", "/* Health Check\n{\"maxCPU\": 5}", "not closed"},
		{"not JSON", "/* c */ maxCPU = 5", "not a JSON object"},
		{"trailing comma", `{"maxCPU": 5,}`, "not a JSON object"},
		{"trailing data", `{"maxCPU": 5} {}`, "trailing data"},
		{"CPU over 100", `{"maxCPU": 150}`, `"maxCPU"`},
		{"negative sessions", `{"maxSessions": -1}`, `"maxSessions"`},
		{"memory as text", `{"maxMemory": "70%"}`, `"maxMemory"`},
		{"bad return code", `{"returnCode": 42}`, `"returnCode"`},
		{"bad url", `{"returUrl": "busy.html"}`, `"returnUrl"`},
	}
	for _, c := range cases {
		_, err := ParseHealthCheck([]byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %s", c.name, err, c.want)
		}
	}
	if _, err := LoadHealthCheck(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "--healthcheck-file") {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "HealthCheck.json")
	if err := os.WriteFile(path, []byte(`{"maxCPU": 101}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHealthCheck(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v does not name the file", err)
	}
}
