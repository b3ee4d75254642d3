package hostbreaker

// Tests of the registry, the bounded map of host states and entries: its
// memory layout, eviction, bounds on hosts and roles, and its invariants
// under concurrent traffic and policy updates.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unsafe"
)

// TestHotFieldsLayout pins the layout that keeps the healthy path to one
// 128-byte block: the host state's first line and its first entry's.
func TestHotFieldsLayout(t *testing.T) {
	var e entry
	var h hostState
	if end := unsafe.Offsetof(e.mark) + unsafe.Sizeof(e.mark); end > 64 {
		t.Errorf("entry's hot fields end at byte %d, past the first cache line", end)
	}
	if end := unsafe.Offsetof(h.nameBuf) + unsafe.Sizeof(h.nameBuf); end > 64 {
		t.Errorf("hostState's hot fields end at byte %d, past the first cache line", end)
	}
	if off := unsafe.Offsetof(h.first); off != 64 {
		t.Errorf("hostState.first at byte %d, want 64", off)
	}
	// The 128- and 384-byte size classes place objects on 64- and 128-byte
	// boundaries (the next smaller classes, 112 and 352, do not).
	if s := unsafe.Sizeof(e); s <= 112 || s > 128 {
		t.Errorf("sizeof(entry) = %d, want in (112, 128]", s)
	}
	if s := unsafe.Sizeof(h); s != 384 {
		t.Errorf("sizeof(hostState) = %d, want 384", s)
	}
}

func TestMaxHostsEvictsOnlyIdleEntries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			if strings.HasPrefix(req.URL.Host, "sick") {
				return status(500)(req)
			}
			return status(200)(req)
		})
		cfg := quick(1, time.Hour)
		cfg.MaxHosts = 16
		c, tr := client(t, base, cfg)
		get(t, c, "", "https://sick.test/")
		tr.Open("cooling.test", time.Hour, "")
		get(t, c, "", "https://cooling.test/")
		for i := range 200 {
			mustPass(t, do(t, c, "", fmt.Sprintf("https://h%d.test/", i)), 200)
		}
		snap := tr.Snapshot()
		if len(snap) > 16 {
			t.Errorf("%d entries tracked, want at most 16", len(snap))
		}
		mustReject(t, do(t, c, "", "https://sick.test/").err, ReasonBreakerOpen)
		mustReject(t, do(t, c, "", "https://cooling.test/").err, ReasonManual)
	})
}

// A registry full of failing entries makes new hosts cheap, not a
// sweep under the registry lock each.
func TestFullRegistryNewHostsAreCheap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 10000
		var failing atomic.Bool
		failing.Store(true)
		ok, fail := cannedBase(200), cannedBase(500)
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if failing.Load() {
				return fail(req)
			}
			return ok(req)
		})
		tr, err := NewTransport(base, WithConfig(Config{MaxHosts: n, Defaults: Policy{ResetTimeout: time.Hour}}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for i := range n {
			tr.RoundTrip(mustRequest(t, fmt.Sprintf("https://h%d.test/", i)))
		}
		failing.Store(false)
		reqs := make([]*http.Request, 200)
		for i := range reqs {
			reqs[i] = mustRequest(t, fmt.Sprintf("https://new%d.test/", i))
		}
		tr.RoundTrip(reqs[0]) // the one sweep
		i := 1
		allocs := testing.AllocsPerRun(100, func() {
			tr.RoundTrip(reqs[i])
			i++
		})
		if allocs > 2 {
			t.Fatalf("a new host on a full registry costs %.0f allocations, want at most 2", allocs)
		}
		if got := tr.untracked.Load(); got != 102 {
			t.Fatalf("untracked = %d, want 102", got)
		}
	})
}

