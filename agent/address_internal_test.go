package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestDefiniteDialFailure: only a refusal or a missing route proves that nothing can connect
// (the instance is then unhealthy); a timeout or a reset may be a loaded app.
func TestDefiniteDialFailure(t *testing.T) {
	wrap := func(e syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", e)}
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{wrap(syscall.ECONNREFUSED), true},
		{wrap(syscall.EHOSTUNREACH), true},
		{wrap(syscall.ENETUNREACH), true},
		{wrap(syscall.EADDRNOTAVAIL), true},
		{wrap(10061), true}, // Windows: WSAECONNREFUSED
		{wrap(10065), true}, // WSAEHOSTUNREACH
		{wrap(10051), true}, // WSAENETUNREACH
		{wrap(10049), true}, // WSAEADDRNOTAVAIL
		{wrap(syscall.ETIMEDOUT), false},
		{wrap(syscall.ECONNRESET), false},
		{wrap(10060), false}, // WSAETIMEDOUT
		{context.DeadlineExceeded, false},
		{errors.New("no errno"), false},
	} {
		if got := definiteDialFailure(c.err); got != c.want {
			t.Errorf("definiteDialFailure(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestDialAddressAndItsReason: a listening loopback port answers; a closed one is a definite
// failure, and the published reason names the address and the errno.
func TestDialAddressAndItsReason(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := dialAddress(context.Background(), "127.0.0.1", port); err != nil {
		t.Fatalf("dial a listening port: %v", err)
	}
	ln.Close()
	err = dialAddress(context.Background(), "127.0.0.1", port)
	if err == nil || !definiteDialFailure(err) {
		t.Fatalf("dial a closed port: %v, want a definite failure", err)
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		t.Fatalf("dial a closed port: %v has no errno", err)
	}
	want := fmt.Sprintf("127.0.0.1:%d does not answer (%s): ", port, errno.Error())
	if got := addressReason("127.0.0.1", port, err); !strings.HasPrefix(got, want) || !strings.Contains(got, "--address") {
		t.Errorf("reason %q, want it to start %q and name --address", got, want)
	}
	if got := addressReason("::1", 80, context.DeadlineExceeded); !strings.HasPrefix(got, "[::1]:80 does not answer (no answer): ") {
		t.Errorf("reason without an errno: %q", got)
	}
}
