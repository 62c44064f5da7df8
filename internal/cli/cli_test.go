package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestBindEnvOnlyUnsetFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	maxSessions := fs.Int("max-sessions", 0, "")
	service := fs.String("service", "", "")
	ttl := fs.Duration("ttl", 10*time.Second, "")
	if err := fs.Parse([]string{"--service", "cmdline"}); err != nil {
		t.Fatal(err)
	}
	err := BindEnv(fs, env(map[string]string{
		"TETHER_MAX_SESSIONS": "100",
		"TETHER_SERVICE":      "fromenv",
	}))
	if err != nil {
		t.Fatalf("BindEnv: %v", err)
	}
	if *maxSessions != 100 {
		t.Errorf("max-sessions = %d, want 100 from TETHER_MAX_SESSIONS", *maxSessions)
	}
	if *service != "cmdline" {
		t.Errorf("service = %q, want the command line's value", *service)
	}
	if *ttl != 10*time.Second {
		t.Errorf("ttl = %s, want the default", *ttl)
	}
}

func TestBindEnvBadValueNamesVariableAndFlag(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("max-sessions", 0, "")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	err := BindEnv(fs, env(map[string]string{"TETHER_MAX_SESSIONS": "lots"}))
	if err == nil {
		t.Fatal("BindEnv accepted TETHER_MAX_SESSIONS=lots")
	}
	for _, want := range []string{"TETHER_MAX_SESSIONS", "--max-sessions"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestNewLogger(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := NewLogger("warn", "", f)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Msg("hidden")
	log.Warn().Str("instance", "a1").Msg("shown")
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	if strings.Contains(out, "hidden") || !strings.Contains(out, `"instance":"a1"`) {
		t.Errorf("log output %q: want only the warning, as JSON (a file is not a terminal)", out)
	}
	if _, err := NewLogger("verbose", "json", f); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad level: %v", err)
	}
	if _, err := NewLogger("info", "xml", f); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Errorf("bad format: %v", err)
	}
}

// TestLogDurationsAreReadable: a duration field reads as a duration, not as a bare number
// whose unit the reader must guess.
func TestLogDurationsAreReadable(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := NewLogger("info", "json", f)
	if err != nil {
		t.Fatal(err)
	}
	log.Info().Dur("timeout", 10*time.Minute).Msg("x")
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"timeout":"10m0s"`) {
		t.Errorf("log line %s: want \"timeout\":\"10m0s\"", b)
	}
}
