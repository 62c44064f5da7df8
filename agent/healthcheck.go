package agent

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/tetherlb/tether/internal/cli"
	"github.com/tetherlb/tether/registry"
)

// Wisej generations, for the meaning of HealthCheck.json's maxMemory: a percentage of memory
// up to Wisej 2, an absolute value in MB from Wisej 3 on. WisejAuto reads a value over 100 as
// MB (no percentage exceeds 100) and a value up to 100 as a percentage, flagged ambiguous:
// reading a Wisej 2 "70" (percent) as 70 MB would make every server full at once, the
// opposite mistake only leaves the memory limit looser.
const (
	WisejAuto = "auto"
	Wisej2    = "2"
	Wisej3    = "3"
)

// HealthCheck is a Wisej HealthCheck.json: the thresholds of Wisej's healthcheck.wx and the
// answer it gives when the server is not available.
type HealthCheck struct {
	// Enabled turns the load checks on; when false Wisej ignores the thresholds and so does
	// the agent (Thresholds returns zeros).
	Enabled     bool
	MaxSessions int
	MaxMemory   float64 // percent (Wisej 2's maxMemory)
	MaxMemoryMB float64 // MB (Wisej 3's maxMemory)
	// MemoryAmbiguous is set when maxMemory was read as a percentage by WisejAuto only
	// because it is at most 100: with Wisej 3 it would mean MB.
	MemoryAmbiguous bool
	MaxCPU          float64 // percent
	// ReturnCode, RetryAfterMinutes and ReturnURL describe the overload answer. In Tether they
	// are service settings (the "overload" object of <prefix>/services/<service>), not the
	// instance's: the agent reports them so that the operator can copy them there.
	ReturnCode        int
	RetryAfterMinutes int
	ReturnURL         string
}

// Thresholds returns the file's thresholds, or zeros (unlimited) when the file is disabled.
func (h HealthCheck) Thresholds() registry.Thresholds {
	if !h.Enabled {
		return registry.Thresholds{}
	}
	return registry.Thresholds{MaxSessions: h.MaxSessions, MaxCPU: h.MaxCPU, MaxMemory: h.MaxMemory, MaxMemoryMB: h.MaxMemoryMB}
}

// LoadHealthCheck reads a Wisej HealthCheck.json, with its /* ... */ header and any // or
// /* */ comments, written by the Wisej generation wisej (WisejAuto, Wisej2 or Wisej3).
// Missing fields keep Wisej's defaults (returnCode 503, retryAfter 10). Errors name the file
// and the field.
func LoadHealthCheck(path, wisej string) (HealthCheck, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return HealthCheck{}, fmt.Errorf("--healthcheck-file: %w", err)
	}
	hc, err := ParseHealthCheck(b, wisej)
	if err != nil {
		return hc, fmt.Errorf("--healthcheck-file %s: %w", path, err)
	}
	return hc, nil
}

// ParseHealthCheck parses the content of a HealthCheck.json; see LoadHealthCheck.
func ParseHealthCheck(b []byte, wisej string) (HealthCheck, error) {
	hc := HealthCheck{ReturnCode: 503, RetryAfterMinutes: 10}
	switch wisej {
	case WisejAuto, Wisej2, Wisej3:
	default:
		return hc, fmt.Errorf("--wisej-version: %q is not one of auto, 2, 3", wisej)
	}
	clean, err := stripComments(bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")))
	if err != nil {
		return hc, err
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(clean))
	if err := dec.Decode(&raw); err != nil {
		return hc, fmt.Errorf("not a JSON object after the comments: %w", err)
	}
	if dec.More() {
		return hc, errors.New("trailing data after the JSON object")
	}
	var errs []error
	field := func(name string, dst any) {
		v, ok := raw[name]
		if !ok {
			return
		}
		delete(raw, name)
		if err := json.Unmarshal(v, dst); err != nil {
			errs = append(errs, fmt.Errorf("field %q: %s", name, typeMismatch(v, dst)))
		}
	}
	field("enabled", &hc.Enabled)
	field("maxSessions", &hc.MaxSessions)
	var maxMemory float64
	field("maxMemory", &maxMemory)
	field("maxCPU", &hc.MaxCPU)
	field("returnCode", &hc.ReturnCode)
	field("retryAfter", &hc.RetryAfterMinutes)
	var misspelt string
	field("returUrl", &misspelt) // Wisej's own spelling
	field("returnUrl", &hc.ReturnURL)
	hc.ReturnURL = cmp.Or(hc.ReturnURL, misspelt)
	// Wisej's file has a fixed set of fields: a misspelt one would silently leave a limit
	// off (a "maxSesions" server takes any number of sessions).
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		errs = append(errs, fmt.Errorf("unknown field %q%s; the fields are %s", k, suggest(k), strings.Join(healthCheckFields, ", ")))
	}
	if len(errs) > 0 {
		return hc, errors.Join(errs...)
	}
	err = errors.Join(hc.setMemory(maxMemory, wisej), hc.validate()) // before hc is returned: setMemory sets it
	return hc, err
}

