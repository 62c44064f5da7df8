//go:build unix

package etcdtest

import (
	"errors"
	"net"
	"net/netip"
	"net/url"
	"syscall"
	"testing"
	"time"
)

// TestStoppedServerKeepsItsPorts: while stopped, clients are refused and the ports cannot be
// bound the way the kernel hands out free ports; StartAgain serves on them again.
func TestStoppedServerKeepsItsPorts(t *testing.T) {
	s := Start(t)
	u, err := url.Parse(s.ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		c.Close()
		t.Fatal("a stopped server accepts connections")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a stopped server: %v; want connection refused", err)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	ap := netip.MustParseAddrPort(u.Host)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind the stopped server's client port: %v; want EADDRINUSE", err)
	}
	s.StartAgain(t)
	c, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err != nil {
		t.Fatalf("dial after StartAgain: %v", err)
	}
	c.Close()
}
