package hostbreaker

// Tests of the Transport's side of the store: cooldowns, resets, trips and
// tuned overrides shared between Transports and processes, through bbolt
// and Redis, and what a store outage or a required store does.

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestSharedCooldownsResetsAndRestarts(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		const poll = 200 * time.Millisecond
		base := newFakeHosts(status(200))
		a := sharedTransport(t, url, poll, base, quick(2, time.Hour))
		b := sharedTransport(t, url, poll, base, quick(2, time.Hour))

		// Retry-After learnt by a reaches b.
		base.set(status(429, "Retry-After", "120"))
		if v := verdict(a, "ra.test", RoleMetadata); v != "" {
			t.Fatalf("first request rejected: %s", v)
		}
		base.set(status(200))
		waitVerdict(t, b, "ra.test", ReasonRetryAfter, bound(url, poll))

		// A manual open by a reaches b.
		a.Open("manual.test", time.Hour, "maintenance")
		waitVerdict(t, b, "manual.test", ReasonManual, bound(url, poll))
		if s := stateOf(t, b, "manual.test", ""); s.Note != "maintenance" {
			t.Errorf("note not shared: %+v", s)
		}

		// A reset by a reaches b, even where b's own breaker is open.
		a.Reset("manual.test")
		waitVerdict(t, b, "manual.test", "", bound(url, poll))
		base.set(status(500))
		verdict(b, "manual.test", RoleLanding)
		verdict(b, "manual.test", RoleLanding)
		if v := verdict(b, "manual.test", RoleLanding); v != ReasonBreakerOpen {
			t.Fatalf("b's breaker: %q, want open", v)
		}
		a.Reset("manual.test")
		base.set(status(200))
		deadline := time.Now().Add(bound(url, poll))
		for verdict(b, "manual.test", RoleLanding) != "" {
			if time.Now().After(deadline) {
				t.Fatal("reset did not close b's open breaker in time")
			}
			time.Sleep(time.Millisecond)
		}

		// A new Transport after a restart still rejects ra.test, with the
		// right remaining time.
		a.Close()
		c := sharedTransport(t, url, poll, base, quick(2, time.Hour))
		req, _ := http.NewRequest(http.MethodGet, "https://ra.test/", nil)
		_, err := c.RoundTrip(req)
		oe := mustReject(t, err, ReasonRetryAfter)
		if left := time.Until(oe.Until); left < 110*time.Second || left > 120*time.Second {
			t.Errorf("remaining cooldown after restart = %v, want about 120s", left)
		}
	})
}

func TestLocalTripsStayLocalUnlessShared(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		const poll = 100 * time.Millisecond
		base := newFakeHosts(status(500))
		a := sharedTransport(t, url, poll, base, quick(1, time.Hour))
		b := sharedTransport(t, url, poll, newFakeHosts(status(200)), quick(1, time.Hour))
		verdict(a, "trip.test", RoleArtifact)
		if v := verdict(a, "trip.test", RoleArtifact); v != ReasonBreakerOpen {
			t.Fatalf("a did not trip: %q", v)
		}
		time.Sleep(3 * poll)
		if v := verdict(b, "trip.test", RoleArtifact); v != "" {
			t.Fatalf("a local trip reached b: %q", v)
		}

		cfg := quick(1, time.Hour)
		cfg.Store.ShareTrips = true
		c := sharedTransport(t, url, poll, base, cfg)
		verdict(c, "shared-trip.test", RoleArtifact)
		deadline := time.Now().Add(bound(url, poll))
		for verdict(b, "shared-trip.test", RoleArtifact) != ReasonBreakerOpen {
			if time.Now().After(deadline) {
				t.Fatal("shared trip did not reach b")
			}
			time.Sleep(time.Millisecond)
		}
		if v := verdict(b, "shared-trip.test", RoleLanding); v != "" {
			t.Errorf("a shared trip of one role closed another: %q", v)
		}
	})
}

// TestPropagationLatency measures how soon a cooldown set by one Transport
// is honoured by another on the same store, and logs the figures. With
// Redis the poll interval is an hour, so only the change signal (pub/sub)
// can carry a cooldown within the bound; with bbolt, the next poll does.
// The bounds are generous on purpose: on a loaded 2-core machine fsyncs and
// goroutines are delayed by tens of milliseconds, so latencies are logged,
// not asserted.
func TestPropagationLatency(t *testing.T) {
	for _, tc := range []struct {
		kind  string
		poll  time.Duration
		n     int
		bound time.Duration // per cooldown
	}{
		{"redis", time.Hour, 200, 10 * time.Second},
		{"bbolt", time.Second, 4, time.Second + 10*time.Second},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			url := filepath.Join(t.TempDir(), "hb.db")
			if tc.kind == "redis" {
				url = testRedisURL(t)
			}
			base := newFakeHosts(status(200))
			a := sharedTransport(t, url, tc.poll, base, Config{})
			b := sharedTransport(t, url, tc.poll, base, Config{})
			var lat []time.Duration
			for i := range tc.n {
				host := fmt.Sprintf("lat%d.test", i)
				a.Open(host, time.Hour, "")
				start := time.Now()
				for b.reg.host(host) == nil || !b.reg.host(host).coolingDown(b.now()) {
					if time.Since(start) > tc.bound {
						t.Fatalf("%s not shared within %v (poll %v)", host, tc.bound, tc.poll)
					}
					time.Sleep(100 * time.Microsecond)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			p50, p99 := lat[len(lat)/2], lat[(len(lat)*99)/100]
			t.Logf("%s propagation over %d cooldowns (poll %v): p50 %v, p99 %v, max %v", tc.kind, tc.n, tc.poll, p50, p99, lat[len(lat)-1])
		})
	}
}

func TestWithStoreWinsOverConfig(t *testing.T) {
	s, err := OpenStore(filepath.Join(t.TempDir(), "hb.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	missing := filepath.Join(t.TempDir(), "no-such-dir", "hb.db")
	cfg := Config{Store: StoreConfig{URL: missing, Required: true}}
	if _, err := NewTransport(nil, WithConfig(cfg)); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("store that cannot be opened: %v", err)
	}
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg), WithStore(s))
	if err != nil {
		t.Fatal(err)
	}
	tr.Open("x.test", time.Hour, "")
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	// Close flushed the open to the store, and left the store open.
	recs, err := s.Records(context.Background())
	if err != nil || len(recs) != 1 || recs[0].Host != "x.test" || recs[0].Reason != ReasonManual {
		t.Fatalf("Records = %+v, %v", recs, err)
	}
}

