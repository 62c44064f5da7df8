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

// resolveIdentity fills the ID and turns the address into an IP literal (Envoy's EDS does
// not resolve names).
func resolveIdentity(ctx context.Context, cfg *Config) error {
	if cfg.ID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host name for the default --id: %w", err)
		}
		if cfg.ID, err = DefaultID(host, cfg.Port); err != nil {
			return err
		}
	}
	switch {
	case cfg.Address == "":
		ip, err := primaryAddress()
		if err != nil {
			return err
		}
		cfg.Address = ip
	case net.ParseIP(cfg.Address) == nil:
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip", cfg.Address)
		if err != nil {
			return fmt.Errorf("--address: resolve %q: %w", cfg.Address, err)
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
// else the first global unicast address of an interface that is up.
func primaryAddress() (string, error) {
	if c, err := net.Dial("udp", "192.0.2.1:9"); err == nil {
		ip := c.LocalAddr().(*net.UDPAddr).IP
		c.Close()
		if ip.IsGlobalUnicast() {
			return ip.String(), nil
		}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", fmt.Errorf("list interfaces for the default --address: %w", err)
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.IsGlobalUnicast() && n.IP.To4() != nil {
				return n.IP.String(), nil
			}
		}
	}
	return "", errors.New("no primary address found (no default route, no interface address); set --address")
}
