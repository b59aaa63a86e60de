package main

// Where the load generators connect from and to. The end-to-end suite
// drives its clients from the lab's client namespace: each worker
// goroutine is locked to an OS thread that has entered that namespace, so
// every socket it opens lives there and its connects run in parallel
// (netns.NS.DialContext serialises dials on one thread, which would cap
// the connection rate it measures). When the worker returns, its thread
// goes back to this process's namespace and to the runtime's pool. It
// must not simply be discarded: a thread that exits fires the
// parent-death signal (Pdeathsig) of every child it forked, and the pool's
// threads forked Dovecot, atoll and the other contenders.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// target is what a load generator connects to.
type target struct {
	// addrs: worker w connects to addrs[w % len(addrs)].
	addrs []netip.AddrPort
	// src is the local address to connect from; zero: the kernel's choice.
	src netip.Addr
	// nsPath is the network namespace (a /run/netns file) the workers
	// run in; "": this process's.
	nsPath string
}

// loopTarget is one address in this process's namespace.
func loopTarget(a netip.AddrPort) target { return target{addrs: []netip.AddrPort{a}} }

// dial connects worker w to its address.
func (t target) dial(w int, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, FallbackDelay: -1}
	if t.src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(t.src, 0))
	}
	return d.Dial("tcp", t.addrs[w%len(t.addrs)].String())
}

// workers runs fn(0) … fn(n-1) concurrently and waits for them. With an
// nsPath each runs on its own OS thread inside that namespace; an error
// entering it is returned (fn not run).
func (t target) workers(n int, fn func(w int)) error {
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for w := range n {
		wg.Go(func() {
			if t.nsPath != "" {
				runtime.LockOSThread()
				restore, err := enterNetns(t.nsPath)
				if err != nil {
					runtime.UnlockOSThread()
					once.Do(func() { firstErr = err })
					return
				}
				defer func() {
					// Back home, or (should that fail) the thread stays
					// locked and dies with this goroutine.
					if restore() == nil {
						runtime.UnlockOSThread()
					}
				}()
			}
			fn(w)
		})
	}
	wg.Wait()
	return firstErr
}

// enterNetns moves the calling (locked) thread into the network
// namespace at path; restore moves it back to the one it was in.
func enterNetns(path string) (restore func() error, err error) {
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		orig.Close()
		return nil, err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		orig.Close()
		return nil, fmt.Errorf("setns %s: %w", path, err)
	}
	return func() error {
		defer orig.Close()
		return unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET)
	}, nil
}
