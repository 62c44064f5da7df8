package etcdtest

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcdctlLine matches one etcdctl command of a roles script, optionally fed a password from
// an environment variable on stdin: printf '%s\n' "$VAR" | etcdctl ...
var etcdctlLine = regexp.MustCompile(`^(?:printf '%s\\n' "\$(\w+)" \| )?etcdctl (.+)$`)

// ApplyRolesScript applies the etcdctl commands of a shell script such as
// examples/etcd-roles.sh through cli, so that tests exercise exactly the documented roles.
// It understands user add (password from env, by the variable piped into it), user grant-role,
// role add, role grant-permission (read, write or readwrite, with --prefix=true) and
// auth enable; "$PREFIX" is prefix. Any other etcdctl command fails the test.
func ApplyRolesScript(t testing.TB, cli *clientv3.Client, path, prefix string, env map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("roles script: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n, line := range strings.Split(string(b), "\n") {
		m := etcdctlLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		var args []string
		prefixFlag := false
		for _, a := range strings.Fields(m[2]) {
			a = strings.ReplaceAll(strings.Trim(a, `"`), "$PREFIX", prefix)
			switch a {
			case "--prefix=true":
				prefixFlag = true
			case "--interactive=false":
			default:
				args = append(args, a)
			}
		}
		if err := applyRolesCommand(ctx, cli, args, prefixFlag, env[m[1]], m[1]); err != nil {
			t.Fatalf("roles script line %d %q: %v", n+1, line, err)
		}
	}
}

func applyRolesCommand(ctx context.Context, cli *clientv3.Client, args []string, prefixFlag bool, password, passwordVar string) error {
	cmd := strings.Join(args[:min(2, len(args))], " ")
	var err error
	switch {
	case cmd == "user add" && len(args) == 3:
		if passwordVar == "" || password == "" {
			return errUnsupported("user add without a password piped from a set variable")
		}
		_, err = cli.UserAdd(ctx, args[2], password)
	case cmd == "user grant-role" && len(args) == 4:
		_, err = cli.UserGrantRole(ctx, args[2], args[3])
	case cmd == "role add" && len(args) == 3:
		_, err = cli.RoleAdd(ctx, args[2])
	case cmd == "role grant-permission" && len(args) == 5 && prefixFlag:
		perm, ok := map[string]clientv3.PermissionType{
			"read": clientv3.PermissionType(clientv3.PermRead), "write": clientv3.PermissionType(clientv3.PermWrite),
			"readwrite": clientv3.PermissionType(clientv3.PermReadWrite),
		}[args[3]]
		if !ok {
			return errUnsupported("permission " + args[3])
		}
		_, err = cli.RoleGrantPermission(ctx, args[2], args[4], clientv3.GetPrefixRangeEnd(args[4]), perm)
	case cmd == "auth enable" && len(args) == 2:
		_, err = cli.AuthEnable(ctx)
	default:
		return errUnsupported(strings.Join(args, " "))
	}
	return err
}

type errUnsupported string

func (e errUnsupported) Error() string { return "not understood by ApplyRolesScript: " + string(e) }
