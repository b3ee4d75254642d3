package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// startCluster starts a Redis Cluster of three primaries (no replica) as
// child processes on free loopback ports, for the hostbreaker+cluster
// variant of scenarios 7 and 13, and returns its store URL (prefix hb:)
// and a function that stops it and removes its files. It needs
// redis-server and redis-cli on PATH.
func startCluster() (string, func(), error) {
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			return "", nil, fmt.Errorf("%s is not installed: %w", bin, err)
		}
	}
	dir, err := os.MkdirTemp("", "hostbreaker-bench-cluster-")
	if err != nil {
		return "", nil, err
	}
	var cmds []*exec.Cmd
	stop := func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
		os.RemoveAll(dir)
	}
	var addrs []string
	for i := range 3 {
		port, err1 := freeLoopbackPort()
		bus, err2 := freeLoopbackPort()
		if err := errors.Join(err1, err2); err != nil {
			stop()
			return "", nil, err
		}
		nd := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Mkdir(nd, 0o700); err != nil {
			stop()
			return "", nil, err
		}
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
			"--appendonly", "no", "--dir", nd, "--loglevel", "warning",
			"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", filepath.Join(nd, "nodes.conf"), "--cluster-node-timeout", "2000")
		if err := cmd.Start(); err != nil {
			stop()
			return "", nil, fmt.Errorf("redis-server: %w", err)
		}
		cmds = append(cmds, cmd)
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	for _, a := range addrs {
		if err := waitUntil(5*time.Second, func() error { return nodeDo(a, "ping").Err() }); err != nil {
			stop()
			return "", nil, fmt.Errorf("cluster node %s: %w", a, err)
		}
	}
	create := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		stop()
		return "", nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		err := waitUntil(10*time.Second, func() error {
			v, err := nodeDo(a, "cluster", "info").Text()
			if err == nil && !strings.Contains(v, "cluster_state:ok") {
				err = errors.New("cluster_state is not ok")
			}
			return err
		})
		if err != nil {
			stop()
			return "", nil, fmt.Errorf("cluster node %s: %w", a, err)
		}
	}
	return "redis+cluster://" + strings.Join(addrs, ",") + "/?prefix=hb:", stop, nil
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 a moment ago.
func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitUntil calls cond every 20 ms until it returns nil or d has passed,
// and returns its last error then.
func waitUntil(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nodeDo runs one command on the Redis node at addr.
func nodeDo(addr string, args ...any) *redis.Cmd {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cmd := c.Do(ctx, args...)
	_ = cmd.Err()
	return cmd
}
