package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/registry"
)

// Service runs `tether-controlplane service put SERVICE FILE|-`, `service get SERVICE`
// and `service delete SERVICE`. put validates the configuration with the registry's own
// decoder, listing every error, and writes it only when valid: an invalid value in etcd is
// served with its bad fields at their defaults, or, when what identifies the service's
// sessions is bad, leaves the service out. Exit codes: 0 done, 1 etcd failed, 2 usage
// error or invalid configuration (nothing written).
func Service(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	var c common
	fs := c.flags("service", `Usage:
  tether-controlplane service put SERVICE FILE|-   validate a service configuration (JSON), then write it
  tether-controlplane service get SERVICE          print the configuration stored in etcd
  tether-controlplane service delete SERVICE       remove it (the service then runs with the defaults)
Use put rather than etcdctl put: an invalid configuration is refused with every error listed.

Flags:
`, stderr, "timeout", "time limit for the etcd request")
	pos, code, ok := c.parse(fs, args, lookup)
	if !ok {
		return code
	}
	if len(pos) < 2 {
		fs.Usage()
		return 2
	}
	verb, svc := pos[0], pos[1]
	want := map[string]int{"put": 3, "get": 2, "delete": 2}
	n, ok := want[verb]
	if !ok {
		return c.fail(2, fmt.Errorf("unknown subcommand %q: use put, get or delete", verb))
	}
	if len(pos) != n {
		return c.fail(2, fmt.Errorf("%s takes %d arguments, got %d (see -h)", verb, n-1, len(pos)-1))
	}
	if err := registry.ValidateServiceName(svc); err != nil {
		return c.fail(2, err)
	}
	p, ec, err := c.check(lookup)
	if err != nil {
		return c.fail(2, err)
	}
	var raw []byte
	if verb == "put" {
		if pos[2] == "-" {
			raw, err = io.ReadAll(io.LimitReader(os.Stdin, registry.MaxValueBytes+1))
		} else {
			raw, err = os.ReadFile(pos[2])
		}
		if err != nil {
			return c.fail(2, fmt.Errorf("read %s: %w", pos[2], err))
		}
		if _, err := registry.DecodeServiceConfig(svc, raw); err != nil {
			fmt.Fprintf(stderr, "tether-controlplane service: the configuration of %s is invalid; nothing written:\n", svc)
			// One field's error a line (ServiceConfig.Validate joins them with newlines).
			fmt.Fprintf(stderr, "  %s\n", strings.ReplaceAll(err.Error(), "\n", "\n  "))
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *c.timeout)
	defer cancel()
	cl, err := etcdconn.Open(ctx, ec)
	if err != nil {
		return c.fail(1, err)
	}
	defer cl.Close()
	key := registry.ServiceKey(p, svc)
	switch verb {
	case "put":
		if _, err := cl.Put(ctx, key, string(raw)); err != nil {
			return c.fail(1, fmt.Errorf("put %s: %w", key, err))
		}
		fmt.Fprintf(stdout, "%s: configuration written\n", key)
	case "get":
		resp, err := cl.Get(ctx, key)
		if err != nil {
			return c.fail(1, fmt.Errorf("get %s: %w", key, err))
		}
		if len(resp.Kvs) == 0 {
			return c.fail(1, fmt.Errorf("%s: no configuration (the service runs with the defaults)", key))
		}
		fmt.Fprintf(stdout, "%s\n", resp.Kvs[0].Value)
		if _, err := registry.DecodeServiceConfig(svc, resp.Kvs[0].Value); err != nil {
			fmt.Fprintf(stderr, "warning: this configuration is invalid: %v\n", err)
		}
	case "delete":
		resp, err := cl.Delete(ctx, key)
		if err != nil {
			return c.fail(1, fmt.Errorf("delete %s: %w", key, err))
		}
		if resp.Deleted == 0 {
			return c.fail(1, fmt.Errorf("%s: no configuration to delete", key))
		}
		fmt.Fprintf(stdout, "%s: configuration deleted\n", key)
	}
	return 0
}
