package controlplane

import (
	"time"

	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/controlplane/xdscache"
)

// adminSource is what the admin server shows of a control plane (admin.Source).
type adminSource struct{ cp *ControlPlane }

func (s adminSource) Snapshot() *admin.Snapshot {
	if p := s.cp.pub.snapshotNow(); p != nil {
		return &p.Snapshot
	}
	return nil
}

func (s adminSource) Groups() []string                                  { return s.cp.pub.groupList() }
func (s adminSource) Streams() []xdscache.ClientInfo                    { return s.cp.Clients() }
func (s adminSource) Phases() map[string]map[string]admin.EndpointPhase { return s.cp.phase.status() }
func (s adminSource) Lagging() []admin.LaggingEnvoy                     { return s.cp.phase.laggingEnvoys() }
func (s adminSource) Ready() <-chan struct{}                            { return s.cp.Ready() }

func (s adminSource) Unconfirmed(now time.Time) (time.Duration, bool) {
	return s.cp.unconfirmedFor(now)
}
