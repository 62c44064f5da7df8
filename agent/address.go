package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
)

// dialAddress opens (and closes) a TCP connection to the address and port Envoy is given:
// the health and sessions URLs may reach the app on 127.0.0.1 while the published address,
// the host's primary one by default, is where Envoy connects.
func dialAddress(ctx context.Context, address string, port int) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(address, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return c.Close()
}

// definiteDialFailure reports a failure that proves nothing can connect there: refused, or
// no route. A timeout proves nothing (a loaded app's full accept queue drops connections).
func definiteDialFailure(err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	if errno == syscall.ECONNREFUSED || errno == syscall.EHOSTUNREACH || errno == syscall.ENETUNREACH || errno == syscall.EADDRNOTAVAIL {
		return true
	}
	// Windows: WSAECONNREFUSED, WSAEHOSTUNREACH, WSAENETUNREACH, WSAEADDRNOTAVAIL.
	return errno == 10061 || errno == 10065 || errno == 10051 || errno == 10049
}

// addressReason is the published reason of an instance whose address does not answer.
func addressReason(address string, port int, err error) string {
	why := "no answer"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		why = errno.Error()
	}
	return fmt.Sprintf("%s does not answer (%s): Envoy connects there; make the app listen on it, or pass --address where it listens",
		net.JoinHostPort(address, strconv.Itoa(port)), why)
}
