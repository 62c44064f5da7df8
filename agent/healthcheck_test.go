package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherlb/tether/registry"
)

func TestWisejDefaultFile(t *testing.T) {
	hc, err := LoadHealthCheck(filepath.Join("testdata", "HealthCheck.json"), WisejAuto)
	if err != nil {
		t.Fatalf("Wisej's default file: %v", err)
	}
	want := HealthCheck{Enabled: true, MaxSessions: 100, MaxMemory: 70, MaxCPU: 100, ReturnCode: 503, RetryAfterMinutes: 10}
	if hc.Enabled != want.Enabled || hc.MaxSessions != want.MaxSessions || hc.MaxMemory != want.MaxMemory ||
		hc.MaxCPU != want.MaxCPU || hc.ReturnCode != want.ReturnCode || hc.RetryAfterMinutes != want.RetryAfterMinutes ||
		hc.ReturnURL != "" {
		t.Fatalf("got %+v, want %+v", hc, want)
	}
	if got := hc.Thresholds(); got != (registry.Thresholds{MaxSessions: 100, MaxCPU: 100, MaxMemory: 70}) {
		t.Fatalf("thresholds %+v", got)
	}
}

func TestExampleFileDisabled(t *testing.T) {
	hc, err := LoadHealthCheck(filepath.Join("..", "examples", "HealthCheck.json"), WisejAuto)
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
  "retryAfter": 2
}`
	hc, err := ParseHealthCheck([]byte(src), WisejAuto)
	if err != nil {
		t.Fatal(err)
	}
	if hc.MaxSessions != 500 || hc.MaxCPU != 85.5 || hc.RetryAfterMinutes != 2 {
		t.Fatalf("got %+v", hc)
	}
	if hc.ReturnURL != "https://example.com/busy?a=//not-a-comment/*" {
		t.Fatalf("returnUrl %q: comment markers inside strings must be kept; returnUrl wins over returUrl", hc.ReturnURL)
	}
	hc, err = ParseHealthCheck([]byte(`{"returUrl": "http://b.example.com/"}`), WisejAuto)
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
		{"negative memory", `{"maxMemory": -1}`, `"maxMemory"`},
		{"bad return code", `{"returnCode": 42}`, `"returnCode"`},
		{"bad url", `{"returUrl": "busy.html"}`, `"returnUrl"`},
		{"misspelt field", `{"enabled": true, "maxSesions": 50}`, `unknown field "maxSesions" (did you mean "maxSessions"?)`},
		{"field in the wrong case", `{"MaxSessions": 50}`, `unknown field "MaxSessions" (did you mean "maxSessions"?)`},
		{"number as a string", `{"maxSessions": "50"}`, `field "maxSessions": "50" is a string, not a whole number`},
		{"boolean as a string", `{"enabled": "true"}`, `field "enabled": "true" is a string, not true or false`},
		{"number as a list", `{"maxSessions": [50]}`, `field "maxSessions": [50] is an object or a list, not a whole number`},
		{"number as an object", `{"maxCPU": {"v": 5}}`, `field "maxCPU": {"v": 5} is an object or a list, not a number`},
		{"boolean as a number", `{"enabled": 1}`, `field "enabled": 1 is not true or false`},
	}
	for _, c := range cases {
		_, err := ParseHealthCheck([]byte(c.src), WisejAuto)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %s", c.name, err, c.want)
		}
	}
	if _, err := LoadHealthCheck(filepath.Join(t.TempDir(), "missing.json"), WisejAuto); err == nil || !strings.Contains(err.Error(), "--healthcheck-file") {
		t.Errorf("missing file: %v", err)
	}
	path := filepath.Join(t.TempDir(), "HealthCheck.json")
	if err := os.WriteFile(path, []byte(`{"maxCPU": 101}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadHealthCheck(path, WisejAuto); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error %v does not name the file", err)
	}
}