// TestBoltLockHeldNeverFailsRequests holds the bbolt file's lock the way a
// stuck process would: requests keep flowing, and sharing resumes after.
func TestBoltLockHeldNeverFailsRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	const poll = 100 * time.Millisecond
	base := newFakeHosts(status(200))
	a := sharedTransport(t, path, poll, base, Config{})
	b := sharedTransport(t, path, poll, base, Config{})
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a.Open("held.test", time.Hour, "")
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		if v := verdict(a, "ok.test", ""); v != "" {
			t.Fatalf("request failed while the store was locked: %s", v)
		}
	}
	if a.sh.errors.Load() == 0 {
		t.Error("no store error counted while the file was locked")
	}
	db.Close()
	waitVerdict(t, b, "held.test", ReasonManual, poll+time.Second)
}

// TestRedisOutageNeverFailsRequests kills a Redis server under two
// Transports in the middle of traffic and restarts it.
func TestRedisOutageNeverFailsRequests(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server not on PATH")
		}
		t.Skip("!!! redis-server not on PATH — outage test NOT RUN !!!")
	}
	srv := &redisServer{t: t, port: freePort(t), dir: t.TempDir()}
	srv.start()
	t.Cleanup(srv.stop)
	url := fmt.Sprintf("redis://127.0.0.1:%d/0?prefix=outage:", srv.port)
	const poll = 100 * time.Millisecond
	base := newFakeHosts(status(200))
	a := sharedTransport(t, url, poll, base, Config{})
	b := sharedTransport(t, url, poll, base, Config{})

	var failed, sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tr := a
				if w%2 == 1 {
					tr = b
				}
				if v := verdict(tr, fmt.Sprintf("busy%d.test", i%10), RoleMetadata); v != "" {
					failed.Add(1)
				}
				sent.Add(1)
				time.Sleep(time.Millisecond)
			}
		})
	}
	a.Open("before.test", time.Hour, "")
	waitVerdict(t, b, "before.test", ReasonManual, time.Second)

	srv.stop()
	a.Open("during.test", time.Hour, "set while Redis is down")
	time.Sleep(time.Second)
	if a.sh.errors.Load() == 0 {
		t.Error("no store error counted while Redis was down")
	}
	if v := verdict(b, "during.test", ""); v != "" {
		t.Fatalf("b saw during.test with Redis down: %q", v)
	}
	srv.start()
	// a writes what it could not, b resyncs: no restart needed.
	waitVerdict(t, b, "during.test", ReasonManual, 5*time.Second)
	a.Open("after.test", time.Hour, "")
	waitVerdict(t, b, "after.test", ReasonManual, time.Second)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed because of the outage", failed.Load(), sent.Load())
	}
	t.Logf("%d requests, none failed; %d store errors counted", sent.Load(), a.sh.errors.Load()+b.sh.errors.Load())
}

// TestCrossProcess runs a second process (this test binary) with its own
// Transport on the same store, and checks that cooldowns and resets set
// here reach it, and the other way round.
func TestCrossProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	storeKinds(t, func(t *testing.T, url string) {
		const poll = 200 * time.Millisecond
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrossProcessChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HOSTBREAKER_CHILD_STORE="+url)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			stdin.Close()
			cmd.Wait()
		}()
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		expect := func(want string, within time.Duration) {
			t.Helper()
			timeout := time.After(within)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("child exited before %q", want)
					}
					if l == want {
						return
					}
				case <-timeout:
					t.Fatalf("child did not say %q within %v", want, within)
				}
			}
		}
		expect("ready", 10*time.Second)
		base := newFakeHosts(status(200))
		a := sharedTransport(t, url, poll, base, Config{})
		a.Open("x.test", time.Hour, "")
		expect("x.test manual", bound(url, poll))
		a.Reset("x.test")
		expect("x.test ok", bound(url, poll))
		base.set(status(503, "Retry-After", "600"))
		verdict(a, "x.test", RoleLanding)
		expect("x.test retry-after", bound(url, poll))
		// The child opens y.test in its process; this one must see it.
		fmt.Fprintln(stdin, "open y.test")
		waitVerdict(t, a, "y.test", ReasonManual, 2*bound(url, poll))
	})
}

// TestCrossProcessChild is the child of TestCrossProcess: it reports each
// change of its verdict for x.test and opens the hosts it is told to.
func TestCrossProcessChild(t *testing.T) {
	url := os.Getenv("HOSTBREAKER_CHILD_STORE")
	if url == "" {
		t.Skip("child process only")
	}
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: url, PollInterval: 200 * time.Millisecond}}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
		close(cmds)
	}()
	fmt.Println("ready")
	last := Reason("?")
	for {
		select {
		case c, ok := <-cmds:
			if !ok {
				return
			}
			if host, ok := strings.CutPrefix(c, "open "); ok {
				tr.Open(host, time.Hour, "from the child")
			}
		case <-time.After(time.Millisecond):
		}
		if v := verdict(tr, "x.test", ""); v != last {
			last = v
			word := string(v)
			if v == "" {
				word = "ok"
			}
			fmt.Println("x.test " + word)
		}
	}
}

// TestSharingInsideASyncTestBubble shows that Transports sharing a bbolt
// store work on a fake clock: b honours a's cooldown after one poll
// interval, and both forget it when it ends.
func TestSharingInsideASyncTestBubble(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(status(200))
		a := sharedTransport(t, path, time.Second, base, Config{})
		b := sharedTransport(t, path, time.Second, base, Config{})
		a.Open("bubble.test", time.Minute, "")
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		if v := verdict(b, "bubble.test", ""); v != ReasonManual {
			t.Fatalf("after one poll: %q, want manual", v)
		}
		time.Sleep(time.Minute)
		if v := verdict(b, "bubble.test", ""); v != "" {
			t.Fatalf("after the cooldown: %q", v)
		}
	})
}

