package tether_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoRefusesBusyPorts: `make demo` while `make run` is still up must not report the
// demo as up on the strength of the other control plane's /readyz: it checks its ports first
// and names what holds them.
func TestDemoRefusesBusyPorts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs examples/demo.sh")
	}
	for _, tool := range []string{"bash", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("examples/demo.sh needs %s", tool)
		}
	}
	// Something answering /readyz on the demo's admin address, as `make run` does. If the
	// port is taken already, whatever holds it plays the part.
	if l, err := net.Listen("tcp", "127.0.0.1:18001"); err == nil {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) }), ReadHeaderTimeout: time.Second}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+string(filepath.Separator), "./cmd/tether-controlplane", "./cmd/tether-agent", "./examples/sessionapp")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "examples/demo.sh")
	cmd.Env = append(os.Environ(), "BIN="+bin)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "Tether demo is up") {
		t.Fatalf("demo with 127.0.0.1:18001 taken: %v; want a refusal before anything starts:\n%s", err, out)
	}
	if !strings.Contains(string(out), "127.0.0.1:18001") || !strings.Contains(string(out), "make run") {
		t.Errorf("the refusal does not name the port and `make run`:\n%s", out)
	}
}
