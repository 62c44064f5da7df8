package translate

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"

	statefulsessionv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/stateful_session/v3"
	cookiev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/http/stateful_session/cookie/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/tetherlb/tether/registry"
)

// envoyCookie is the value Envoy's cookie session state writes for addr
// (CookieBasedSessionStateFactory::SessionStateImpl::onUpdate,
// source/extensions/http/stateful_session/cookie/cookie.cc): standard base64
// (Envoy::Base64::encode, padded) of a serialized envoy.Cookie message, whose proto
// (cookie.proto beside it, package envoy) is: string address = 1; uint64 expires = 2.
// go-control-plane does not carry that message (it is Envoy-internal), so it is written here
// with protowire; expires is 0, and so left out, unless cookieTTL is set.
func envoyCookie(addr string, expires uint64) string {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, addr)
	if expires != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, expires)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// parseEnvoyCookie reads a cookie value as Envoy's parseAddress does
// (CookieBasedSessionStateFactory::parseAddress, cookie.h): base64, then an envoy.Cookie
// message whose address is the host. It fails where Envoy would not read a proto (Envoy then
// takes the decoded bytes as a bare address, which no Tether endpoint has).
func parseEnvoyCookie(v string) (addr string, expires uint64, err error) {
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return "", 0, fmt.Errorf("base64: %w", err)
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", 0, fmt.Errorf("tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			s, m := protowire.ConsumeString(b)
			if m < 0 {
				return "", 0, fmt.Errorf("address: %w", protowire.ParseError(m))
			}
			addr, b = s, b[m:]
		case num == 2 && typ == protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return "", 0, fmt.Errorf("expires: %w", protowire.ParseError(m))
			}
			expires, b = x, b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return "", 0, fmt.Errorf("field %d: %w", num, protowire.ParseError(m))
			}
			b = b[m:]
		}
	}
	return addr, expires, nil
}

// envoyCookieValue is Envoy's Http::Utility::parseCookieValue (source/common/http/utility.cc,
// forEachCookie and parseCookie): each Cookie header entry is split on ';' alone (empty pieces
// dropped), a piece without '=' is skipped, the name runs from the first character that is
// not a space (a tab is kept) to the first '=', the value is the rest of the piece, unquoted
// when it both starts and ends with '"'. The first piece with the name wins, even empty.
func envoyCookieValue(entries []string, name string) string {
	for _, h := range entries {
		for _, s := range strings.Split(h, ";") {
			k, v, ok := strings.Cut(s, "=")
			if !ok || strings.TrimLeft(k, " ") != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v
		}
	}
	return ""
}

// envoyOverrides says whether Envoy's cookie session state sets an override host for a
// request whose Cookie header entries are given (CookieBasedSessionStateFactory::parseAddress):
// a value that is empty, or whose base64 does not decode (Envoy::Base64::decode gives ""),
// sets none; an envoy.Cookie with an address sets it (expires is 0: cookieTTL is refused).
func envoyOverrides(entries []string, name string) bool {
	v := envoyCookieValue(entries, name)
	if v == "" {
		return false
	}
	if _, err := base64.StdEncoding.DecodeString(v); err != nil {
		return false
	}
	addr, _, err := parseEnvoyCookie(v)
	return err != nil || addr != "" // a bytes value that is no proto is taken as an address
}

