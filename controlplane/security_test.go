package controlplane_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/tetherlb/tether/controlplane"
	"github.com/tetherlb/tether/internal/cptest"
	"github.com/tetherlb/tether/internal/etcdconn"
	"github.com/tetherlb/tether/internal/etcdtest"
	"github.com/tetherlb/tether/internal/syncbuf"
	"github.com/tetherlb/tether/internal/tlstest"
	"github.com/tetherlb/tether/internal/xdsclient"
	"github.com/tetherlb/tether/registry"
)

// TestEtcdMutualTLSAndAuth runs the control plane against an etcd with mutual TLS and the
// roles of examples/etcd-roles.sh, configured through the same flags an operator uses: it
// serves what an agent with its own role registers, shows no secret on any admin page or in
// its logs, and with a wrong password fails to start, saying why.
func TestEtcdMutualTLSAndAuth(t *testing.T) {
	ca := tlstest.New(t, "tether-test-ca")
	server, client := ca.Server(t, "etcd-server"), ca.Client(t, "tether-test-client")
	srv := etcdtest.Start(t, etcdtest.WithFastPasswords(), etcdtest.WithTLS(transport.TLSInfo{
		CertFile: server.CertFile, KeyFile: server.KeyFile, TrustedCAFile: ca.CAFile, ClientCertAuth: true,
	}))
	etcdClient := func(user, password string) *clientv3.Client {
		c, err := clientv3.New(clientv3.Config{
			Endpoints: srv.Endpoints(), Username: user, Password: password, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
			TLS: &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{client.Cert}, MinVersion: tls.VersionTLS12},
		})
		if err != nil {
			t.Fatalf("etcd client: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	const cpPassword, agentPassword = "cp-Secret-7f3c9", "agent-Secret-1d2e"
	etcdtest.ApplyRolesScript(t, etcdClient("", ""), "../examples/etcd-roles.sh", registry.DefaultPrefix, map[string]string{
		"ROOT_PASSWORD": "root-Secret-0a0b", "CONTROLPLANE_PASSWORD": cpPassword, "AGENT_PASSWORD": agentPassword,
		"OPERATOR_PASSWORD": "operator-Secret-5e6f",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := registry.PutServiceConfig(ctx, etcdClient("root", "root-Secret-0a0b"), registry.DefaultPrefix, "app", registry.DefaultServiceConfig("app")); err != nil {
		t.Fatal(err)
	}
	agent := etcdClient("tether-agent", agentPassword)
	lease, err := agent.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	inst := registry.Instance{ID: "a1", Address: "127.0.0.1", Port: 5001, State: registry.StateAvailable, UpdatedAt: time.Now().UTC()}
	if err := registry.CreateInstance(ctx, agent, registry.DefaultPrefix, "app", inst, lease.ID); err != nil {
		t.Fatal(err)
	}

	// The etcd client configuration comes from the flags, the password from a file.
	pwFile := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(pwFile, []byte(cpPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := etcdconn.Flags{Endpoints: srv.Endpoints()[0], CA: ca.CAFile, Cert: client.CertFile, Key: client.KeyFile,
		User: "tether-controlplane", PasswordFile: pwFile, DialTimeout: 2 * time.Second}
	noEnv := func(string) (string, bool) { return "", false }
	etcdCfg, err := flags.ClientConfig(noEnv)
	if err != nil {
		t.Fatalf("etcd flags: %v", err)
	}

	t.Run("serves", func(t *testing.T) {
		var logs syncbuf.Buffer
		cp := cptest.Start(t, controlplane.Config{Etcd: etcdCfg, Logger: zerolog.New(&logs).Level(zerolog.DebugLevel)})
		c := connect(t, cp, xdsclient.Delta, "envoy-1", "default")
		waitFor(t, c, "the agent's instance over mutual TLS and auth", func(v xdsclient.View) bool { return endpoints(v)[5001] != nil })
		for _, page := range []string{"/debug/config", "/metrics", "/api/state", "/", "/readyz", "/debug/pprof/", "/debug/pprof/goroutine?debug=2"} {
			body := get(t, "http://"+cp.AdminAddr()+page, http.StatusOK)
			for _, secret := range []string{cpPassword, "tether-controlplane", pwFile} {
				if strings.Contains(body, secret) {
					t.Errorf("%s shows %q", page, secret)
				}
			}
		}
		if strings.Contains(logs.String(), cpPassword) {
			t.Error("the logs hold the etcd password")
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		bad := flags
		bad.PasswordFile = ""
		badCfg, err := bad.ClientConfig(func(k string) (string, bool) {
			return "not-the-password", k == etcdconn.PasswordEnv
		})
		if err != nil {
			t.Fatalf("etcd flags: %v", err)
		}
		// etcd is reachable, so the client authenticates at once and the start fails.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cp, err := controlplane.Start(ctx, controlplane.Config{Etcd: badCfg, XDSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logger: testLogger(t)})
		if err == nil {
			_ = cp.Stop()
			t.Fatal("the control plane started with a wrong etcd password")
		}
		if !strings.Contains(err.Error(), "authentication failed") || strings.Contains(err.Error(), "not-the-password") {
			t.Errorf("start error %q; want it to say the authentication failed, without the password", err)
		}
	})
}

// TestXDSTLS serves xDS over TLS and over mutual TLS: clients that trust the server's CA (and,
// for mutual TLS, present a certificate signed by the client CA) get the configuration;
// plaintext clients, clients without a certificate and clients with a certificate from
// another CA are refused.
func TestXDSTLS(t *testing.T) {
	srv := etcdtest.Start(t)
	put(t, srv.Client(t), "/tether/instances/app/a1", instanceJSON("a1", 5001, "available", 1))
	serverCA, clientCA, otherCA := tlstest.New(t, "xds-server-ca"), tlstest.New(t, "envoy-client-ca"), tlstest.New(t, "other-ca")
	serverCert := serverCA.Server(t, "controlplane")
	tlsCP := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		XDSTLS: &tls.Config{Certificates: []tls.Certificate{serverCert.Cert}, MinVersion: tls.VersionTLS12}})
	mtlsCP := cptest.Start(t, controlplane.Config{Etcd: clientv3.Config{Endpoints: srv.Endpoints()},
		XDSTLS: &tls.Config{Certificates: []tls.Certificate{serverCert.Cert}, MinVersion: tls.VersionTLS12,
			ClientCAs: clientCA.Pool, ClientAuth: tls.RequireAndVerifyClientCert}})

	trusting := func(cert *tlstest.KeyPair) credentials.TransportCredentials {
		tc := &tls.Config{RootCAs: serverCA.Pool, MinVersion: tls.VersionTLS12}
		if cert != nil {
			tc.Certificates = []tls.Certificate{cert.Cert}
		}
		return credentials.NewTLS(tc)
	}
	envoyCert, strangerCert := clientCA.Client(t, "envoy"), otherCA.Client(t, "envoy")
	cases := []struct {
		name   string
		cp     *controlplane.ControlPlane
		creds  credentials.TransportCredentials // nil: plaintext
		served bool
	}{
		{"TLS", tlsCP, trusting(nil), true},
		{"TLS, plaintext client", tlsCP, nil, false},
		{"mutual TLS", mtlsCP, trusting(&envoyCert), true},
		{"mutual TLS, no client certificate", mtlsCP, trusting(nil), false},
		{"mutual TLS, certificate of another CA", mtlsCP, trusting(&strangerCert), false},
		{"mutual TLS, plaintext client", mtlsCP, nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := xdsclient.New(xdsclient.Delta, "envoy-"+strings.ReplaceAll(tc.name, " ", "-"), "default")
			s := runClient(t, c, tc.cp.XDSAddr(), tc.creds)
			if tc.served {
				waitFor(t, c, "the configuration over TLS", func(v xdsclient.View) bool { return endpoints(v)[5001] != nil })
				return
			}
			if err := s.wait(t, 15*time.Second); err == nil {
				t.Error("the stream ended without an error; want it refused")
			}
			if n := c.View().Responses; n != 0 {
				t.Errorf("a refused client received %d responses", n)
			}
		})
	}
}