// Host states held for cooldowns only are bounded, the cooldown
// that ends soonest goes first, counted and logged, and expired ones go.
func TestCooldownOnlyHostsAreBounded(t *testing.T) {
	url := testRedisURL(t)
	s, err := OpenStore(url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Now()
	const n = 5000
	for i := range n {
		r := Record{Host: fmt.Sprintf("h%d.test", i), Reason: ReasonRetryAfter,
			Until: now.Add(time.Hour + time.Duration(i)*time.Second), At: now, Source: "other"}
		if err := s.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	var logs logBuffer
	tr, err := NewTransport(newFakeHosts(status(200)), WithStore(s), WithLogger(logs.logger()),
		WithConfig(Config{MaxHosts: 10, Store: StoreConfig{PollInterval: time.Hour}}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	bound := tr.reg.maxBare
	if bound != minBareHosts {
		t.Fatalf("bound = %d, want %d", bound, minBareHosts)
	}
	tr.reg.mu.Lock()
	nhosts, nbare := tr.reg.nhosts, tr.reg.nbare
	tr.reg.mu.Unlock()
	if nhosts != bound || nbare != bound {
		t.Fatalf("host states = %d (%d bare), want %d", nhosts, nbare, bound)
	}
	if got := tr.cooldownsDropped.Load(); got != n-uint64(bound) {
		t.Fatalf("dropped = %d, want %d", got, n-bound)
	}
	c := &http.Client{Transport: tr}
	// The latest-ending cooldowns are kept, the soonest-ending dropped.
	_, err = c.Get(fmt.Sprintf("https://h%d.test/", n-1))
	mustReject(t, err, ReasonRetryAfter)
	if _, err := c.Get("https://h0.test/"); err != nil {
		t.Fatalf("h0 (soonest, dropped): %v", err)
	}
	tr.Close()
	if logs.count("dropped the cooldowns that end soonest") != 1 {
		t.Errorf("no log of the dropped cooldowns")
	}
}

func TestExpiredCooldownOnlyHostsAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{MaxHosts: 10}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		for i := range 100 {
			if err := tr.Open(fmt.Sprintf("h%d.test", i), time.Second, ""); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(bareSweepInterval + time.Second)
		synctest.Wait()
		tr.reg.mu.Lock()
		defer tr.reg.mu.Unlock()
		if tr.reg.nhosts != 0 || tr.reg.nbare != 0 {
			t.Fatalf("host states = %d (%d bare), want 0", tr.reg.nhosts, tr.reg.nbare)
		}
	})
}

// Distinct roles do not grow memory past the bound: entries,
// interned names and cached policies.
func TestManyRolesStayBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{MaxHosts: 100, Defaults: Policy{Roles: map[string]Policy{RoleMetadata: {FailMax: 2}}}}
		c, tr := client(t, newFakeHosts(status(200)), cfg)
		for i := range 20000 {
			mustPass(t, do(t, c, fmt.Sprintf("role-%d", i), "https://a.test/"), 200)
		}
		mustPass(t, do(t, c, RoleMetadata, "https://a.test/"), 200)
		tr.reg.mu.Lock()
		n, roles := tr.reg.n, len(tr.reg.roles)
		tr.reg.mu.Unlock()
		if n > 100 || roles > 100 {
			t.Fatalf("entries %d, interned roles %d; want at most 100", n, roles)
		}
		cached := 0
		tr.policies.Load().cache.Range(func(any, any) bool { cached++; return true })
		if cached > 2 { // the unnamed roles share one, metadata has its own
			t.Fatalf("cached policies = %d, want at most 2", cached)
		}
	})
}

// Once UpdateHostPolicy returns, every entry of the host, old or
// created concurrently, uses the new policy.
func TestUpdateHostPolicyIsAtomicWithNewEntries(t *testing.T) {
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(Config{MaxHosts: 2000}))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var stop atomic.Bool
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				req := mustRequest(t, "https://a.test/")
				req = req.WithContext(WithRole(req.Context(), fmt.Sprintf("r%d-%d", g, i)))
				tr.RoundTrip(req)
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()
	for i := 2; i < 300; i++ {
		if err := tr.UpdateHostPolicy("a.test", Policy{FailMax: i}); err != nil {
			t.Fatal(err)
		}
		_, entries := tr.reg.hostEntries("a.test")
		for _, e := range entries {
			if got := e.pol.Load().FailMax; got != i {
				t.Fatalf("update %d: entry %q has fail_max %d", i, e.role, got)
			}
		}
	}
}

// The registry's counts and bounds hold under concurrent traffic that
// creates, evicts, cools and resets hosts, with policy updates alongside.
func TestRegistryInvariantsUnderConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n atomic.Int64
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			switch n.Add(1) % 7 {
			case 0:
				return nil, timeoutError{}
			case 1:
				return status(429, "Retry-After", "2")(req)
			case 2, 3:
				return status(500)(req)
			}
			return status(200)(req)
		})
		tr, err := NewTransport(base, WithConfig(Config{MaxHosts: 4,
			Defaults: Policy{FailMax: 2, ResetTimeout: 3 * time.Second, TrialCalls: 2}}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 300 {
					host := fmt.Sprintf("h%d.test", (g*7+i)%20)
					req := mustRequest(t, "https://"+host+"/")
					req = req.WithContext(WithRole(req.Context(), fmt.Sprintf("r%d", i%3)))
					tr.RoundTrip(req)
					switch i % 50 {
					case 10:
						tr.Open(host, time.Second, "")
					case 20:
						tr.Reset(host)
					case 30:
						tr.UpdateHostPolicy(host, Policy{FailMax: 1 + i%3})
					case 40:
						tr.UpdateHostPolicy("*.test", Policy{TrialCalls: 1 + i%2})
					}
					time.Sleep(100 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		r := tr.reg
		r.mu.Lock()
		defer r.mu.Unlock()
		hosts, bare, entries := 0, 0, 0
		r.tab.Load().each(func(h *hostState) {
			hosts++
			if h.bare() {
				bare++
			}
			h.each(func(e *entry) {
				entries++
				if e.evicted() || e.host != h {
					t.Errorf("entry (%s, %q) listed but evicted or of another host", h.name, e.role)
				}
			})
		})
		if hosts != r.nhosts || bare != r.nbare || entries != r.n {
			t.Fatalf("counted hosts %d, bare %d, entries %d; registry says %d, %d, %d", hosts, bare, entries, r.nhosts, r.nbare, r.n)
		}
		if r.n > r.max || r.nbare > r.maxBare || len(r.roles) > r.max {
			t.Fatalf("bounds: %d entries (max %d), %d bare (max %d), %d roles", r.n, r.max, r.nbare, r.maxBare, len(r.roles))
		}
	})
}