// The marker regex recognises a request of a session as Envoy's cookie parser reads it, for
// the Cookie header a browser sends (one header; HTTP/2 and HTTP/3 crumbs are joined with
// "; " by Envoy's codecs). Known differences, each sending a request that is not of a session
// by the session route, where Envoy's load balancer places it without a retry: a first empty
// occurrence before a valid one, and a value that is not base64 (no Envoy wrote either).
func TestCookieMarkerRegex(t *testing.T) {
	const name = "ASP.NET_SessionId"
	m := markerMatcher(registry.Affinity{Mode: registry.AffinityCookie, CookieName: name})
	re := regexp.MustCompile(m.GetStringMatch().GetSafeRegex().GetRegex())
	v4, v6 := `"`+envoyCookie("10.0.0.5:5000", 0)+`"`, `"`+envoyCookie("[2001:db8::5]:5000", 0)+`"`
	for _, tc := range []struct {
		header string
		want   bool
		differ bool // a known difference with envoyOverrides (see above)
	}{
		{name + "=" + v4, true, false},
		{name + "=" + v6, true, false},
		{"a=1; " + name + "=" + v4 + "; b=2", true, false},
		{"a=1;" + name + "=" + v4, true, false},
		{"a=1;   " + name + "=" + v4, true, false},
		{name + "=" + v4 + "; z=", true, false},
		// Envoy splits on ';' only, and strips spaces, not tabs, before a name.
		{"a=1," + name + "=" + v4, false, false},
		{"a=1;\t" + name + "=" + v4, false, false},
		{"\t" + name + "=" + v4, false, false},
		{"x" + name + "=" + v4, false, false},
		{"ASPxNET_SessionId=" + v4, false, false},
		{"a=" + name + "=1", false, false},
		{name + " =" + v4, false, false},
		{name + "=", false, false},
		{"a=1; " + name + "=; b=2", false, false},
		{name + "= " + v4, false, false},
		{"other=1", false, false},
		{name + "=; " + name + "=" + v4, true, true},
		{name + "=abc", true, true},
	} {
		got := re.MatchString(tc.header)
		if got != tc.want {
			t.Errorf("cookie %q: marker match %v, want %v", tc.header, got, tc.want)
		}
		if envoy := envoyOverrides([]string{tc.header}, name); (envoy != got) != tc.differ {
			t.Errorf("cookie %q: marker %v, Envoy overrides the host %v (known difference: %v)", tc.header, got, envoy, tc.differ)
		}
	}
}

// The cookie value Envoy writes round-trips through what reads it: Envoy's parser (modelled
// above), the marker regex, and the address Tether published. The README's example is one.
func TestEnvoyCookieRoundTrip(t *testing.T) {
	for _, addr := range []string{"10.0.0.5:5000", "192.168.100.200:65535", "[2001:db8::5]:5000", "[fe80::1%25eth0]:80"} {
		v := envoyCookie(addr, 0)
		var p packer
		cfg := registry.DefaultServiceConfig("app")
		var ss statefulsessionv3.StatefulSessionPerRoute
		var cs cookiev3.CookieBasedSessionState
		if err := perFilterConfig("app", cfg, true, &p)[statefulSessionFilter].UnmarshalTo(&ss); err != nil {
			t.Fatal(err)
		}
		if err := ss.GetStatefulSession().GetSessionState().GetTypedConfig().UnmarshalTo(&cs); err != nil {
			t.Fatal(err)
		}
		// The browser sends back name=value from the Set-Cookie.
		sent, _, _ := strings.Cut(setCookieOf(cs.GetCookie(), v), ";")
		got, exp, err := parseEnvoyCookie(envoyCookieValue([]string{"a=1; " + sent}, cs.GetCookie().GetName()))
		if err != nil || got != addr || exp != 0 {
			t.Errorf("%s: cookie %s read back as %q, %d, %v", addr, sent, got, exp, err)
		}
		if !re(t, cfg).MatchString("a=1; " + sent) {
			t.Errorf("%s: cookie %s not recognised by the marker", addr, sent)
		}
	}
	if got := envoyCookie("10.0.0.5:5000", 0); got != "Cg0xMC4wLjAuNTo1MDAw" {
		t.Errorf("README example: envoyCookie(10.0.0.5:5000) = %s", got)
	}
	// The example used before: a length of 12 for 13 bytes, which no Envoy writes.
	if addr, _, err := parseEnvoyCookie("CgwxMC4wLjAuNTo1MDAw"); err == nil {
		t.Errorf("the malformed example reads as %q", addr)
	}
}

func re(t *testing.T, cfg registry.ServiceConfig) *regexp.Regexp {
	t.Helper()
	return regexp.MustCompile(markerMatcher(cfg.Affinity).GetStringMatch().GetSafeRegex().GetRegex())
}
