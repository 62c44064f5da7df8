package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/tetherlb/tether/registry"
)

// DefaultID derives a stable instance ID from the host name and the backend's port
// ("web-01-5000"): the same server and port always get the same ID, so a restarted agent
// finds its own key.
func DefaultID(hostname string, port int) (string, error) {
	host, _, _ := strings.Cut(hostname, ".") // the short name
	var b strings.Builder
	for _, r := range strings.ToLower(host) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-_")
	if len(name) > 100 {
		name = strings.TrimRight(name[:100], "-_")
	}
	if name == "" {
		return "", fmt.Errorf("host name %q gives no usable instance id; set --id", hostname)
	}
	id := name + "-" + strconv.Itoa(port)
	if err := registry.ValidateInstanceID(id); err != nil {
		return "", fmt.Errorf("derived %w; set --id", err)
	}
	return id, nil
}

// host is what choosing the instance's identity reads from the machine. The agent uses
// systemHost; tests give their own, to cover machines they do not run on.
type host struct {
	hostname func() (string, error)
	// routeSource returns the source address of the default route.
	routeSource func() (net.IP, error)
	interfaces  func() ([]hostInterface, error)
	lookupIP    func(ctx context.Context, name string) ([]net.IP, error)
}

// hostInterface is a network interface and its addresses.
type hostInterface struct {
	Flags net.Flags
	Addrs []net.Addr
}

var systemHost = host{
	hostname: os.Hostname,
	routeSource: func() (net.IP, error) {
		// A UDP "connection" sends no packet; it only picks the route and its source address.
		c, err := net.Dial("udp", "192.0.2.1:9")
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).IP, nil
	},
	interfaces: func() ([]hostInterface, error) {
		ifaces, err := net.Interfaces()
		if err != nil {
			return nil, err
		}
		out := make([]hostInterface, 0, len(ifaces))
		for _, ifc := range ifaces {
			addrs, err := ifc.Addrs()
			if err != nil {
				continue
			}
			out = append(out, hostInterface{Flags: ifc.Flags, Addrs: addrs})
		}
		return out, nil
	},
	lookupIP: func(ctx context.Context, name string) ([]net.IP, error) {
		return net.DefaultResolver.LookupIP(ctx, "ip", name)
	},
}

// resolveIdentity fills the ID and turns the address into an IP literal (Envoy's EDS does
// not resolve names).
func (h host) resolveIdentity(ctx context.Context, cfg *Config) error {
	if cfg.ID == "" {
		name, err := h.hostname()
		if err != nil {
			return fmt.Errorf("host name for the default --id: %w", err)
		}
		if cfg.ID, err = DefaultID(name, cfg.Port); err != nil {
			return err
		}
	}
	switch {
	case cfg.Address == "":
		ip, err := h.primaryAddress()
		if err != nil {
			return err
		}
		cfg.Address = ip
	case net.ParseIP(cfg.Address) == nil:
		ips, err := h.lookupIP(ctx, cfg.Address)
		if err != nil {
			return fmt.Errorf("--address: resolve %q: %w", cfg.Address, err)
		}
		if len(ips) == 0 {
			return fmt.Errorf("--address: %q resolves to no address", cfg.Address)
		}
		cfg.Address = pickIP(ips).String()
	}
	return nil
}

// pickIP prefers IPv4, as most backends listen on it. ips is not empty.
func pickIP(ips []net.IP) net.IP {
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip
		}
	}
	return ips[0]
}

// primaryAddress returns the source address of the default route (no packet is sent), or
// else the first global unicast IPv4 address of an interface that is up and not loopback.
func (h host) primaryAddress() (string, error) {
	if ip, err := h.routeSource(); err == nil && ip.IsGlobalUnicast() {
		return ip.String(), nil
	}
	ifaces, err := h.interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces for the default --address: %w", err)
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		for _, a := range ifc.Addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() && n.IP.To4() != nil {
				return n.IP.String(), nil
			}
		}
	}
	return "", errors.New("no primary address found (no default route, no interface address); set --address")
}
