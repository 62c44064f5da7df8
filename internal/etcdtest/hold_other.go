//go:build !unix

package etcdtest

import "errors"

// hold keeps nothing here: a restart relies on retrying while the port is taken.
func hold(string) (func(), error) { return nil, errors.New("holding a port is not supported here") }
