package translate

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherlb/tether/registry"
)

// maxRE2ProgramSize is Envoy's default re2.max_program_size.error_level: a larger safe_regex
// is rejected (source/common/common/regex.cc, CompiledGoogleReMatcher), and the rejection
// NACKs the route configuration that every service shares.
const maxRE2ProgramSize = 100

// cookieRegexOverhead is the RE2 program size of cookieMarkerRegex without the name; each
// character of the name adds one instruction (QuoteMeta's escapes included), measured with
// RE2 by TestCookieRegexRE2ProgramSize.
const cookieRegexOverhead = 33

// longestNames are service names at the edges of the schema, and explicit cookie names of
// the longest length the registry accepts, using every character a cookie name may hold
// (those QuoteMeta escapes among them).
func longestNames(t testing.TB) (services, cookies []string) {
	t.Helper()
	services = []string{"a", "ab", strings.Repeat("a", 56), strings.Repeat("b", 57), strings.Repeat("z", 63),
		"a" + strings.Repeat("-", 61) + "z", strings.Repeat("9", 63), strings.Repeat("a", 62) + "b"}
	for n := 1; n <= 63; n++ {
		services = append(services, strings.Repeat("s", n))
	}
	special := "!#$%&'*+.^_`|~-"
	cookies = []string{
		strings.Repeat("x", registry.MaxCookieName),
		strings.Repeat(special, 5)[:registry.MaxCookieName],
		strings.Repeat(".", registry.MaxCookieName),
		"ASP.NET_SessionId",
	}
	for _, s := range services {
		if err := registry.ValidateServiceName(s); err != nil {
			t.Fatalf("test service name %q is not allowed: %v", s, err)
		}
	}
	return services, cookies
}

// Every allowed service name gets a default cookie name that the registry accepts and that
// is its own, and every cookie name the registry accepts gives a marker regex of at most
// maxRE2ProgramSize by the measured formula; the RE2 test below checks the formula.
func TestCookieNamesFitTheRegexLimit(t *testing.T) {
	services, cookies := longestNames(t)
	seen := map[string]string{}
	for _, s := range services {
		name := registry.DefaultCookieName(s)
		cfg, err := registry.DecodeServiceConfig(s, []byte(`{}`))
		if err != nil || cfg.Affinity.CookieName != name {
			t.Fatalf("service %q (%d characters): defaults rejected (%v) or cookie %q differs from %q", s, len(s), err, cfg.Affinity.CookieName, name)
		}
		if prev, dup := seen[name]; dup {
			t.Errorf("services %q and %q share the default cookie %q", prev, s, name)
		}
		seen[name] = s
		cookies = append(cookies, name)
		// The service is served, with its sticky cookie.
		sr := TranslateService(&registry.Service{Name: s, Config: cfg}, Options{})
		if sr.Cluster == nil || len(sr.Problems) != 0 {
			t.Errorf("service %q (%d characters) left out: %v", s, len(s), sr.Problems)
		}
	}
	if a, b := registry.DefaultCookieName(strings.Repeat("a", 63)), registry.DefaultCookieName(strings.Repeat("a", 62)+"b"); a == b {
		t.Errorf("two 63-character services share the default cookie %q", a)
	}
	for _, c := range cookies {
		if len(c) > registry.MaxCookieName {
			t.Errorf("cookie name %q is %d characters, over %d", c, len(c), registry.MaxCookieName)
		}
		re := cookieMarkerRegex(c)
		if _, err := regexp.Compile(re); err != nil {
			t.Errorf("cookie %q: regex %q does not compile: %v", c, re, err)
		}
		if size := cookieRegexOverhead + len(c); size > maxRE2ProgramSize {
			t.Errorf("cookie %q: RE2 program size %d > %d", c, size, maxRE2ProgramSize)
		}
	}
	over := strings.Repeat("x", registry.MaxCookieName+1)
	if _, err := registry.DecodeServiceConfig("app", []byte(`{"affinity":{"cookieName":"`+over+`"}}`)); err == nil {
		t.Errorf("a %d-character cookie name is accepted; its regex would exceed RE2 program size %d", len(over), maxRE2ProgramSize)
	}
}

// re2Helper is a tiny C++ program that prints RE2's ProgramSize() of each line of stdin, the
// figure Envoy compares with re2.max_program_size.error_level.
const re2Helper = `#include <re2/re2.h>
#include <iostream>
#include <string>
int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    re2::RE2 re(line, re2::RE2::Quiet);
    if (!re.ok()) { std::cout << "error " << re.error() << "\n"; continue; }
    std::cout << re.ProgramSize() << "\n";
  }
}
`

// TestCookieRegexRE2ProgramSize measures every marker regex with RE2 itself (Debian's
// libre2-dev and g++, which .ci/run installs) and requires at most maxRE2ProgramSize and the
// formula the test above relies on.
func TestCookieRegexRE2ProgramSize(t *testing.T) {
	gxx, err := exec.LookPath("g++")
	if err != nil {
		t.Skip("g++ not found: skipping the RE2 program size measurement (install g++ and libre2-dev)")
	}
	if _, err := os.Stat("/usr/include/re2/re2.h"); err != nil {
		t.Skip("RE2 headers not found: skipping the RE2 program size measurement (install libre2-dev)")
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "size.cc"), filepath.Join(dir, "size")
	if err := os.WriteFile(src, []byte(re2Helper), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, gxx, "-O0", "-o", bin, src, "-lre2").CombinedOutput(); err != nil {
		t.Fatalf("build the RE2 helper: %v\n%s", err, out)
	}
	services, cookies := longestNames(t)
	for _, s := range services {
		cookies = append(cookies, registry.DefaultCookieName(s))
	}
	var in strings.Builder
	for _, c := range cookies {
		in.WriteString(cookieMarkerRegex(c) + "\n")
	}
	cmd := exec.CommandContext(ctx, bin)
	cmd.Stdin = strings.NewReader(in.String())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run the RE2 helper: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	i, largest := 0, 0
	for ; sc.Scan(); i++ {
		if i >= len(cookies) {
			t.Fatalf("the RE2 helper printed more lines than regexes")
		}
		size, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("cookie %q: RE2 says %q", cookies[i], sc.Text())
		}
		largest = max(largest, size)
		if size > maxRE2ProgramSize {
			t.Errorf("cookie %q: RE2 program size %d > %d: Envoy would reject the route configuration", cookies[i], size, maxRE2ProgramSize)
		}
		if want := cookieRegexOverhead + len(cookies[i]); size != want {
			t.Errorf("cookie %q: RE2 program size %d, the formula says %d", cookies[i], size, want)
		}
	}
	if i != len(cookies) {
		t.Fatalf("the RE2 helper answered %d of %d regexes", i, len(cookies))
	}
	t.Logf("%d marker regexes measured with RE2, largest program size %d", i, largest)
}
