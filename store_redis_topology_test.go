package hostbreaker

// Tests of the Redis store on a Redis Cluster and behind Redis Sentinel:
// the test servers (started once per package run, as child processes, and
// stopped by TestMain), the topology cases the store tests run under
// (eachRedis, and storeKinds and eachJournalStore in helpers_test.go), URL
// parsing, hash tags, and a primary failover.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopTestProcesses()
	os.Exit(code)
}

// testProcs are the servers the tests started, killed by stopTestProcesses;
// testDirs their directories.
var testProcs struct {
	sync.Mutex
	cmds []*exec.Cmd
	dirs []string
}

// stopTestProcesses kills every server the tests started and removes their
// directories.
func stopTestProcesses() {
	testProcs.Lock()
	defer testProcs.Unlock()
	for _, c := range testProcs.cmds {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	for _, d := range testProcs.dirs {
		_ = os.RemoveAll(d)
	}
	testProcs.cmds, testProcs.dirs = nil, nil
}

// startTestProcess starts name (found on PATH, or an error) with args,
// logging to dir/log, as a child that dies with the test binary.
func startTestProcess(dir, log, name string, args ...string) (*exec.Cmd, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s is not installed (.ci/run installs it): %w", name, err)
	}
	out, err := os.Create(filepath.Join(dir, log))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	out.Close()
	testProcs.Lock()
	testProcs.cmds = append(testProcs.cmds, cmd)
	testProcs.Unlock()
	return cmd, nil
}

// testTempDir returns a new directory that stopTestProcesses removes.
func testTempDir() (string, error) {
	d, err := os.MkdirTemp("", "hostbreaker-redis-")
	if err != nil {
		return "", err
	}
	testProcs.Lock()
	testProcs.dirs = append(testProcs.dirs, d)
	testProcs.Unlock()
	return d, nil
}

// freeLoopbackPort returns a loopback TCP port that was free a moment ago.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// redisArgs are the arguments every test server takes: loopback, no
// persistence, its own directory.
func redisArgs(port int, dir string) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--loglevel", "warning"}
}

// waitFor calls cond every 20ms until it returns nil or d has passed, and
// returns its last error then.
func waitFor(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisDo runs one command on the server at addr.
func redisDo(addr string, args ...any) *redis.Cmd {
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	cmd := c.Do(ctx, args...)
	_ = cmd.Err()
	return cmd
}

// infoField returns field of the INFO section of the server at addr.
func infoField(addr, section, field string) (string, error) {
	v, err := redisDo(addr, "info", section).Text()
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(strings.NewReader(v))
	for sc.Scan() {
		if k, val, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok && k == field {
			return val, nil
		}
	}
	return "", fmt.Errorf("%s: no %s in INFO %s", addr, field, section)
}

// topology is a set of test servers started at most once per package run.
type topology struct {
	err   error
	url   string // the store URL, without a query
	took  time.Duration
	addrs []string
}

// testCluster and testSentinel are the topologies the store tests share,
// started together (in parallel) by the first test that needs one of them.
var (
	testTopologiesOnce        sync.Once
	testCluster, testSentinel topology
)

// startSharedTopologies starts testCluster and testSentinel, once.
func startSharedTopologies() {
	testTopologiesOnce.Do(func() {
		var wg sync.WaitGroup
		for top, start := range map[*topology]func() (string, []string, error){
			&testCluster: startTestCluster,
			&testSentinel: func() (string, []string, error) {
				s, err := startTestSentinel("hbprimary")
				if err != nil {
					return "", nil, err
				}
				return s.url, []string{s.primary, s.replica, s.sentinel}, nil
			},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				begin := time.Now()
				top.url, top.addrs, top.err = start()
				top.took = time.Since(begin)
			}()
		}
		wg.Wait()
	})
}

// testRedisTopologyURL returns the URL of a store on top under a prefix no
// other test uses. It fails the test when the servers could not be
// started, a binary missing included.
func testRedisTopologyURL(t *testing.T, top *topology) string {
	t.Helper()
	startSharedTopologies()
	if top.err != nil {
		t.Fatalf("!!! Redis topology not available: %v", top.err)
	}
	prefix := fmt.Sprintf("hbtest:%d-%d-%d:", os.Getpid(), time.Now().UnixNano(), testRedisSeq.Add(1))
	return top.url + "?prefix=" + url.QueryEscape(prefix)
}

// testRedisClusterURL returns the URL of a fresh store on the test cluster.
func testRedisClusterURL(t *testing.T) string { return testRedisTopologyURL(t, &testCluster) }

