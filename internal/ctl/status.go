package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/controlplane/admin"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/overview"
	"github.com/tetherlb/tether/registry"
)

// Status runs `tether-controlplane status [flags]`: it reads the registry once from etcd and
// prints the overview as a table, or as JSON with --json. args are the arguments after
// "status"; flags also read TETHER_<FLAG> from lookup. It returns the exit code: 0 on
// success, 1 when etcd cannot be read, 2 on a usage error.
func Status(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	var c common
	fs := c.flags("status", "Usage: tether-controlplane status [flags]\n\nPrints every service and instance of the registry, read once from etcd.\n\nFlags:\n",
		stderr, "timeout", "time limit for reading etcd")
	asJSON := fs.Bool("json", false, "print the overview as JSON instead of a table")
	allowLoopback := fs.Bool("allow-loopback-backends", false, "show instances on loopback addresses as served, as a control plane started with --allow-loopback-backends does (without it they are rejected, as the control plane rejects them)")
	admin := fs.String("admin-addr", "", "a control plane's admin address (host:port, e.g. 127.0.0.1:18001): also list its connected Envoys older than Tether's minimum version ("+controlplane.MinEnvoyVersion+")")
	pos, code, ok := c.parse(fs, args, lookup)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return c.fail(2, fmt.Errorf("unexpected argument %q (see -h)", pos[0]))
	}
	p, ec, err := c.check(lookup)
	if err != nil {
		return c.fail(2, err)
	}
	ctx, cancel := context.WithTimeout(ctx, *c.timeout)
	defer cancel()
	cli, err := etcdconn.Open(ctx, ec)
	if err != nil {
		return c.fail(1, err)
	}
	defer cli.Close()
	snap, err := read(ctx, cli, p, *allowLoopback)
	if err != nil {
		return c.fail(1, err)
	}
	ov := overview.FromState(snap.st)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(ov)
	} else {
		err = overview.WriteTable(stdout, ov, time.Now())
	}
	if err != nil {
		return c.fail(1, err)
	}
	if *admin != "" {
		if err := writeOldEnvoys(ctx, stdout, *admin); err != nil {
			return c.fail(1, err)
		}
	}
	return 0
}

// writeOldEnvoys reads the connected Envoys from the control plane's /api/state at addr and
// names each one older than controlplane.MinEnvoyVersion with what it loses: Envoy accepts
// the configuration and silently drops what it does not know.
func writeOldEnvoys(ctx context.Context, w io.Writer, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/api/state", nil)
	if err != nil {
		return fmt.Errorf("--admin-addr %q: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("read the control plane's Envoys: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("read the control plane's Envoys: GET /api/state at %s: %s", addr, resp.Status)
	}
	var ms admin.MonitorState
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ms); err != nil {
		return fmt.Errorf("read the control plane's Envoys: decode /api/state: %w", err)
	}
	n, old := 0, 0
	var b strings.Builder
	for _, g := range ms.Groups {
		for _, e := range g.Envoys {
			n++
			if e.BelowMinVersion {
				old++
				fmt.Fprintf(&b, "  %s (group %s): Envoy %s, below %s: %s\n", e.NodeID, g.Name, e.EnvoyVersion, ms.MinEnvoyVersion, strings.Join(e.Missing, "; "))
			}
		}
	}
	if old == 0 {
		_, err = fmt.Fprintf(w, "\nEnvoys at %s: %d connected, none below the minimum version %s\n", addr, n, ms.MinEnvoyVersion)
		return err
	}
	_, err = fmt.Fprintf(w, "\nEnvoys at %s: %d connected, %d below the minimum version %s:\n%s", addr, n, old, ms.MinEnvoyVersion, b.String())
	return err
}

// refuseLoopback moves the instances on loopback addresses to the rejected keys (of a State
// from BuildState: its own maps), with the control plane's own words.
func refuseLoopback(st *registry.State, prefix string) {
	for name, s := range st.Services {
		for id, in := range s.Instances {
			if registry.IsLoopback(in.Address) {
				delete(s.Instances, id)
				st.Rejected[registry.InstanceKey(prefix, name, id)] = fmt.Sprintf("address: %s is a loopback address, which the control plane accepts only with --allow-loopback-backends (demo and tests; status --allow-loopback-backends shows it as such a control plane does)", in.Address)
			}
		}
	}
}
