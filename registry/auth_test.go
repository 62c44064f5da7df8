package registry_test

import (
	"context"
	"crypto/tls"
	"errors"
	"os/exec"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/tlstest"
	"github.com/tetherlb/tether/registry"
)

const rolesScript = "../examples/etcd-roles.sh"

// secureEtcd is an etcd with mutual TLS and the roles of examples/etcd-roles.sh.
type secureEtcd struct {
	srv       *etcdtest.Server
	ca        *tlstest.Authority
	client    tlstest.KeyPair // CN matches no etcd user
	passwords map[string]string
}

func startSecureEtcd(t *testing.T) *secureEtcd {
	t.Helper()
	ca := tlstest.New(t, "tether-test-ca")
	server := ca.Server(t, "etcd-server")
	s := &secureEtcd{ca: ca, client: ca.Client(t, "tether-test-client"), passwords: map[string]string{
		"root": "root-secret-1", "tether-controlplane": "cp-secret-2", "tether-agent": "agent-secret-3",
		"tether-operator": "operator-secret-4",
	}}
	s.srv = etcdtest.Start(t, etcdtest.WithFastPasswords(), etcdtest.WithTLS(transport.TLSInfo{
		CertFile: server.CertFile, KeyFile: server.KeyFile, TrustedCAFile: ca.CAFile, ClientCertAuth: true,
	}))
	admin := s.connect(t, s.client, "", "")
	etcdtest.ApplyRolesScript(t, admin, rolesScript, registry.DefaultPrefix, map[string]string{
		"ROOT_PASSWORD": s.passwords["root"], "CONTROLPLANE_PASSWORD": s.passwords["tether-controlplane"],
		"AGENT_PASSWORD": s.passwords["tether-agent"], "OPERATOR_PASSWORD": s.passwords["tether-operator"],
	})
	return s
}

// connect opens a client with the given client certificate (none if zero) and user.
func (s *secureEtcd) connect(t *testing.T, cert tlstest.KeyPair, user, password string) *clientv3.Client {
	t.Helper()
	tc := &tls.Config{RootCAs: s.ca.Pool, MinVersion: tls.VersionTLS12}
	if cert.CertFile != "" {
		tc.Certificates = []tls.Certificate{cert.Cert}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: s.srv.Endpoints(), TLS: tc, Username: user, Password: password,
		DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client as %q: %v", user, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testInstance(id string, port int) registry.Instance {
	return registry.Instance{ID: id, Address: "10.0.0.5", Port: port, State: registry.StateAvailable,
		UpdatedAt: time.Date(2026, 11, 22, 15, 40, 0, 0, time.UTC)}
}

func wantDenied(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("%s: got %v; want permission denied", what, err)
	}
}

// TestRolesScriptIsValidShell checks the documented script at least parses.
func TestRolesScriptIsValidShell(t *testing.T) {
	if out, err := exec.Command("sh", "-n", rolesScript).CombinedOutput(); err != nil {
		t.Fatalf("sh -n %s: %v: %s", rolesScript, err, out)
	}
}