// healthCheckFields are the fields of Wisej's HealthCheck.json, returUrl being Wisej's own
// spelling of returnUrl.
var healthCheckFields = []string{"enabled", "maxSessions", "maxMemory", "maxCPU", "returnCode", "retryAfter", "returUrl", "returnUrl"}

// suggest names the known field closest to an unknown one: the same name in another case, or
// one at most two edits away.
func suggest(k string) string {
	best, bestD := "", 3
	for _, f := range healthCheckFields {
		d := cli.EditDistance(strings.ToLower(k), strings.ToLower(f))
		if d < bestD {
			best, bestD = f, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// typeMismatch says what is wrong with a value that does not decode into dst.
func typeMismatch(v json.RawMessage, dst any) string {
	want := "a string"
	switch dst.(type) {
	case *int:
		want = "a whole number"
	case *float64:
		want = "a number"
	case *bool:
		want = "true or false"
	}
	got := "is"
	switch t := bytes.TrimSpace(v); {
	case len(t) > 0 && t[0] == '"':
		got = "is a string,"
	case len(t) > 0 && (t[0] == '{' || t[0] == '['):
		got = "is an object or a list,"
	}
	return fmt.Sprintf("%s %s not %s", v, got, want)
}

// setMemory reads maxMemory as the given Wisej generation writes it.
func (h *HealthCheck) setMemory(v float64, wisej string) error {
	if !(v >= 0 && v <= 1<<30) {
		return fmt.Errorf("field \"maxMemory\": %g must be 0 (unlimited) or more", v)
	}
	switch {
	case wisej == Wisej3, wisej == WisejAuto && v > 100:
		h.MaxMemoryMB = v
	case v > 100:
		return fmt.Errorf("field \"maxMemory\": %g is over 100, not a percentage as Wisej 2 writes it; with Wisej 3 (MB) pass --wisej-version 3", v)
	default:
		h.MaxMemory = v
		h.MemoryAmbiguous = wisej == WisejAuto && v > 0
	}
	return nil
}

func (h HealthCheck) validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	// Memory is checked as it is read: its unit depends on the Wisej version.
	th := registry.Thresholds{MaxSessions: h.MaxSessions, MaxCPU: h.MaxCPU}
	if err := th.Validate(func(field string) string { return fmt.Sprintf("field %q", field) }); err != nil {
		errs = append(errs, err)
	}
	if h.ReturnCode < 200 || h.ReturnCode > 599 {
		add("field \"returnCode\": %d must be an HTTP status between 200 and 599", h.ReturnCode)
	}
	if h.RetryAfterMinutes < 0 || h.RetryAfterMinutes > 1440 {
		add("field \"retryAfter\": %d must be between 0 and 1440 minutes", h.RetryAfterMinutes)
	}
	if h.ReturnURL != "" {
		if u, err := url.Parse(h.ReturnURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("field \"returnUrl\": %q must be empty or an absolute http(s) URL", h.ReturnURL)
		}
	}
	return errors.Join(errs...)
}

// stripComments blanks /* */ and // comments outside JSON strings, keeping line breaks so
// that JSON errors keep meaningful offsets.
func stripComments(in []byte) ([]byte, error) {
	out := make([]byte, 0, len(in))
	inString, escaped := false, false
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch {
		case inString:
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
			out = append(out, c)
		case c == '/' && i+1 < len(in) && in[i+1] == '*':
			end := bytes.Index(in[i+2:], []byte("*/"))
			if end < 0 {
				return nil, errors.New("a /* comment is not closed with */")
			}
			for _, cc := range in[i : i+2+end+2] {
				if cc == '\n' {
					out = append(out, '\n')
				}
			}
			i += 2 + end + 1
		case c == '/' && i+1 < len(in) && in[i+1] == '/':
			for i < len(in) && in[i] != '\n' {
				i++
			}
			if i < len(in) {
				out = append(out, '\n')
			}
		default:
			out = append(out, c)
		}
	}
	return out, nil
}
