package translate

import (
	"encoding/base64"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
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