// TestLeastPrivilegeRoles runs an etcd with mutual TLS and auth, set up by
// examples/etcd-roles.sh: the agent role does everything an agent does with its own
// instance, but cannot write a service configuration; the control-plane role watches the
// registry and writes its replica report, nothing else; a wrong password and a missing client certificate are
// refused.
func TestLeastPrivilegeRoles(t *testing.T) {
	s := startSecureEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := registry.DefaultPrefix

	root := s.connect(t, s.client, "root", s.passwords["root"])
	if err := registry.PutServiceConfig(ctx, root, p, "app", registry.DefaultServiceConfig("app")); err != nil {
		t.Fatalf("root writes the service config: %v", err)
	}

	t.Run("agent", func(t *testing.T) {
		agent := s.connect(t, s.client, "tether-agent", s.passwords["tether-agent"])
		lease, err := agent.Grant(ctx, 10)
		if err != nil {
			t.Fatalf("agent grants a lease: %v", err)
		}
		inst := testInstance("a1", 5001)
		if err := registry.CreateInstance(ctx, agent, p, "app", inst, lease.ID); err != nil {
			t.Fatalf("agent creates its instance: %v", err)
		}
		inst.Load.Sessions = 7
		if err := registry.UpdateInstance(ctx, agent, p, "app", inst, lease.ID); err != nil {
			t.Errorf("agent updates its instance: %v", err)
		}
		if _, err := agent.KeepAliveOnce(ctx, lease.ID); err != nil {
			t.Errorf("agent keeps its lease alive: %v", err)
		}
		if _, err := agent.Get(ctx, registry.InstanceKey(p, "app", "a1")); err != nil {
			t.Errorf("agent reads its key: %v", err)
		}
		if _, err := agent.TimeToLive(ctx, lease.ID); err != nil {
			t.Errorf("agent reads its lease's TTL: %v", err)
		}

		wantDenied(t, "agent writes the service config", registry.PutServiceConfig(ctx, agent, p, "app", registry.DefaultServiceConfig("app")))
		_, err = agent.Put(ctx, registry.ServiceKey(p, "other"), `{"domains":["evil.example.com"]}`)
		wantDenied(t, "agent creates another service's config", err)
		_, err = agent.Delete(ctx, registry.ServiceKey(p, "app"))
		wantDenied(t, "agent deletes the service config", err)
		_, err = agent.Put(ctx, "/elsewhere", "x")
		wantDenied(t, "agent writes outside the prefix", err)

		if err := registry.DeleteInstance(ctx, agent, p, "app", "a1", lease.ID); err != nil {
			t.Errorf("agent deregisters: %v", err)
		}
		if _, err := agent.Revoke(ctx, lease.ID); err != nil {
			t.Errorf("agent revokes its lease: %v", err)
		}
		got, err := root.Get(ctx, registry.ServiceKey(p, "app"))
		if err != nil || len(got.Kvs) != 1 {
			t.Fatalf("service config after the agent's attempts: %v, %d keys", err, len(got.Kvs))
		}
		if _, err := registry.DecodeServiceConfig("app", got.Kvs[0].Value); err != nil {
			t.Errorf("service config changed by the agent: %v", err)
		}
	})

	t.Run("control plane", func(t *testing.T) {
		cp := s.connect(t, s.client, "tether-controlplane", s.passwords["tether-controlplane"])
		if _, err := cp.Get(ctx, p+"/", clientv3.WithPrefix()); err != nil {
			t.Errorf("control plane reads the registry: %v", err)
		}
		lease, err := cp.Grant(ctx, 10)
		if err != nil {
			t.Fatalf("control plane grants a lease: %v", err)
		}
		if _, err := cp.Put(ctx, registry.ReplicaKey(p, "cp-18000"), `{"held":7}`, clientv3.WithLease(lease.ID)); err != nil {
			t.Errorf("control plane writes its replica report: %v", err)
		}
		if _, err := cp.Revoke(ctx, lease.ID); err != nil {
			t.Errorf("control plane revokes its lease: %v", err)
		}
		_, err = cp.Put(ctx, registry.InstanceKey(p, "app", "fake"), `{"address":"10.6.6.6","port":80,"state":"available"}`)
		wantDenied(t, "control plane registers an instance", err)
		wantDenied(t, "control plane writes a service config", registry.PutServiceConfig(ctx, cp, p, "app", registry.DefaultServiceConfig("app")))
		agent := s.connect(t, s.client, "tether-agent", s.passwords["tether-agent"])
		_, err = agent.Put(ctx, registry.ReplicaKey(p, "cp-18000"), `{"held":0,"wants":99}`)
		wantDenied(t, "agent writes a replica report", err)
	})

	t.Run("operator", func(t *testing.T) {
		op := s.connect(t, s.client, "tether-operator", s.passwords["tether-operator"])
		d := registry.Drain{Labels: map[string]string{"version": "1.4.1"}, CreatedAt: time.Date(2026, 11, 22, 15, 40, 0, 0, time.UTC)}
		if _, created, err := registry.PutDrain(ctx, op, p, "app", registry.DrainName(d), d); err != nil || !created {
			t.Fatalf("operator writes a drain: created %v, %v", created, err)
		}
		if _, err := op.Get(ctx, p+"/", clientv3.WithPrefix()); err != nil {
			t.Errorf("operator reads the registry: %v", err)
		}
		wantDenied(t, "operator writes a service config", registry.PutServiceConfig(ctx, op, p, "app", registry.DefaultServiceConfig("app")))
		_, err := op.Put(ctx, registry.InstanceKey(p, "app", "fake"), `{"address":"10.6.6.6","port":80,"state":"available"}`)
		wantDenied(t, "operator registers an instance", err)
		_, err = op.Delete(ctx, registry.InstancesPrefix(p), clientv3.WithPrefix())
		wantDenied(t, "operator deletes instances", err)
		_, err = op.Put(ctx, "/elsewhere", "x")
		wantDenied(t, "operator writes outside the prefix", err)

		// The agent reads the drains (to report them) but cannot write or remove one.
		agent := s.connect(t, s.client, "tether-agent", s.passwords["tether-agent"])
		if got, err := agent.Get(ctx, registry.ServiceDrainsPrefix(p, "app"), clientv3.WithPrefix()); err != nil || len(got.Kvs) != 1 {
			t.Errorf("agent reads the drains: %v", err)
		}
		_, err = agent.Delete(ctx, registry.DrainKey(p, "app", registry.DrainName(d)))
		wantDenied(t, "agent removes a drain", err)
		_, err = agent.Put(ctx, registry.DrainKey(p, "app", "x"), `{"instance":"a1"}`)
		wantDenied(t, "agent writes a drain", err)
		// The control plane reads them and cannot write one.
		cp := s.connect(t, s.client, "tether-controlplane", s.passwords["tether-controlplane"])
		_, err = cp.Put(ctx, registry.DrainKey(p, "app", "x"), `{"instance":"a1"}`)
		wantDenied(t, "control plane writes a drain", err)

		if ok, err := registry.DeleteDrain(ctx, op, p, "app", registry.DrainName(d)); err != nil || !ok {
			t.Errorf("operator removes the drain: existed %v, %v", ok, err)
		}
	})

	t.Run("agent by certificate common name", func(t *testing.T) {
		// With client-certificate auth, etcd takes the user from the certificate's CN when no
		// password is given.
		agent := s.connect(t, s.ca.Client(t, "tether-agent"), "", "")
		lease, err := agent.Grant(ctx, 10)
		if err != nil {
			t.Fatalf("grant: %v", err)
		}
		if err := registry.CreateInstance(ctx, agent, p, "app", testInstance("cn1", 5002), lease.ID); err != nil {
			t.Errorf("CN agent creates its instance: %v", err)
		}
		_, err = agent.Put(ctx, registry.ServiceKey(p, "app"), "{}")
		wantDenied(t, "CN agent writes the service config", err)
		if _, err := agent.Revoke(ctx, lease.ID); err != nil {
			t.Errorf("revoke: %v", err)
		}
	})

	t.Run("control plane", func(t *testing.T) {
		cp := s.connect(t, s.client, "tether-controlplane", s.passwords["tether-controlplane"])
		agent := s.connect(t, s.client, "tether-agent", s.passwords["tether-agent"])
		lease, err := agent.Grant(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if err := registry.CreateInstance(ctx, agent, p, "app", testInstance("w1", 5003), lease.ID); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
		defer wcancel()
		seen := make(chan struct{})
		w := registry.NewWatcher(cp, registry.WatchOptions{Prefix: p})
		done := make(chan error, 1)
		go func() {
			done <- w.Run(wctx, func(st *registry.State) {
				if svc := st.Services["app"]; svc != nil && svc.Configured && svc.Instances["w1"].Port == 5003 {
					select {
					case <-seen:
					default:
						close(seen)
					}
				}
			})
		}()
		select {
		case <-seen:
		case <-wctx.Done():
			t.Error("the control-plane user's watch never saw the service and its instance")
		}
		wcancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
		_, err = cp.Put(ctx, registry.InstanceKey(p, "app", "x1"), "{}")
		wantDenied(t, "control plane writes an instance", err)
		_, err = cp.Put(ctx, registry.ServiceKey(p, "app"), "{}")
		wantDenied(t, "control plane writes a service config", err)
		_, err = cp.Delete(ctx, p+"/", clientv3.WithPrefix())
		wantDenied(t, "control plane deletes the registry", err)
		_, err = cp.Get(ctx, "/elsewhere")
		wantDenied(t, "control plane reads outside the prefix", err)
	})

	t.Run("wrong password", func(t *testing.T) {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: s.srv.Endpoints(), TLS: &tls.Config{RootCAs: s.ca.Pool, Certificates: []tls.Certificate{s.client.Cert}},
			Username: "tether-agent", Password: "not-the-password", DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		})
		if err == nil {
			defer cli.Close()
			_, err = cli.Get(ctx, registry.InstanceKey(p, "app", "a1"))
		}
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("wrong password: got %v; want %v", err, rpctypes.ErrAuthFailed)
		}
	})

	t.Run("no client certificate", func(t *testing.T) {
		cli := s.connect(t, tlstest.KeyPair{}, "", "")
		gctx, gcancel := context.WithTimeout(ctx, time.Second)
		defer gcancel()
		if _, err := cli.Get(gctx, registry.ServiceKey(p, "app")); err == nil {
			t.Error("a client without a certificate read the registry; want the TLS handshake refused")
		}
	})
}
