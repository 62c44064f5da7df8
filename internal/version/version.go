// Package version holds Tether's version, stamped at build time by the Makefile
// (-X github.com/tetherlb/tether/internal/version.Version=...), and prints it for --version.
package version

import (
	"fmt"
	"io"
	"runtime"
)

// Version is the release version; "0.1.0" in a build without the stamp.
var Version = "0.1.0"

// Requested reports a lone --version (or -version) argument.
func Requested(args []string) bool {
	return len(args) == 1 && (args[0] == "--version" || args[0] == "-version")
}

// Print writes "<bin> <version> (<go version> <os>/<arch>)".
func Print(w io.Writer, bin string) {
	fmt.Fprintf(w, "%s %s (%s %s/%s)\n", bin, Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