// testRedisSentinelURL returns the URL of a fresh store on the test
// Sentinel's primary.
func testRedisSentinelURL(t *testing.T) string { return testRedisTopologyURL(t, &testSentinel) }

// The shared topologies start, and how long that took.
func TestRedisTopologiesStart(t *testing.T) {
	startSharedTopologies()
	for name, top := range map[string]*topology{"cluster": &testCluster, "sentinel": &testSentinel} {
		if top.err != nil {
			t.Errorf("%s: %v", name, top.err)
			continue
		}
		t.Logf("%s %s started in %v", name, top.url, top.took.Round(time.Millisecond))
	}
}

// startTestCluster starts three redis-server in cluster mode, joins them
// with redis-cli --cluster create (three primaries, no replica), waits
// until every node says the cluster is ok, and returns the store URL and
// the nodes' addresses.
func startTestCluster() (string, []string, error) {
	dir, err := testTempDir()
	if err != nil {
		return "", nil, err
	}
	var addrs []string
	for i := range 3 {
		port, err := freeLoopbackPort()
		if err != nil {
			return "", nil, err
		}
		bus, err := freeLoopbackPort()
		if err != nil {
			return "", nil, err
		}
		nd := filepath.Join(dir, strconv.Itoa(i))
		if err := os.Mkdir(nd, 0o700); err != nil {
			return "", nil, err
		}
		args := append(redisArgs(port, nd), "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", filepath.Join(nd, "nodes.conf"), "--cluster-node-timeout", "2000")
		if _, err := startTestProcess(nd, "log", "redis-server", args...); err != nil {
			return "", nil, err
		}
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	for _, a := range addrs {
		if err := waitFor(5*time.Second, func() error { return redisDo(a, "ping").Err() }); err != nil {
			return "", nil, fmt.Errorf("cluster node %s: %w", a, err)
		}
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return "", nil, fmt.Errorf("redis-cli is not installed: %w", err)
	}
	create := exec.Command("redis-cli", append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, a := range addrs {
		err := waitFor(10*time.Second, func() error {
			state, err := infoFieldCluster(a)
			if err == nil && state != "ok" {
				err = fmt.Errorf("cluster_state %s", state)
			}
			return err
		})
		if err != nil {
			return "", nil, fmt.Errorf("cluster node %s: %w", a, err)
		}
	}
	return "redis+cluster://" + strings.Join(addrs, ",") + "/", addrs, nil
}

// infoFieldCluster returns the cluster_state that CLUSTER INFO of the node
// at addr reports.
func infoFieldCluster(addr string) (string, error) {
	v, err := redisDo(addr, "cluster", "info").Text()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(v, "\n") {
		if val, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster_state:"); ok {
			return val, nil
		}
	}
	return "", errors.New("no cluster_state")
}

// testSentinelSet is a primary, its replica and a Sentinel that watches
// them under a name.
type testSentinelSet struct {
	name                       string
	primary, replica, sentinel string // addresses
	primaryCmd                 *exec.Cmd
	url                        string // the store URL, without a query
}

// startTestSentinel starts a primary, a replica of it and a redis-sentinel
// (quorum 1, the primary down after 1s) that monitors the primary as name,
// and waits until the replica is in sync and the Sentinel knows both.
func startTestSentinel(name string) (*testSentinelSet, error) {
	dir, err := testTempDir()
	if err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freeLoopbackPort(); err != nil {
			return nil, err
		}
	}
	s := &testSentinelSet{name: name,
		primary: "127.0.0.1:" + strconv.Itoa(ports[0]), replica: "127.0.0.1:" + strconv.Itoa(ports[1]),
		sentinel: "127.0.0.1:" + strconv.Itoa(ports[2])}
	for _, d := range []string{"primary", "replica", "sentinel"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// No delay before the replica's first sync (5s by default).
	if s.primaryCmd, err = startTestProcess(filepath.Join(dir, "primary"), "log", "redis-server",
		append(redisArgs(ports[0], filepath.Join(dir, "primary")), "--repl-diskless-sync-delay", "0")...); err != nil {
		return nil, err
	}
	if _, err := startTestProcess(filepath.Join(dir, "replica"), "log", "redis-server",
		append(redisArgs(ports[1], filepath.Join(dir, "replica")), "--replicaof", "127.0.0.1", strconv.Itoa(ports[0]),
			"--repl-diskless-sync-delay", "0")...); err != nil {
		return nil, err
	}
	err = waitFor(10*time.Second, func() error {
		st, err := infoField(s.replica, "replication", "master_link_status")
		if err == nil && st != "up" {
			err = fmt.Errorf("master_link_status %s", st)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("replica %s: %w", s.replica, err)
	}
	sdir := filepath.Join(dir, "sentinel")
	conf := filepath.Join(sdir, "sentinel.conf")
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds %[3]s 1000\nsentinel failover-timeout %[3]s 5000\nsentinel parallel-syncs %[3]s 1\n",
		ports[2], sdir, name, ports[0])
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	if _, err := startTestProcess(sdir, "log", "redis-sentinel", conf, "--loglevel", "warning"); err != nil {
		return nil, err
	}
	err = waitFor(15*time.Second, func() error {
		if a, err := sentinelPrimary(s.sentinel, name); err != nil || a != s.primary {
			return fmt.Errorf("sentinel primary %q, %v", a, err)
		}
		v, err := redisDo(s.sentinel, "sentinel", "replicas", name).Slice()
		if err != nil {
			return err
		}
		if len(v) != 1 || !strings.Contains(fmt.Sprint(v[0]), strconv.Itoa(ports[1])) {
			return fmt.Errorf("sentinel replicas %v", v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sentinel %s: %w", s.sentinel, err)
	}
	s.url = "redis+sentinel://" + s.sentinel + "/" + name + "/0"
	return s, nil
}

// sentinelPrimary returns the address of the primary that the Sentinel at
// addr knows as name.
func sentinelPrimary(addr, name string) (string, error) {
	v, err := redisDo(addr, "sentinel", "get-master-addr-by-name", name).StringSlice()
	if err != nil {
		return "", err
	}
	if len(v) != 2 {
		return "", fmt.Errorf("get-master-addr-by-name: %v", v)
	}
	return net.JoinHostPort(v[0], v[1]), nil
}

// redisTopologyCases are the three topologies: the name of each case and
// a function that returns a fresh store URL on it.
var redisTopologyCases = []struct {
	name string
	url  func(t *testing.T) string
}{
	{"redis", testRedisURL},
	{"redis-cluster", testRedisClusterURL},
	{"redis-sentinel", testRedisSentinelURL},
}

// eachRedis runs f once per Redis topology, with a fresh store URL.
func eachRedis(t *testing.T, f func(t *testing.T, url string)) {
	for _, c := range redisTopologyCases {
		t.Run(c.name, func(t *testing.T) { f(t, c.url(t)) })
	}
}

// testRedisClient returns a go-redis client on the Redis that the store URL
// names, closed when the test ends.
func testRedisClient(t *testing.T, rawURL string) redis.UniversalClient {
	t.Helper()
	cfg, err := parseRedisStoreURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cfg.newClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedisTopologyURLParsing(t *testing.T) {
	cfg, err := parseRedisStoreURL("redis+cluster://bob:s3cret@127.0.0.1:7000,[::1]:7001,localhost:7002/?prefix=hb&read_timeout=2s&route_randomly=true")
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.cluster; c == nil || cfg.prefix != "hb:" || strings.Join(c.Addrs, ",") != "127.0.0.1:7000,[::1]:7001,localhost:7002" ||
		c.Username != "bob" || c.Password != "s3cret" || c.ReadTimeout != 2*time.Second || c.DialTimeout != redisDialTimeout ||
		!c.RouteRandomly || c.MaxRetries != redisMaxRetries || !c.ContextTimeoutEnabled || c.TLSConfig != nil {
		t.Errorf("cluster options %+v, prefix %q", c, cfg.prefix)
	}
	cfg, err = parseRedisStoreURL("rediss+cluster://h1:7000")
	if err != nil || cfg.cluster == nil || cfg.cluster.TLSConfig == nil || cfg.prefix != defaultRedisPrefix {
		t.Errorf("rediss+cluster: %+v, %v", cfg, err)
	}
	cfg, err = parseRedisStoreURL("REDIS+SENTINEL://u:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/3?prefix=x:&sentinel_password=sp&dial_timeout=1s")
	if err != nil {
		t.Fatal(err)
	}
	if f := cfg.failover; f == nil || f.MasterName != "mymaster" || f.DB != 3 || strings.Join(f.SentinelAddrs, ",") != "127.0.0.1:26379,127.0.0.1:26380" ||
		f.Username != "u" || f.Password != "pw" || f.SentinelPassword != "sp" || f.DialTimeout != time.Second ||
		f.ReadTimeout != redisIOTimeout || !f.ContextTimeoutEnabled || cfg.prefix != "x:" {
		t.Errorf("failover options %+v, prefix %q", f, cfg.prefix)
	}
	cfg, err = parseRedisStoreURL("redis+sentinel://h:26379/mymaster")
	if err != nil || cfg.failover == nil || cfg.failover.DB != 0 || cfg.failover.MasterName != "mymaster" {
		t.Errorf("sentinel without db: %+v, %v", cfg, err)
	}
	for _, bad := range []string{
		"redis+cluster://u:hunter2@h1:7000,h2/",
		"redis+cluster://u:hunter2@h1:7000,/",
		"redis+cluster://u:hunter2@h1:7000/0",
		"redis+cluster://u:hunter2@h1:70000/",
		"redis+cluster://u:hunter2@h1:7000/?bogus=1",
		"redis+cluster://u:hunter2@h1:7000/?prefix=",
		"redis+sentinel://u:hunter2@h:26379/",
		"redis+sentinel://u:hunter2@h:26379/m/0/1",
		"redis+sentinel://u:hunter2@h:26379/m/x",
		"redis+sentinel://u:hunter2@h:26379/m?bogus=1",
		"redis+ring://u:hunter2@h:1/",
		"http+cluster://u:hunter2@h:1/",
	} {
		st, err := OpenStore(bad)
		if err == nil {
			_ = st.Close()
			t.Errorf("OpenStore(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "u:xxxxx@") {
			t.Errorf("OpenStore(%q): %v: want the URL named, its password redacted", bad, err)
		}
		if _, perr := StorePath(bad); perr == nil {
			t.Errorf("StorePath(%q) accepted it", bad)
		}
	}
}

// In a cluster every key and the channel of a store carry one hash tag, the
// whole prefix (escaped), so that they share a slot; outside one, keys are
// the prefix and the name.
func TestRedisKeyBase(t *testing.T) {
	for _, c := range []struct{ prefix, single, cluster string }{
		{"hb:", "hb:", "{hb:}"},
		{"}x:", "}x:", "{%7Dx:}"},
		{"a{b}:", "a{b}:", "{a%7Bb%7D:}"},
		{"%7B:", "%7B:", "{%257B:}"},
	} {
		if got := redisKeyBase(c.prefix, false); got != c.single {
			t.Errorf("redisKeyBase(%q, false) = %q", c.prefix, got)
		}
		base := redisKeyBase(c.prefix, true)
		if base != c.cluster {
			t.Errorf("redisKeyBase(%q, true) = %q, want %q", c.prefix, base, c.cluster)
		}
		s := &redisStore{base: base}
		slot := redisSlot(s.redisKey("events"))
		for _, k := range []string{s.key(redisKindCooldowns, "a.example"), s.key(redisKindReset, "b.example:8443"),
			s.key(redisKindStates, "host-1/42"), s.redisKey(redisHostsIndex), s.redisKey(redisJournal), s.redisKey(redisOverrides)} {
			if got := redisSlot(k); got != slot {
				t.Errorf("prefix %q: key %q in slot %d, the channel in %d", c.prefix, k, got, slot)
			}
		}
	}
}

// redisSlot is the cluster slot of key, computed as Redis does (CRC16 of
// the hash tag, or of the key when it has none), independently of go-redis.
func redisSlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for _, b := range []byte(key) {
		crc ^= uint16(b) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// The cluster holds a store's keys on the node that serves the store's
// slot, with the hash tag; stores with other prefixes may be elsewhere.
func TestRedisClusterKeysInOneSlot(t *testing.T) {
	u := testRedisClusterURL(t)
	s := openTestRedis(t, u)
	now := time.Now()
	for i := range 20 {
		mustPut(t, s, Record{Host: fmt.Sprintf("h%d.example", i), Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	}
	if err := s.PublishStates(context.Background(), "p", []PublishedState{{Host: "h1.example", State: StateOpen}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, []Event{journalTestEvent("p", now, 0)}, JournalLimits{})
	mustPutOverride(t, s, "h1.example", Policy{FailMax: 3})
	c := testRedisClient(t, u).(*redis.ClusterClient)
	ctx := context.Background()
	slot := redisSlot(s.redisKey("x"))
	var mu sync.Mutex
	var keys []string
	err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		ks, err := n.Keys(ctx, globEscape(s.base)+"*").Result()
		for _, k := range ks {
			if got := int(c.ClusterKeySlot(ctx, k).Val()); got != slot {
				return fmt.Errorf("key %q in slot %d, want %d", k, got, slot)
			}
		}
		mu.Lock()
		keys = append(keys, ks...)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// 20 hashes, the hosts and sources indexes, the states, the journal,
	// the overrides, and the change log's sequence and log.
	if len(keys) != 27 {
		t.Errorf("%d keys under %s: %v", len(keys), s.base, keys)
	}
}

// The failover test: a Transport on a Sentinel-managed primary keeps every
// request going while the primary is killed and its replica promoted, and
// every cooldown it writes after the promotion reaches a second Transport.
func TestRedisSentinelFailover(t *testing.T) {
	set, err := startTestSentinel("hbfailover")
	if err != nil {
		t.Fatalf("!!! Sentinel not available: %v", err)
	}
	u := set.url + "?prefix=failover:"
	base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
		if strings.HasPrefix(req.URL.Hostname(), "cool") {
			return status(http.StatusTooManyRequests, "Retry-After", "600")(req)
		}
		return status(http.StatusOK)(req)
	})
	const poll = 100 * time.Millisecond
	a := sharedTransport(t, u, poll, base, Config{})
	b := sharedTransport(t, u, poll, newFakeHosts(status(http.StatusOK)), Config{})
	probe := openTestRedis(t, u)

	// Requests through a, all along: none may fail.
	ctx, stop := context.WithCancel(context.Background())
	var sent, failed atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://ok%d.test/", i%10), nil)
			resp, err := a.RoundTrip(req)
			sent.Add(1)
			if err != nil {
				failed.Add(1)
				t.Errorf("request failed during the failover: %v", err)
				continue
			}
			resp.Body.Close()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	// A cooldown before the failover reaches b.
	mustPass(t, do(t, &http.Client{Transport: a}, "", "https://cool-before.test/"), http.StatusTooManyRequests)
	waitVerdict(t, b, "cool-before.test", ReasonRetryAfter, bound(u, poll))

	// Kill the primary (t0); poll the Sentinel until it names the replica
	// (t1), and the store with a probe Put every 20ms until one succeeds
	// (t2).
	t0 := time.Now()
	if err := set.primaryCmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = set.primaryCmd.Wait()
	var t2 time.Time
	probeErrs := 0
	err = waitFor(30*time.Second, func() error {
		now := time.Now()
		perr := probe.Put(context.Background(), Record{Host: "probe.test", Reason: ReasonManual, Until: now.Add(time.Minute), At: now})
		if perr == nil && t2.IsZero() {
			t2 = now
		} else if perr != nil {
			probeErrs++
		}
		if addr, err := sentinelPrimary(set.sentinel, set.name); err != nil || addr != set.replica {
			return fmt.Errorf("sentinel primary %q, %v", addr, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no failover within 30s: %v", err)
	}
	t1 := time.Now()
	if t2.IsZero() || t2.Before(t1) {
		err := waitFor(30*time.Second, func() error {
			now := time.Now()
			err := probe.Put(context.Background(), Record{Host: "probe.test", Reason: ReasonManual, Until: now.Add(time.Minute), At: now})
			if err != nil {
				probeErrs++
			}
			return err
		})
		if err != nil {
			t.Fatalf("no write succeeded within 30s of the promotion: %v", err)
		}
		if t2.IsZero() {
			t2 = time.Now()
		}
	}
	t.Logf("failover timeline: primary killed at t0; replica promoted (Sentinel names it) at t0+%v; first successful write at t0+%v (%d probe writes failed)",
		t1.Sub(t0).Round(time.Millisecond), t2.Sub(t0).Round(time.Millisecond), probeErrs)

	// Every cooldown written after the promotion reaches b.
	hosts := make([]string, 10)
	for i := range hosts {
		hosts[i] = fmt.Sprintf("cool-after%d.test", i)
		mustPass(t, do(t, &http.Client{Transport: a}, "", "https://"+hosts[i]+"/"), http.StatusTooManyRequests)
	}
	var seen time.Duration
	for _, h := range hosts {
		seen = max(seen, waitVerdict(t, b, h, ReasonRetryAfter, bound(u, poll)))
	}
	t.Logf("every cooldown written after the promotion read back by the second Transport within %v", seen.Round(time.Millisecond))
	stop()
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed", n, sent.Load())
	}
	if err := waitFor(10*time.Second, func() error { return a.StoreErr() }); err != nil {
		t.Errorf("StoreErr after the failover: %v", err)
	}
	t.Logf("%d requests through the failover, none failed", sent.Load())
}
