package agent

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

// fakeHost is a machine described by the test: its host name, default route, interfaces and
// DNS. A lookup of a name it does not know fails.
func fakeHost(route string, ifaces []hostInterface, dns map[string][]string) host {
	return host{
		hostname: func() (string, error) { return "web-01.corp.example", nil },
		routeSource: func() (net.IP, error) {
			if route == "" {
				return nil, errors.New("network is unreachable")
			}
			return net.ParseIP(route), nil
		},
		interfaces: func() ([]hostInterface, error) { return ifaces, nil },
		lookupIP: func(_ context.Context, name string) ([]net.IP, error) {
			addrs, ok := dns[name]
			if !ok {
				return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
			}
			var ips []net.IP
			for _, a := range addrs {
				ips = append(ips, net.ParseIP(a))
			}
			return ips, nil
		},
	}
}

// iface is an interface with flags and addresses in CIDR notation.
func iface(flags net.Flags, cidrs ...string) hostInterface {
	h := hostInterface{Flags: flags}
	for _, c := range cidrs {
		ip, n, err := net.ParseCIDR(c)
		if err != nil {
			panic(err)
		}
		n.IP = ip
		h.Addrs = append(h.Addrs, n)
	}
	return h
}

func TestPrimaryAddress(t *testing.T) {
	up, loop := net.FlagUp|net.FlagBroadcast, net.FlagUp|net.FlagLoopback
	tests := []struct {
		name   string
		route  string
		ifaces []hostInterface
		want   string // empty: an error asking for --address
	}{
		{"the default route's source", "10.0.0.5", []hostInterface{iface(up, "192.168.1.9/24")}, "10.0.0.5"},
		{"an IPv6 default route's source", "2001:db8::5", nil, "2001:db8::5"},
		{"no default route: the first usable interface", "", []hostInterface{
			iface(loop, "127.0.0.1/8"),                 // loopback
			iface(0, "10.9.9.9/24"),                    // down
			iface(up, "169.254.3.4/16", "fe80::1/64"),  // link-local only
			iface(up, "2001:db8::7/64", "10.1.2.3/24"), // IPv6 is skipped, IPv4 taken
			iface(up, "10.4.5.6/24"),
		}, "10.1.2.3"},
		{"a loopback route source is not an instance address", "127.0.0.1", []hostInterface{iface(up, "10.1.2.3/24")}, "10.1.2.3"},
		{"an unspecified route source neither", "0.0.0.0", []hostInterface{iface(up, "10.1.2.3/24")}, "10.1.2.3"},
		{"nothing usable", "", []hostInterface{iface(loop, "127.0.0.1/8"), iface(up, "fe80::1/64"), iface(0, "10.0.0.1/8")}, ""},
		{"no interfaces", "", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fakeHost(tc.route, tc.ifaces, nil).primaryAddress()
			if tc.want == "" {
				if err == nil || !strings.Contains(err.Error(), "set --address") {
					t.Fatalf("primaryAddress = %q, %v; want an error asking for --address", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("primaryAddress = %q, %v; want %s", got, err, tc.want)
			}
		})
	}
	failing := fakeHost("", nil, nil)
	failing.interfaces = func() ([]hostInterface, error) { return nil, errors.New("netlink: denied") }
	if got, err := failing.primaryAddress(); err == nil || !strings.Contains(err.Error(), "netlink: denied") {
		t.Errorf("primaryAddress with unreadable interfaces = %q, %v; want the error", got, err)
	}
}

func TestPickIP(t *testing.T) {
	tests := []struct {
		ips  []string
		want string
	}{
		{[]string{"2001:db8::1", "10.0.0.7", "10.0.0.8"}, "10.0.0.7"},
		{[]string{"10.0.0.8", "2001:db8::1"}, "10.0.0.8"},
		{[]string{"2001:db8::1", "2001:db8::2"}, "2001:db8::1"},
		{[]string{"::ffff:10.0.0.9"}, "10.0.0.9"},
	}
	for _, tc := range tests {
		var ips []net.IP
		for _, s := range tc.ips {
			ips = append(ips, net.ParseIP(s))
		}
		if got := pickIP(ips).String(); got != tc.want {
			t.Errorf("pickIP(%v) = %s; want %s", tc.ips, got, tc.want)
		}
	}
}

func TestResolveIdentity(t *testing.T) {
	up := net.FlagUp
	h := fakeHost("", []hostInterface{iface(up, "10.1.2.3/24")}, map[string][]string{
		"app.internal": {"2001:db8::9", "10.7.7.7"},
		"v6.internal":  {"2001:db8::9"},
		"empty.":       {},
	})
	tests := []struct {
		name            string
		id, address     string
		wantID, wantAdr string
		wantErr         string
	}{
		{"defaults: host name and primary address", "", "", "web-01-5000", "10.1.2.3", ""},
		{"an IP address is kept", "a1", "10.9.8.7", "a1", "10.9.8.7", ""},
		{"an IPv6 address is kept", "a1", "2001:db8::1", "a1", "2001:db8::1", ""},
		{"a name is resolved, IPv4 first", "a1", "app.internal", "a1", "10.7.7.7", ""},
		{"a name with only IPv6", "a1", "v6.internal", "a1", "2001:db8::9", ""},
		{"an unknown name", "a1", "nowhere.internal", "", "", `--address: resolve "nowhere.internal"`},
		{"a name without addresses", "a1", "empty.", "", "", "resolves to no address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{ID: tc.id, Address: tc.address, Port: 5000}
			err := h.resolveIdentity(context.Background(), &cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("resolveIdentity: %v; want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || cfg.ID != tc.wantID || cfg.Address != tc.wantAdr {
				t.Fatalf("resolveIdentity: id %q address %q, %v; want %q %q", cfg.ID, cfg.Address, err, tc.wantID, tc.wantAdr)
			}
		})
	}

	noName := h
	noName.hostname = func() (string, error) { return "", errors.New("uname failed") }
	if err := noName.resolveIdentity(context.Background(), &Config{Port: 5000, Address: "10.0.0.1"}); err == nil || !strings.Contains(err.Error(), "--id") {
		t.Errorf("resolveIdentity without a host name: %v; want an error naming --id", err)
	}
	nowhere := fakeHost("", nil, nil)
	if err := nowhere.resolveIdentity(context.Background(), &Config{ID: "a1", Port: 5000}); err == nil || !strings.Contains(err.Error(), "--address") {
		t.Errorf("resolveIdentity without any address: %v; want an error naming --address", err)
	}
}

// TestSystemHostInterfaces reads this machine's interfaces as the agent does: the loopback
// interface is listed, with its flags and 127.0.0.1.
func TestSystemHostInterfaces(t *testing.T) {
	ifaces, err := systemHost.interfaces()
	if err != nil {
		t.Fatalf("interfaces: %v", err)
	}
	for _, ifc := range ifaces {
		for _, a := range ifc.Addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(net.IPv4(127, 0, 0, 1)) && ifc.Flags&net.FlagLoopback != 0 {
				return
			}
		}
	}
	t.Fatalf("no loopback interface holding 127.0.0.1 among %+v", ifaces)
}

// TestSystemRouteSource asks this machine for its default route's source as the agent does
// (a UDP socket, no packet sent): an address when there is a route, an error when there is
// none, never neither.
func TestSystemRouteSource(t *testing.T) {
	ip, err := systemHost.routeSource()
	if (err == nil) == (ip == nil) {
		t.Fatalf("routeSource: %v, %v; want an address or an error", ip, err)
	}
}
