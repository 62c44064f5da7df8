package etcdtest

import (
	"os"
	"testing"

	"github.com/tetherlb/tether/internal/etcdembed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// crashLogger is etcd's logger in tests. etcd's giving up (Logger.Panic or Fatal) kills the
// whole test binary with a stack that names neither the test nor the data directory; the
// entry written first names both.
func crashLogger(t testing.TB, dir string) *zap.Logger {
	return etcdembed.QuietLogger(zapcore.Lock(os.Stderr), zap.String("test", t.Name()), zap.String("dir", dir))
}
