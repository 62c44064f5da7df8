package controlplane

import (
	"github.com/rs/zerolog"

	"github.com/tetherlb/tether/controlplane/translate"
)

// problemLog logs translation problems when they appear and when they clear, not on every
// push: a problem lasts until someone fixes the registry (1,000 services all claiming * and /
// are 999 problems on each of many pushes), and the current set is always on the metrics
// (tether_translate_problems) and /debug/config.
type problemLog struct {
	log  zerolog.Logger
	seen map[translate.Problem]bool
}

// update logs the difference between the problems of the last translation and these.
func (l *problemLog) update(problems []translate.Problem) {
	next := make(map[translate.Problem]bool, len(problems))
	for _, pr := range problems {
		next[pr] = true
		if !l.seen[pr] {
			l.log.Warn().Str("service", pr.Service).Str("problem", pr.Message).Msg("translation problem")
		}
	}
	for pr := range l.seen {
		if !next[pr] {
			l.log.Info().Str("service", pr.Service).Str("problem", pr.Message).Msg("translation problem cleared")
		}
	}
	l.seen = next
}