// A store that cannot be reached is visible without a logger, and
// required makes NewTransport fail.
func TestStoreErrAndRequired(t *testing.T) {
	dead := "redis://127.0.0.1:1/0?prefix=dead:"
	if _, err := NewTransport(nil, WithConfig(Config{Store: StoreConfig{URL: dead, Required: true}})); err == nil {
		t.Fatal("required store that cannot be read: NewTransport succeeded")
	}
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: dead}}))
	if err != nil {
		t.Fatal(err)
	}
	if tr.StoreErr() == nil {
		t.Error("StoreErr = nil with a dead store")
	}
	mustPass(t, do(t, &http.Client{Transport: tr}, "", "https://a.test/"), 200)
	tr.Close()

	missing := t.TempDir() + "/no/such/dir/hb.db"
	tr, err = NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: missing}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.StoreErr(); err == nil || !strings.Contains(err.Error(), "no/such/dir") {
		t.Errorf("StoreErr = %v", err)
	}
	tr.Close()

	tr, err = NewTransport(newFakeHosts(status(200)), WithConfig(Config{Store: StoreConfig{URL: testRedisURL(t), Required: true}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.StoreErr(); err != nil {
		t.Errorf("StoreErr = %v with a live store", err)
	}
	tr.Close()
}

// A reset read from the store clears only what was decided at or
// before it: a local cooldown set after the reset survives the next poll.
func TestRemoteResetKeepsNewerLocalCooldown(t *testing.T) {
	// bbolt, polled only when the test says: no change signal reaches t2
	// before its cooldown is set.
	path := filepath.Join(t.TempDir(), "hb.db")
	cfg := Config{Store: StoreConfig{URL: path, PollInterval: time.Hour}}
	t1, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Close()
	t2, err := NewTransport(newFakeHosts(status(429, "Retry-After", "600")), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Close()
	ctx := context.Background()
	resetAt := func() time.Time { // the reset marker's At, once written
		s, err := OpenStore(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		recs, _ := s.Records(ctx)
		for _, r := range recs {
			if r.Reason == ReasonReset {
				return r.At
			}
		}
		return time.Time{}
	}
	waitReset := func(after time.Time) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !resetAt().After(after); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the reset never reached the store")
			}
		}
	}
	if err := t1.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
	waitReset(time.Time{})
	first := resetAt()
	c2 := &http.Client{Transport: t2}
	mustPass(t, do(t, c2, "", "https://a.test/"), 429) // decided after the reset
	if err := t2.pull(ctx); err != nil {
		t.Fatal(err)
	}
	mustReject(t, do(t, c2, "", "https://a.test/").err, ReasonRetryAfter)
	// A reset decided after the cooldown clears it.
	if err := t1.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
	waitReset(first)
	if err := t2.pull(ctx); err != nil {
		t.Fatal(err)
	}
	if r := do(t, c2, "", "https://a.test/"); r.err != nil {
		t.Fatalf("after a newer reset: %v", r.err)
	}
}

// A shared trip of the no-role breaker and a host-wide
// Retry-After cooldown are different records, through the queue and the
// store, and both reach another process.
func TestNoRoleTripKeepsHostCooldown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour},
		Store: StoreConfig{URL: path, PollInterval: time.Hour, ShareTrips: true}}
	t1, err := NewTransport(newFakeHosts(status(429, "Retry-After", "600")), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t2, err := NewTransport(newFakeHosts(status(500)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	mustPass(t, do(t, &http.Client{Transport: t1}, "", "https://a.test/"), 429)
	mustPass(t, do(t, &http.Client{Transport: t2}, "", "https://a.test/"), 500) // trips t2's "" breaker
	t1.Close()
	t2.Close() // both flush
	s, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, err := s.Records(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var cooldown, trip bool
	for _, r := range recs {
		cooldown = cooldown || r.Host == "a.test" && r.Role == "" && r.Reason == ReasonRetryAfter
		trip = trip || r.Host == "a.test" && r.Role == "" && r.Reason == ReasonBreakerOpen
	}
	if !cooldown || !trip {
		t.Fatalf("records = %+v, want the host's retry-after cooldown and the no-role trip", recs)
	}
	t3, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer t3.Close()
	c3 := &http.Client{Transport: t3}
	mustReject(t, do(t, c3, RoleArtifact, "https://a.test/").err, ReasonRetryAfter) // host-wide
	if err := t3.Reset("a.test"); err != nil {
		t.Fatal(err)
	}
}

// Tune's overrides reach a running Transport through the store: applied
// live, breaker state kept, a policy change event, and a revert brings the
// configuration's values back.
func TestTunedOverridesApplyLive(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		var got eventLog
		cfg := Config{Defaults: Policy{FailMax: 2, ResetTimeout: time.Hour, HalfOpenJitter: -1},
			Store: StoreConfig{URL: url, PollInterval: 50 * time.Millisecond}}
		tr, err := NewTransport(newFakeHosts(status(500)), WithConfig(cfg), WithEventHandler(got.add))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		c := &http.Client{Transport: tr}
		do(t, c, RoleLanding, "https://a.test/")
		do(t, c, RoleLanding, "https://a.test/")
		mustState(t, tr, "a.test", RoleLanding, StateOpen)

		s, err := OpenStore(url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx := context.Background()
		advice := []Advice{{Host: "a.test", Role: RoleLanding, Key: "reset_timeout", Current: "1h0m0s", Proposed: "2m", Reason: "test"},
			{Host: "a.test", Key: "fail_max", Current: "2", Proposed: "4", Reason: "test"}}
		if _, err := Tune(ctx, s, advice, cfg, "live"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitPolicy := func(role string, ok func(Policy) bool) {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				p, _ := tr.Policy("a.test", role)
				if ok(p) {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("policy of (a.test, %q) = %+v", role, p)
				}
			}
		}
		waitPolicy(RoleLanding, func(p Policy) bool { return p.ResetTimeout == 2*time.Minute && p.FailMax == 4 })
		t.Logf("%s: a tuned override applied after %v", url[:5], time.Since(start))
		mustState(t, tr, "a.test", RoleLanding, StateOpen) // state kept
		if p, _ := tr.Policy("a.test", ""); p.ResetTimeout != time.Hour || p.FailMax != 4 {
			t.Fatalf("the no-role policy = %+v", p)
		}
		if err := RevertTuning(ctx, s, "all", "back"); err != nil {
			t.Fatal(err)
		}
		waitPolicy(RoleLanding, func(p Policy) bool { return p.ResetTimeout == time.Hour && p.FailMax == 2 })
		mustState(t, tr, "a.test", RoleLanding, StateOpen)
		tr.Close()
		var applied int
		for _, ev := range got.named(EventPolicyChange) {
			if ev.Host == "a.test" && ev.Remote {
				applied++
			}
		}
		if applied != 2 { // the tune and the revert
			t.Errorf("policy changes applied from the store = %d, want 2", applied)
		}
	})
}

// The fleet's learnt limit (pullFleetRates): one fact per host, divided
// among the processes sending to it, expiring fleet-wide, and never taken
// from a row dated in the future.

// rateOf returns tr's paced rate of host (Status.Rate), 0 when it does
// not pace it.
func rateOf(tr *Transport, host string) float64 {
	for _, s := range tr.Snapshot() {
		if s.Host == host {
			return s.Rate
		}
	}
	return 0
}

// sharedTransportWith returns a Transport over base with opts (a store
// given by WithStore, or a Config with a store URL) and closes it when the
// test ends.
func sharedTransportWith(t *testing.T, base http.RoundTripper, opts ...Option) *Transport {
	t.Helper()
	tr, err := NewTransport(base, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

// keepSending sends one request to host through each of trs every
// interval until ctx ends; the returned function waits for the senders.
func keepSending(ctx context.Context, trs []*Transport, host string, interval time.Duration) (wait func()) {
	var wg sync.WaitGroup
	for _, tr := range trs {
		wg.Go(func() {
			for ctx.Err() == nil {
				send(ctx, tr, host)
				select {
				case <-ctx.Done():
				case <-time.After(interval):
				}
			}
		})
	}
	return wg.Wait
}

// TestFleetLimitExpiresFleetWide: one 429 (without Retry-After) to one of
// two or five processes sharing a bbolt file, then an hour of success with
// every process sending: every process paces the host until 15 minutes
// after the throttle, and none paces it from 15 minutes (and a poll) after
// it on. Before, a process whose limit expired re-adopted another's row
// with the old throttle time, and the share (total/(n+1), counting its own
// dropped rate as 0) halved at each re-adoption: 3.5/1.75 r/s after 15
// minutes, 0.5/0.5 after an hour.
func TestFleetLimitExpiresFleetWide(t *testing.T) {
	for _, n := range []int{2, 5} {
		t.Run(map[int]string{2: "2 processes", 5: "5 processes"}[n], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			synctest.Test(t, func(t *testing.T) { fleetExpiry(t, n, path) })
		})
	}
}

func fleetExpiry(t *testing.T, n int, url string) {
	fleetExpiryOn(t, n, func(poll time.Duration) []Option {
		return []Option{WithConfig(Config{Store: StoreConfig{URL: url, PollInterval: poll}})}
	})
}

// fleetExpiryOn runs TestFleetLimitExpiresFleetWide with n Transports on
// the store that opts gives each, to poll every poll.
func fleetExpiryOn(t *testing.T, n int, opts func(poll time.Duration) []Option) {
	const host, poll = "api.test", 5 * time.Second
	var throttledAt time.Time
	var mu sync.Mutex
	base := newSendLog()
	base.next = func(i int) (int, http.Header) {
		if i == 0 {
			mu.Lock()
			throttledAt = time.Now()
			mu.Unlock()
			return http.StatusTooManyRequests, http.Header{}
		}
		return 0, nil
	}
	trs := make([]*Transport, n)
	for i := range trs {
		trs[i] = sharedTransportWith(t, base, opts(poll)...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := keepSending(ctx, trs, host, time.Second)
	defer func() { cancel(); wait() }()

	// Every process paces the host once the fleet's limit reached it.
	time.Sleep(3 * poll)
	for i, tr := range trs {
		if rateOf(tr, host) == 0 {
			t.Fatalf("process %d does not pace %s %v after the throttle", i, host, 3*poll)
		}
	}
	mu.Lock()
	at := throttledAt
	mu.Unlock()
	// Still paced a poll before the 15 minutes are up.
	time.Sleep(time.Until(at.Add(15*time.Minute - poll)))
	for i, tr := range trs {
		if rateOf(tr, host) == 0 {
			t.Errorf("process %d stopped pacing %s before the 15 minutes were up", i, host)
		}
	}
	for _, after := range []time.Duration{15*time.Minute + 2*poll, 30 * time.Minute, 45 * time.Minute, 60 * time.Minute} {
		time.Sleep(time.Until(at.Add(after)))
		for i, tr := range trs {
			if r := rateOf(tr, host); r != 0 {
				t.Errorf("%v after the only throttle, process %d paces %s at %.3f r/s, want unlimited", after, i, host, r)
			}
		}
	}
}

// TestFleetLimitExpiresFleetWideRedis is TestFleetLimitExpiresFleetWide
// with the processes sharing Redis. A bubble cannot hold the store's
// subscription (a goroutine blocked reading the network is not durably
// blocked, so the fake clock would never move): the store is opened
// outside it, and the Transports in it poll it without its change signal.
func TestFleetLimitExpiresFleetWideRedis(t *testing.T) {
	for _, n := range []int{2, 5} {
		t.Run(map[int]string{2: "2 processes", 5: "5 processes"}[n], func(t *testing.T) {
			s, err := OpenStore(testRedisURL(t))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			synctest.Test(t, func(t *testing.T) {
				fleetExpiryOn(t, n, func(poll time.Duration) []Option {
					return []Option{WithConfig(Config{Store: StoreConfig{PollInterval: poll}}), WithStore(pollOnly{s})}
				})
			})
		})
	}
}

// pollOnly is a Store that gives no change signal: Transports poll it. It
// keeps the store's poll.
type pollOnly struct{ Store }

func (pollOnly) Changes() <-chan struct{} { return nil }

func (p pollOnly) poll(ctx context.Context) (storePoll, error) { return readPoll(ctx, p.Store) }

// TestFleetJoinersDoNotOvershoot: A learns a host's limit L from a 429;
// then B, C and D start and send to the host too. Once each joiner has
// polled the store, the processes' paced rates add up to at most 1.1 × L
// at every instant, whoever joined last. Before, each joiner took the
// others' total divided by n+1 while A kept all of its rate: 4 processes
// paced up to 2.5 × the host's limit.
func TestFleetJoinersDoNotOvershoot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		const host, poll = "api.test", time.Second
		base := newSendLog()
		base.next = func(i int) (int, http.Header) {
			if i == 20 || i == 21 {
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		opts := []Option{WithConfig(Config{Store: StoreConfig{URL: path, PollInterval: poll}})}
		a := sharedTransportWith(t, base, opts...)
		// Two throttles 3 s apart: after the second, A is past its slow
		// start, and paces at or under its last max while it sends little.
		for range 21 {
			send(context.Background(), a, host)
		}
		time.Sleep(3 * time.Second)
		send(context.Background(), a, host)
		limit := a.reg.host(host).lim.Load().status().lastMax
		if limit <= 0 {
			t.Fatal("A learnt no limit")
		}
		ctx, cancel := context.WithCancel(context.Background())
		// The processes send slowly: a limiter probes past its last max by
		// up to twice the rate it measures itself sending, which is the
		// limiter's own learning (ratelimit.go), the same alone as in a
		// fleet; sending slowly keeps it out of what is measured here, the
		// division of the limit.
		const every = 4 * time.Second
		waits := []func(){keepSending(ctx, []*Transport{a}, host, every)}
		defer func() {
			cancel()
			for _, w := range waits {
				w()
			}
		}()
		time.Sleep(2 * poll) // A publishes its fact
		trs := []*Transport{a}
		peak := 0.0
		for _, name := range []string{"B", "C", "D"} {
			j := sharedTransportWith(t, base, opts...)
			trs = append(trs, j)
			waits = append(waits, keepSending(ctx, []*Transport{j}, host, every))
			time.Sleep(poll + time.Millisecond) // the joiner has polled once
			for range 100 {                     // 10 s, sampled every 100 ms
				var sum float64
				for _, tr := range trs {
					sum += rateOf(tr, host)
				}
				peak = max(peak, sum)
				if sum > 1.1*limit {
					t.Fatalf("after %s joined: the fleet paces %.3f r/s in all, over 1.1 × the learnt limit %.3f", name, sum, limit)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		var rates []float64
		for _, tr := range trs {
			rates = append(rates, rateOf(tr, host))
		}
		t.Logf("limit %.3f r/s; peak of the fleet's total %.3f; rates at the end %.3f", limit, peak, rates)
		var sum float64
		for _, r := range rates {
			sum += r
		}
		if sum < 0.9*limit {
			t.Errorf("at the end the fleet paces %.3f r/s in all, under 0.9 × the limit %.3f: a ratchet?", sum, limit)
		}
	})
}

// TestFleetRowsFromTheFutureAreRefused: rows of the store are untrusted. A
// row whose fleet limit (1e6 r/s) was learnt an hour in the future is
// refused, counted and logged, and its process keeps its own learning; a
// row dated 30 s ahead (within the clock skew allowed) counts from when it
// was read, so a later throttle of this process wins over it and it is
// never adopted again; a limit outside the bounds of a rate is dropped
// when decoded. Before, the future row won every comparison: the process
// went back to 500,002 r/s at each poll after each of its own throttles.
func TestFleetRowsFromTheFutureAreRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		const host, poll = "api.test", time.Second
		var throttle sync.Map // request numbers answered with 429
		base := newSendLog()
		base.next = func(i int) (int, http.Header) {
			if _, ok := throttle.Load(i); ok || i == 20 {
				return http.StatusTooManyRequests, http.Header{}
			}
			return 0, nil
		}
		var logs logBuffer
		tr := sharedTransportWith(t, base, WithConfig(Config{Store: StoreConfig{URL: path, PollInterval: poll}}),
			WithLogger(logs.logger()))
		store, err := OpenStore(path)
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		hostile := func(ahead time.Duration, limit float64) {
			t.Helper()
			err := store.PublishStates(context.Background(), "evil", []PublishedState{{
				Host: host, State: StateClosed, Rate: 1e6, LastMax: 1e6, Throttled: time.Now().Add(ahead),
				FleetLimit: limit, FleetThrottled: time.Now().Add(ahead), FleetSource: "evil", Sending: true,
			}}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
		}
		for range 21 {
			send(context.Background(), tr, host)
		}
		own := rateOf(tr, host)
		if own <= 0 || own > 100 {
			t.Fatalf("the process learnt %.3f r/s from its throttle", own)
		}

		hostile(time.Hour, 1e6)
		time.Sleep(3 * poll)
		if r := rateOf(tr, host); r > 100 {
			t.Errorf("a row dated an hour ahead was adopted: %.0f r/s", r)
		}
		if n := tr.sh.errOps[opUntrusted].Load(); n == 0 {
			t.Error("the row dated an hour ahead was not counted")
		}
		if logs.count("dated in the future") == 0 {
			t.Error("the row dated an hour ahead was not logged")
		}

		// Out of bounds: dropped by the decoder, whenever it is dated.
		hostile(0, 2*maxRate)
		time.Sleep(3 * poll)
		if r := rateOf(tr, host); r > 100 {
			t.Errorf("a limit of 2e6 r/s was adopted: %.0f r/s", r)
		}

		// 30 s ahead: taken (a clock may be that wrong), as of when read.
		hostile(30*time.Second, 1e6)
		time.Sleep(3 * poll)
		if r := rateOf(tr, host); r < 1000 {
			t.Fatalf("a limit dated 30 s ahead was not taken: %.3f r/s", r)
		}
		// A throttle of this process, later: it learns from it, and the
		// row does not win again at the polls that follow (nor once its
		// time has come).
		throttle.Store(len(base.sent()), true)
		send(context.Background(), tr, host)
		learnt := rateOf(tr, host)
		if learnt >= 1e5 {
			t.Fatalf("the process did not learn from its own throttle: %.0f r/s", learnt)
		}
		time.Sleep(40 * time.Second)
		if r := rateOf(tr, host); r > 2*learnt {
			t.Errorf("after the process's own throttle, it went back to %.0f r/s (it learnt %.3f)", r, learnt)
		}
	})
}

// TestFleetHoldsAgreeingFacts: a process that sends to a host under the
// fleet's learnt limit adopts each new fact another process publishes.
// When the fact's source says it is known (it agreed with the one before
// it: 10 and then 9.5 r/s), the process holds the limit as one process
// alone holds a limit its last two throttles agreed on: at it for 10 s,
// where it would have probed past it by then. A fact its source does not
// say is known is probed past, whatever the reader saw before it: the
// source decides for every process, so that they hold or probe alike.
func TestFleetHoldsAgreeingFacts(t *testing.T) {
	for _, c := range []struct {
		name   string
		second float64
		known  bool // the source says the second fact is known
		tw     fleetTweaks
		hold   bool
	}{
		{"known", 9.5, true, fleetTweaks{}, true},
		{"known, without holding", 9.5, true, fleetTweaks{noFleetKnown: true}, false},
		{"not known", 9.5, false, fleetTweaks{}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			synctest.Test(t, func(t *testing.T) {
				const host, poll = "api.test", time.Second
				b := sharedTransportWith(t, cannedBase(http.StatusOK),
					WithConfig(Config{Store: StoreConfig{URL: path, PollInterval: poll}}), withFleetTweaks(c.tw))
				peer, err := OpenStore(path)
				if err != nil {
					t.Fatal(err)
				}
				defer peer.Close()
				publish := func(limit float64, known bool) {
					t.Helper()
					if err := peer.PublishStates(context.Background(), "peer", []PublishedState{{
						Host: host, State: StateClosed, FleetLimit: limit, FleetThrottled: time.Now(), FleetSource: "peer", FleetKnown: known,
					}}, time.Hour); err != nil {
						t.Fatal(err)
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				publish(10, false)
				wait := keepSending(ctx, []*Transport{b}, host, 20*time.Millisecond)
				defer func() { cancel(); wait() }()
				time.Sleep(5 * time.Second)
				publish(c.second, c.known)
				time.Sleep(2 * poll) // B adopted it
				lim := b.reg.host(host).lim.Load()
				adopted := lim.status().lastMax
				time.Sleep(8 * time.Second) // past the CUBIC window of a fact of 5 to 10 r/s
				rate := rateOf(b, host)
				t.Logf("adopted %.2f r/s; 8 s later paced at %.2f r/s", adopted, rate)
				if held := rate <= adopted*1.001; held != c.hold {
					t.Errorf("8 s after adopting %.2f r/s B paces %.2f r/s: held %v, want %v", adopted, rate, held, c.hold)
				}
			})
		})
	}
}

// publishPeers publishes, through the store handle peer, rows of n
// processes ("p1" to "pn") sending to host at rate each, served at served
// each (PublishedState.Served), and, from p1, the fleet's fact limit
// learnt now, not known, and the bracket of the fleet's start if start.
func publishPeers(t *testing.T, peer Store, host string, n int, rate, served, limit float64, start bool) {
	t.Helper()
	publishPeersAt(t, peer, host, n, rate, served, limit, start, time.Now())
}

// publishedFact returns a row of host that peer reads whose fleet fact
// is not the one publishPeers gave p1: the fact B published (zero if none).
func publishedFact(t *testing.T, peer Store, host string) PublishedState {
	t.Helper()
	states, err := peer.States(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var fact PublishedState
	for _, s := range states {
		if s.Host == host && s.FleetSource != "p1" && s.FleetLimit > 0 {
			fact = s
		}
	}
	return fact
}

// publishPeersAt is publishPeers with the rows' throttles, and the fact's,
// at now.
func publishPeersAt(t *testing.T, peer Store, host string, n int, rate, served, limit float64, start bool, now time.Time) {
	t.Helper()
	for i := 1; i <= n; i++ {
		src := fmt.Sprintf("p%d", i)
		ps := PublishedState{Host: host, State: StateClosed, Sending: true, Rate: rate, LastMax: rate, Throttled: now, Served: served}
		if i == 1 {
			ps.FleetLimit, ps.FleetThrottled, ps.FleetSource, ps.FleetStart = limit, now, src, start
		}
		if err := peer.PublishStates(context.Background(), src, []PublishedState{ps}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
}

// fleetMember starts a Transport B over base that shares the bbolt file
// path (polled every second, pacing alone: no shared turns) with n other
// processes whose rows a second handle on the file publishes (see
// publishPeers: rate and served each, and the fleet's fact limit), and
// keeps B sending to host every 50 ms. It runs in a synctest bubble; the
// returned function stops B's sending.
func fleetMember(t *testing.T, path string, base http.RoundTripper, host string, n int, rate, served, limit float64) (b *Transport, peer Store, stop func()) {
	t.Helper()
	b = sharedTransportWith(t, base, WithConfig(Config{Store: StoreConfig{URL: path, PollInterval: time.Second}}),
		withFleetTweaks(fleetTweaks{noSharedTurns: true}))
	peer, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	publishPeers(t, peer, host, n, rate, served, limit, false)
	ctx, cancel := context.WithCancel(context.Background())
	wait := keepSending(ctx, []*Transport{b}, host, 50*time.Millisecond)
	return b, peer, func() { cancel(); wait() }
}

// TestFleetMemberFactIsWhatTheFleetWasServed: B paces its share of the
// fleet's fact (10 r/s among 4 processes) when the host refuses it. The
// other three publish that they pace 6 r/s each (their rows overstate what
// they send, as the benchmark's traces showed rows doing) and that the
// host served them 2.5 r/s each. The fact B's throttle teaches is what
// the host served the fleet over the window before it, the three's 7.5
// r/s and B's own; it agrees with the fact before it, so B publishes it
// as known. Before, it was β times the rates the fleet published, 0.7 ×
// (18 + B's), over 14 r/s: the refusal raised the fleet's limit. A
// throttle within the window of the fact's own (a request let go in the
// same episode) teaches no lower limit, and is not known. A fact that
// agrees with the bracket of the fleet's start is not known either: the
// bracket is not a measure, and what the fleet was served just after it
// is what the bracket let through (before, a fleet of 48 held such a
// fact for 10 s at 4.2 r/s of nginx's 5); a throttle in the start's
// episode is still the start's bracket. One in the start's aftermath, 3 s
// after it, is a bracket too, at 0.85 × the one before or more (before,
// it taught a measure at the floor, 0.7 × 10: 48 processes on Redis made
// facts of 3.4 and 3.2 r/s that way and sat at 3–4 r/s for 20 s). Nor is
// a fact known that agrees with one learnt less than knownGap before: the
// refusals of the fleet's reaction to a fact (or of a host draining its
// burst) measure one episode (a start's aftermath on bbolt made facts of
// 3.9, 4.6 and 4.4 r/s in 3 s; with facts 2 s apart, two of them that
// agreed would have been known).
func TestFleetMemberFactIsWhatTheFleetWasServed(t *testing.T) {
	for _, c := range []struct {
		name    string
		rate    float64       // each of the others published
		after   time.Duration // from the fact's throttle to B's
		episode bool
		start   bool // the fact before B's is the start's bracket
		known   bool // B's fact is, by agreeing with the one before
		after5  bool // B's throttle is in the start's aftermath
	}{
		{"another episode", 6, 6 * time.Second, false, false, true, false},
		// The others leave B its share at once (see fleetShare): its
		// requests go 400 ms apart, and one is refused in the window.
		{"the fact's episode", 1, 1200 * time.Millisecond, true, false, false, false},
		{"the fleet's reaction", 6, 3 * time.Second, false, false, false, false},
		{"after the start's bracket", 6, 6 * time.Second, false, true, false, false},
		{"the start's episode", 1, 1200 * time.Millisecond, true, true, false, false},
		// The others publish 1 r/s each: the rate refused, the count's
		// cap, is B's and their 3.
		{"the start's aftermath", 1, 3 * time.Second, false, true, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			synctest.Test(t, func(t *testing.T) {
				const host, poll = "api.test", time.Second
				var refuse atomic.Bool
				base := newSendLog()
				base.next = func(int) (int, http.Header) {
					if refuse.CompareAndSwap(true, false) {
						return http.StatusTooManyRequests, http.Header{}
					}
					return 0, nil
				}
				t0 := time.Now() // the fleet's fact
				b, peer, stop := fleetMember(t, path, base, host, 3, c.rate, 2.5, 10)
				defer stop()
				if c.start {
					publishPeers(t, peer, host, 3, c.rate, 2.5, 10, true) // the same rows, at the same time, flagged
				}
				time.Sleep(c.after)
				share := rateOf(b, host)
				refuse.Store(true)
				time.Sleep(3 * poll) // B was refused, and published the fact
				fact := publishedFact(t, peer, host)
				since := fact.FleetThrottled.Sub(t0)
				t.Logf("B paced %.2f r/s of the fleet's 10; its throttle %v after the fact's taught the fleet %.2f r/s (known %v)",
					share, since, fact.FleetLimit, fact.FleetKnown)
				if c.episode && fact.FleetLimit > 0 && since >= time.Duration(acceptWindow) {
					t.Fatalf("B was throttled %v after the fact, not within its window", since)
				}
				switch served := 7.5 + share; {
				case fact.FleetLimit == 0:
					t.Fatal("B published no fact of its own after its throttle")
				case c.episode && (fact.FleetLimit < 10 || fact.FleetKnown):
					t.Errorf("a throttle in the fact's episode taught %.2f r/s, known %v; want the fact's 10, not known", fact.FleetLimit, fact.FleetKnown)
				case !c.episode && (fact.FleetLimit > served*1.1 || fact.FleetLimit < 7):
					t.Errorf("B's throttle taught %.2f r/s; the host served the fleet about %.2f (want within 10 %% over it, and at least β × 10)", fact.FleetLimit, served)
				case fact.FleetKnown != c.known:
					t.Errorf("B's throttle %v after the fact's taught %.2f r/s, which agrees with the fleet's 10 before it: known %v, want %v",
						since, fact.FleetLimit, fact.FleetKnown, c.known)
				case c.episode && fact.FleetStart != c.start:
					t.Errorf("a throttle in the fact's episode published the start's flag %v, want the fact's, %v", fact.FleetStart, c.start)
				case c.after5 && (fact.FleetLimit < knownBeta*10*0.999 || fact.FleetLimit >= 10 || !fact.FleetStart):
					t.Errorf("B's throttle %v after the start's bracket of 10 taught %.2f r/s, the start's %v; want the start's, at 8.5 r/s (0.85 × the bracket) or more and under the bracket",
						since, fact.FleetLimit, fact.FleetStart)
				case c.start && !c.episode && !c.after5 && (fact.FleetKnown || fact.FleetStart):
					t.Errorf("B's throttle taught %.2f r/s after the start's bracket of 10, known %v, the start's %v; want neither",
						fact.FleetLimit, fact.FleetKnown, fact.FleetStart)
				}
			})
		})
	}
}

// TestFleetMemberFactIsCountedBeforeItsPause: B paces its share of the
// fleet's fact (10 r/s among 4 processes), and the other three publish
// that the host served them 2.5 r/s each, for several polls. Then the
// host refuses B with Retry-After: 1, and the three's rows say they were
// served 0.8 r/s each: their counts of the last 2 s cover the fleet's
// pause. The fact B's throttle teaches is what the host served the fleet
// over the polls before it: the others' 7.5 r/s and B's own count (B
// climbs back to its share along its curve after adopting it), 8 r/s or
// more. Before, it was the poll's count after the throttle, 2.4 r/s and
// B's own, floored at β × 10 (7 r/s): a fleet of 24 on bbolt that nginx
// served 6 r/s sat at 3.2 r/s for 10 s after such a refusal (96.6 %
// served).
func TestFleetMemberFactIsCountedBeforeItsPause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		const host = "api.test"
		var refuse atomic.Bool
		base := newSendLog()
		base.next = func(int) (int, http.Header) {
			if refuse.CompareAndSwap(true, false) {
				return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}
			}
			return 0, nil
		}
		t0 := time.Now() // the fleet's fact
		b, peer, stop := fleetMember(t, path, base, host, 3, 6, 2.5, 10)
		defer stop()
		time.Sleep(6500 * time.Millisecond) // between two polls of B's
		share := rateOf(b, host)
		publishPeersAt(t, peer, host, 3, 6, 0.8, 10, false, t0)
		refuse.Store(true)
		time.Sleep(3 * time.Second) // B was refused, and published the fact
		fact := publishedFact(t, peer, host)
		t.Logf("B paced %.2f r/s of the fleet's 10; its throttle with Retry-After taught the fleet %.2f r/s", share, fact.FleetLimit)
		switch {
		case fact.FleetLimit == 0:
			t.Fatal("B published no fact of its own after its throttle")
		case !fact.FleetThrottled.After(t0.Add(6 * time.Second)):
			t.Fatalf("B's fact is of a throttle at %v, want one after 6 s", fact.FleetThrottled.Sub(t0))
		case fact.FleetLimit < 8 || fact.FleetLimit > 1.1*(7.5+share):
			// B's own count is under its share: it climbed back to it
			// along its curve after adopting it.
			t.Errorf("B's throttle taught %.2f r/s; before it, the host served the others 7.5 r/s and B up to %.2f (want 8 or more, and at most 10 %% over)",
				fact.FleetLimit, share)
		}
	})
}

// TestFleetMembersClimbByWhatTheFleetWasServed: B paces its share of a
// fact that is not known (4 r/s among 4 processes, as the fleet's start
// teaches: a bracket). B probes past it gently, by steps of 10 % held
// while the host served the fleet more than its fact, as the others'
// rows and B's own count tell. When the others say they were served 1.5
// r/s each, B climbs a step or more; when they say 0.5, it stays within
// one step. Before, B probed past a fact that was not known at CUBIC's
// 20 %/s whatever the fleet was served: with a poll's lag, 24 processes
// ran to twice the host's limit before they slowed down.
func TestFleetMembersClimbByWhatTheFleetWasServed(t *testing.T) {
	for _, c := range []struct {
		name   string
		served float64 // by each of the others
		climb  bool
	}{
		{"served more", 1.5, true},
		{"served less", 0.5, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			synctest.Test(t, func(t *testing.T) {
				const host, poll = "api.test", time.Second
				b, _, stop := fleetMember(t, path, cannedBase(http.StatusOK), host, 3, 1, c.served, 4)
				defer stop()
				time.Sleep(2 * poll) // B adopted its share
				share := b.reg.host(host).lim.Load().status().lastMax
				time.Sleep(12 * time.Second)
				rate := rateOf(b, host)
				t.Logf("share %.3f r/s; 12 s later B paces %.3f r/s (%.2f ×)", share, rate, rate/share)
				if share < 0.9 || share > 1.1 {
					t.Fatalf("B took %.3f r/s of 4 among 4 processes", share)
				}
				if c.climb && rate < 1.15*share {
					t.Errorf("the fleet was served more than its fact, and B paces %.3f r/s 12 s later (%.2f × its share), want a step or more", rate, rate/share)
				}
				if !c.climb && rate > knownStep*share*1.001 {
					t.Errorf("the fleet was served less than its fact, and B paces %.3f r/s 12 s later (%.2f × its share), want at most one step", rate, rate/share)
				}
				if rate > math.Pow(knownStep, 4)*share {
					t.Errorf("B paces %.3f r/s 12 s after adopting its share %.3f: over four steps", rate, share)
				}
			})
		})
	}
}

// TestFleetMembersClimbFasterFromTheStartsBracket: B paces its share of
// a fact of 4 r/s among 4 processes, not known, and the others say the
// host served them more than their shares. When the fact is the bracket
// of the fleet's start (the rate the start reached two doublings before
// its first refusal, which the host served), B climbs past it in steps
// probed at 10 %/s and held 1 s: two steps in 6 s. Any other fact it
// climbs past in steps probed at 5 %/s and held 2 s: one step in 6 s.
// Before, a bracket was climbed as any other fact, and 24 processes spent
// 10–13 s at 4 r/s of nginx's 5 (94.3 % served).
func TestFleetMembersClimbFasterFromTheStartsBracket(t *testing.T) {
	for _, c := range []struct {
		name  string
		start bool
		steps int // at least (bracket) or at most
	}{
		{"the start's bracket", true, 2},
		{"a measure", false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "hb.db")
			synctest.Test(t, func(t *testing.T) {
				const host, poll = "api.test", time.Second
				b, peer, stop := fleetMember(t, path, cannedBase(http.StatusOK), host, 3, 1, 1.5, 4)
				defer stop()
				if c.start {
					publishPeers(t, peer, host, 3, 1, 1.5, 4, true) // the same rows, at the same time, flagged
				}
				time.Sleep(2 * poll) // B adopted its share
				share := b.reg.host(host).lim.Load().status().lastMax
				time.Sleep(6 * time.Second)
				lastMax := b.reg.host(host).lim.Load().status().lastMax
				steps := math.Log(lastMax/share) / math.Log(knownStep)
				t.Logf("share %.3f r/s; 6 s later B's last max is %.3f (%.1f steps)", share, lastMax, steps)
				if share < 0.9 || share > 1.1 {
					t.Fatalf("B took %.3f r/s of 4 among 4 processes", share)
				}
				if c.start && steps < float64(c.steps)-0.01 {
					t.Errorf("past the start's bracket B took %.1f steps in 6 s, want at least %d", steps, c.steps)
				}
				if !c.start && steps > float64(c.steps)+0.01 {
					t.Errorf("past a measured fact B took %.1f steps in 6 s, want at most %d", steps, c.steps)
				}
			})
		})
	}
}

// TestFleetMemberProbesPastATinyShare: B paces a share of a request every
// 20 s (a fact of 1 r/s among 20 processes), has more to send, and the
// others say the host served them their shares. B's probe past its share
// goes to the step (1.1 ×): its fleet has the demand. A process alone's
// is capped at twice the rate it measures itself sending, by 500 ms
// buckets, which for a request every 20 s reads as nothing: before, the
// cap held every member of such a fleet at its share, the fleet was
// served no more than its fact, and no step was ever taken (48 processes
// on nginx held a fact of 1.7 r/s of 5 for a whole run).
func TestFleetMemberProbesPastATinyShare(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		const host, poll = "api.test", time.Second
		// The others were served their shares: the fleet has the demand.
		b, _, stop := fleetMember(t, path, cannedBase(http.StatusOK), host, 19, 0.05, 0.05, 1)
		defer stop()
		time.Sleep(2 * poll) // B adopted its share
		share := b.reg.host(host).lim.Load().status().lastMax
		time.Sleep(6 * time.Second) // past the curve's window and the probe to the step
		rate := rateOf(b, host)
		t.Logf("share %.4f r/s; 6 s later B paces %.4f r/s (%.2f ×)", share, rate, rate/share)
		if share < 0.045 || share > 0.055 {
			t.Fatalf("B took %.4f r/s of 1 among 20 processes", share)
		}
		if rate < 1.09*share || rate > knownStep*share*1.001 {
			t.Errorf("6 s after adopting a share of %.4f r/s B paces %.4f r/s (%.2f ×), want the step, 1.1 ×", share, rate, rate/share)
		}
	})
}

