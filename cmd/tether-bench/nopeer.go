//go:build !peer

package main

import (
	"fmt"
	"io"
	"os"
)

// peer is the comparison with Traefik (peer.go), built only with the build tag peer: it needs
// a Traefik binary and is no part of make test.
func peer(_ []string, _ io.Writer, stderr *os.File) int {
	fmt.Fprintln(stderr, "tether-bench: built without the peer comparison; build with go build -tags peer ./cmd/tether-bench (see bench/peer/run.sh)")
	return 2
}
