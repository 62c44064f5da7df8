package etcdembed

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcd's routine logging stays silent; the entry with which it gives up is written, with the
// caller's fields and etcd's own, before the panic.
func TestQuietLoggerWritesTheGivingUp(t *testing.T) {
	var buf bytes.Buffer
	lg := QuietLogger(zapcore.AddSync(&buf), zap.String("test", "TestSomething"), zap.String("dir", "/tmp/d1"))
	lg.Info("opened backend db")
	lg.Error("failed to publish local member to cluster through raft")
	if buf.Len() != 0 {
		t.Fatalf("routine entries were written: %q", buf.String())
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("Panic did not panic")
			}
		}()
		lg.Panic("failed to open database", zap.String("path", "/tmp/d1/member/snap/db"))
	}()
	out := buf.String()
	for _, want := range []string{"failed to open database", `"test": "TestSomething"`, `"dir": "/tmp/d1"`, "/tmp/d1/member/snap/db"} {
		if !strings.Contains(out, want) {
			t.Errorf("the panic entry %q lacks %q", out, want)
		}
	}
}