// TestFleetRedivisionKeepsTheSteps: B paces its share of a fact (4 r/s
// among 4 processes) and, the others saying the host served them more
// than theirs, takes a step or more past it. Then one of the others stops
// sending (its row expires): B takes its share again, of 3 processes, and
// keeps the steps it took. Before, each redivision anchored the share of
// the fact alone: on bbolt, whose processes poll slowly, the number of
// processes sending moved every few seconds, and the fleet never got past
// its fact (76.6 and 80.5 % served in two runs of 24 processes).
func TestFleetRedivisionKeepsTheSteps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hb.db")
	synctest.Test(t, func(t *testing.T) {
		const host, poll = "api.test", time.Second
		b, peer, stop := fleetMember(t, path, cannedBase(http.StatusOK), host, 3, 1, 1.5, 4)
		defer stop()
		time.Sleep(2 * poll) // B adopted its share
		share := b.reg.host(host).lim.Load().status().lastMax
		time.Sleep(10 * time.Second)
		stepped := b.reg.host(host).lim.Load().status().lastMax
		if stepped < knownStep*share*0.999 {
			t.Fatalf("B's last max %.3f r/s 10 s after adopting a share of %.3f, the fleet served more than its fact: no step", stepped, share)
		}
		// p3 stops: its row (an hour's TTL here) is replaced by none.
		if err := peer.PublishStates(context.Background(), "p3", nil, time.Hour); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * poll) // B took its share of 3 processes
		after := b.reg.host(host).lim.Load().status().lastMax
		t.Logf("share %.3f r/s of 4 processes, %.3f after the steps; among 3, last max %.3f (%.2f × 4/3)", share, stepped, after, after/(4.0/3))
		if want := 4.0 / 3 * stepped / share; after < 0.99*want {
			t.Errorf("among 3 processes B's last max is %.3f r/s, want %.3f: the share of 3 with the steps it took (%.2f ×)", after, want, stepped/share)
		}
	})
}