// Wisej 3 writes maxMemory in MB: 2048 is 2 GB, not a percentage over 100.
func TestWisej3MaxMemoryInMB(t *testing.T) {
	src := []byte("/* Wisej 3 */\n{\"enabled\": true, \"maxMemory\": 2048, \"maxSessions\": 200}")
	for _, gen := range []string{WisejAuto, Wisej3} {
		hc, err := ParseHealthCheck(src, gen)
		if err != nil {
			t.Fatalf("--wisej-version %s: %v", gen, err)
		}
		if got, want := hc.Thresholds(), (registry.Thresholds{MaxSessions: 200, MaxMemoryMB: 2048}); got != want || hc.MemoryAmbiguous {
			t.Errorf("--wisej-version %s: thresholds %+v (ambiguous %v), want %+v", gen, got, hc.MemoryAmbiguous, want)
		}
	}
	if _, err := ParseHealthCheck(src, Wisej2); err == nil || !strings.Contains(err.Error(), "--wisej-version 3") {
		t.Errorf("--wisej-version 2 with maxMemory 2048: %v, want an error pointing at --wisej-version 3", err)
	}
	small := []byte(`{"enabled": true, "maxMemory": 70}`)
	cases := []struct {
		gen       string
		want      registry.Thresholds
		ambiguous bool
	}{
		{WisejAuto, registry.Thresholds{MaxMemory: 70}, true}, // read as Wisej 2's percent, flagged
		{Wisej2, registry.Thresholds{MaxMemory: 70}, false},
		{Wisej3, registry.Thresholds{MaxMemoryMB: 70}, false},
	}
	for _, c := range cases {
		hc, err := ParseHealthCheck(small, c.gen)
		if err != nil || hc.Thresholds() != c.want || hc.MemoryAmbiguous != c.ambiguous {
			t.Errorf("maxMemory 70, --wisej-version %s: %+v ambiguous %v, %v; want %+v ambiguous %v", c.gen, hc.Thresholds(), hc.MemoryAmbiguous, err, c.want, c.ambiguous)
		}
	}
	if _, err := ParseHealthCheck(small, "4"); err == nil || !strings.Contains(err.Error(), "--wisej-version") {
		t.Errorf("unknown generation: %v", err)
	}
}

// TestHealthCheckBoundsAreExact: every bound of HealthCheck.json accepts its edge and refuses
// one past it, and a field three edits from every known one gets no suggestion.
func TestHealthCheckBoundsAreExact(t *testing.T) {
	for _, c := range []struct {
		src, wisej string
		ok         bool
	}{
		{`{"returnCode": 200}`, WisejAuto, true},
		{`{"returnCode": 599}`, WisejAuto, true},
		{`{"returnCode": 199}`, WisejAuto, false},
		{`{"returnCode": 600}`, WisejAuto, false},
		{`{"retryAfter": 0}`, WisejAuto, true},
		{`{"retryAfter": 1440}`, WisejAuto, true},
		{`{"retryAfter": -1}`, WisejAuto, false},
		{`{"retryAfter": 1441}`, WisejAuto, false},
		{`{"maxMemory": 1073741824}`, Wisej3, true},
		{`{"maxMemory": 1073741825}`, Wisej3, false},
		{`{"maxMemory": 100}`, Wisej2, true},
		{`{"maxMemory": 100.5}`, Wisej2, false},
	} {
		_, err := ParseHealthCheck([]byte(c.src), c.wisej)
		if (err == nil) != c.ok {
			t.Errorf("%s (--wisej-version %s): %v, want ok %v", c.src, c.wisej, err, c.ok)
		}
	}
	for _, c := range []struct {
		src       string
		want      registry.Thresholds
		ambiguous bool
	}{
		{`{"enabled": true, "maxMemory": 0}`, registry.Thresholds{}, false}, // unlimited: no unit to guess
		{`{"enabled": true, "maxMemory": 100}`, registry.Thresholds{MaxMemory: 100}, true},
		{`{"enabled": true, "maxMemory": 100.5}`, registry.Thresholds{MaxMemoryMB: 100.5}, false},
	} {
		hc, err := ParseHealthCheck([]byte(c.src), WisejAuto)
		if err != nil || hc.Thresholds() != c.want || hc.MemoryAmbiguous != c.ambiguous {
			t.Errorf("%s: %+v ambiguous %v, %v; want %+v ambiguous %v", c.src, hc.Thresholds(), hc.MemoryAmbiguous, err, c.want, c.ambiguous)
		}
	}
	_, err := ParseHealthCheck([]byte(`{"maxSessionsXYZ": 1}`), WisejAuto)
	if err == nil || !strings.Contains(err.Error(), `unknown field "maxSessionsXYZ"; the fields are`) {
		t.Errorf("a field three edits away: %v, want no suggestion", err)
	}
}

// TestStripCommentsKeepsLineBreaks: comments go, and only the line breaks inside them stay
// (a JSON error's offset then falls on the right line); an empty /**/ is a comment, and a //
// comment may end the file.
func TestStripCommentsKeepsLineBreaks(t *testing.T) {
	for in, want := range map[string]string{
		"a/*x\ny\n*/b":           "a\n\nb",
		"/**/{}":                 "{}",
		"{}// last":              "{}",
		"{}// c\n":               "{}\n",
		"1 /* one\n*/ 2 // c\n3": "1 \n 2 \n3",
		`"/* kept \" // too"`:    `"/* kept \" // too"`,
		"{}/":                    "{}/", // a last '/' starts no comment
	} {
		got, err := stripComments([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("stripComments(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
