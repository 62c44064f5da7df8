//go:build unix

package etcdtest

import (
	"fmt"
	"net/netip"
	"syscall"
	"time"
)

// hold binds addr (an IPv4 host:port) without listening, so that connections to it are
// refused while neither the kernel nor another process can hand the port out. SO_REUSEADDR
// lets it bind beside the stopped server's connections in TIME_WAIT, and lets the server
// bind again once released.
func hold(addr string) (release func(), err error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("hold %s: not an IPv4 address and port", addr)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, fmt.Errorf("hold %s: %w", addr, err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("hold %s: %w", addr, err)
	}
	sa := &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	// The stopped server's listener may take a moment to let go.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err = syscall.Bind(fd, sa); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("hold %s: %w", addr, err)
	}
	return func() { syscall.Close(fd) }, nil
}
