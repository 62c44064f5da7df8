package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrInstanceExists is returned by CreateInstance when the key is held by another lease:
// another live agent (or a crashed one whose lease has not expired yet) has that ID.
var ErrInstanceExists = errors.New("instance key already held by another lease")

// ErrLeaseLost is returned by UpdateInstance and DeleteInstance when the key no longer
// belongs to the given lease (it expired, or another agent took the ID).
var ErrLeaseLost = errors.New("instance key is not held by this lease")

func encodeInstance(service string, inst Instance) (string, error) {
	if err := ValidateServiceName(service); err != nil {
		return "", err
	}
	if err := inst.Validate(); err != nil {
		return "", fmt.Errorf("instance %s/%s: %w", service, inst.ID, err)
	}
	b, err := json.Marshal(inst)
	if err != nil {
		return "", fmt.Errorf("encode instance %s/%s: %w", service, inst.ID, err)
	}
	if len(b) > MaxValueBytes {
		return "", fmt.Errorf("instance %s/%s: encoded value is %d bytes, over %d", service, inst.ID, len(b), MaxValueBytes)
	}
	return string(b), nil
}

// CreateInstance writes a new instance key bound to lease, only if no key of that ID exists.
// An existing key held by another lease yields ErrInstanceExists; one already held by the same
// lease is overwritten.
func CreateInstance(ctx context.Context, cli *clientv3.Client, prefix, service string, inst Instance, lease clientv3.LeaseID) error {
	_, err := CreateInstanceRev(ctx, cli, prefix, service, inst, lease)
	return err
}

// CreateInstanceRev is CreateInstance that also returns the key's create revision (0 when
// the key already existed under the same lease and was overwritten).
func CreateInstanceRev(ctx context.Context, cli *clientv3.Client, prefix, service string, inst Instance, lease clientv3.LeaseID) (int64, error) {
	val, err := encodeInstance(service, inst)
	if err != nil {
		return 0, err
	}
	key := InstanceKey(prefix, service, inst.ID)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", key, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 1 && clientv3.LeaseID(kvs[0].Lease) == lease {
		return 0, UpdateInstance(ctx, cli, prefix, service, inst, lease)
	}
	holder := int64(0)
	if len(kvs) == 1 {
		holder = kvs[0].Lease
	}
	return 0, fmt.Errorf("create %s: %w (lease %x)", key, ErrInstanceExists, holder)
}

// AdoptInstance rebinds an instance key held by another lease to lease, in one transaction
// that succeeds only if the key is still the one that was read (its mod revision and its
// lease): there is never a moment without the key. It is for an agent taking over the key
// of its crashed predecessor on the same server; a key that changed meanwhile yields
// ErrInstanceExists.
func AdoptInstance(ctx context.Context, cli *clientv3.Client, prefix, service string, inst Instance, lease clientv3.LeaseID, prevMod int64, prevLease clientv3.LeaseID) error {
	val, err := encodeInstance(service, inst)
	if err != nil {
		return err
	}
	key := InstanceKey(prefix, service, inst.ID)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", prevMod), clientv3.Compare(clientv3.LeaseValue(key), "=", prevLease)).
		Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return fmt.Errorf("adopt %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("adopt %s: changed since it was read: %w", key, ErrInstanceExists)
	}
	return nil
}

// UpdateInstance rewrites an instance key, only while it is still bound to lease.
func UpdateInstance(ctx context.Context, cli *clientv3.Client, prefix, service string, inst Instance, lease clientv3.LeaseID) error {
	val, err := encodeInstance(service, inst)
	if err != nil {
		return err
	}
	key := InstanceKey(prefix, service, inst.ID)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease), clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpPut(key, val, clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return fmt.Errorf("update %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("update %s: %w", key, ErrLeaseLost)
	}
	return nil
}

// DeleteInstance removes an instance key, only while it is still bound to lease.
func DeleteInstance(ctx context.Context, cli *clientv3.Client, prefix, service, id string, lease clientv3.LeaseID) error {
	key := InstanceKey(prefix, service, id)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", lease), clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("delete %s: %w", key, ErrLeaseLost)
	}
	return nil
}

// PutServiceConfig validates and writes a service's configuration (no lease: it is the
// operator's). It is what `etcdctl put` does, with validation first.
func PutServiceConfig(ctx context.Context, cli *clientv3.Client, prefix, service string, cfg ServiceConfig) error {
	if err := ValidateServiceName(service); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("service %s: %w", service, err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode service %s: %w", service, err)
	}
	if _, err := cli.Put(ctx, ServiceKey(prefix, service), string(b)); err != nil {
		return fmt.Errorf("put service %s: %w", service, err)
	}
	return nil
}
