package hostbreaker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func mustPut(t *testing.T, s Store, r Record) {
	t.Helper()
	if err := s.Put(context.Background(), r); err != nil {
		t.Fatalf("Put(%+v): %v", r, err)
	}
}

func TestRedisURLParsing(t *testing.T) {
	cases := []struct {
		url                  string
		addr, user, pass     string
		db                   int
		prefix               string
		tls                  bool
		readTimeout, dialTmo time.Duration
	}{
		{url: "redis://127.0.0.1:6379/0", addr: "127.0.0.1:6379", prefix: "hostbreaker:", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
		{url: "redis://127.0.0.1:6390/3?prefix=app%2A:", addr: "127.0.0.1:6390", db: 3, prefix: "app*:", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
		{url: "redis://bob:s3cret@127.0.0.1/2?prefix=x:&read_timeout=2s", addr: "127.0.0.1:6379", user: "bob", pass: "s3cret", db: 2, prefix: "x:", readTimeout: 2 * time.Second, dialTmo: redisDialTimeout},
		{url: "rediss://:pw@127.0.0.1:6380/1?dial_timeout=1s", addr: "127.0.0.1:6380", pass: "pw", db: 1, prefix: "hostbreaker:", tls: true, readTimeout: redisIOTimeout, dialTmo: time.Second},
		{url: "REDIS://127.0.0.1:6379", addr: "127.0.0.1:6379", prefix: "hostbreaker:", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
		{url: "redis://127.0.0.1:6379/0?prefix=newcomer", addr: "127.0.0.1:6379", prefix: "newcomer:", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
		{url: "redis://127.0.0.1:6379/0?prefix=a:b", addr: "127.0.0.1:6379", prefix: "a:b:", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
		{url: "redis://127.0.0.1:6379/0?prefix=%3A", addr: "127.0.0.1:6379", prefix: ":", readTimeout: redisIOTimeout, dialTmo: redisDialTimeout},
	}
	for _, c := range cases {
		opt, prefix, err := parseRedisURL(c.url)
		if err != nil {
			t.Errorf("parseRedisURL(%q): %v", c.url, err)
			continue
		}
		if opt.Addr != c.addr || opt.Username != c.user || opt.Password != c.pass || opt.DB != c.db ||
			prefix != c.prefix || (opt.TLSConfig != nil) != c.tls || opt.ReadTimeout != c.readTimeout ||
			opt.DialTimeout != c.dialTmo || opt.MaxRetries != redisMaxRetries {
			t.Errorf("parseRedisURL(%q) = addr %q user %q pass %q db %d prefix %q tls %v read %v dial %v retries %d",
				c.url, opt.Addr, opt.Username, opt.Password, opt.DB, prefix, opt.TLSConfig != nil,
				opt.ReadTimeout, opt.DialTimeout, opt.MaxRetries)
		}
	}

	bad := []string{
		"redis://u:hunter2@127.0.0.1:notaport/0",
		"redis://u:hunter2@127.0.0.1:6379/notadb",
		"redis://u:hunter2@127.0.0.1:6379/0/1",
		"redis://u:hunter2@127.0.0.1:6379/0?bogus=1",
		"redis://u:hunter2@127.0.0.1:6379/0?prefix=",
		"redis://u:hunter2@127.0.0.1:6379/0?prefix=a&prefix=b",
		"redis://u:hunter2@127.0.0.1:6379/0?read_timeout=soon",
		"redis://u:hun/ter2@127.0.0.1:6379/0",
		"redis://u:hunter2@[::1/0",
		"redis://u:hunter2@127.0.0.1:6379/0?prefix=%zz",
	}
	for _, raw := range bad {
		st, err := OpenStore(raw)
		if err == nil {
			_ = st.Close()
			t.Errorf("OpenStore(%q) succeeded", raw)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "hunter2") || strings.Contains(msg, "hun/ter2") || strings.Contains(msg, "ter2@") {
			t.Errorf("OpenStore(%q) error leaks the password: %s", raw, msg)
		}
		if !strings.Contains(msg, "u:xxxxx@127.0.0.1") && !strings.Contains(msg, "u:xxxxx@[::1") {
			t.Errorf("OpenStore(%q) error does not name the redacted URL: %s", raw, msg)
		}
		t.Logf("%s", msg)
	}
	if _, err := openRedisStore("unix:///tmp/redis.sock"); err == nil {
		t.Error("openRedisStore accepted a unix URL")
	}
}

func TestRedisOpenUnreachable(t *testing.T) {
	port := freePort(t)
	start := time.Now()
	st, err := OpenStore(fmt.Sprintf("redis://127.0.0.1:%d/0", port))
	if err != nil {
		t.Fatalf("OpenStore with Redis down: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("OpenStore took %v with Redis down", d)
	}
	if _, err := st.Records(context.Background()); err == nil {
		t.Error("Records succeeded with Redis down")
	}
	if err := st.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestRedisPutRejects(t *testing.T) {
	eachRedis(t, func(t *testing.T, u string) {
		s := openTestRedis(t, u)
		now := time.Now()
		good := Record{Host: "example.com", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now}
		for _, host := range []string{"", "Example.com", "example.com.", "evil*host", "a:b:c", "h:x", "host\nname", "bücher.de", "[::1", "a b"} {
			r := good
			r.Host = host
			if err := s.Put(context.Background(), r); err == nil {
				t.Errorf("Put accepted host %q", host)
			} else if !strings.Contains(err.Error(), "redis store: put") {
				t.Errorf("Put(%q) error %q does not say what failed", host, err)
			}
		}
		for _, mod := range []func(*Record){
			func(r *Record) { r.Reason = "" },
			func(r *Record) { r.Reason = ReasonHalfOpenFull },
			func(r *Record) { r.Reason = "bogus" },
			func(r *Record) { r.Until = time.Time{} },
			func(r *Record) { r.At = time.Time{} },
			func(r *Record) { r.Until = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) },
		} {
			r := good
			mod(&r)
			if err := s.Put(context.Background(), r); err == nil {
				t.Errorf("Put accepted %+v", r)
			}
		}
		if rs := mustRecords(t, s); len(rs) != 0 {
			t.Fatalf("rejected puts left records: %+v", rs)
		}
	})
}

func TestRedisReset(t *testing.T) {
	u := testRedisURL(t)
	s := openTestRedis(t, u)
	other := openTestRedis(t, withPrefix(t, u, prefixOf(t, u)+"other:"))
	now := time.Now()
	cd := func(host, role string, at time.Duration) Record {
		return Record{Host: host, Role: role, Reason: ReasonBreakerOpen, Until: now.Add(time.Minute), At: now.Add(at)}
	}
	for _, r := range []Record{cd("a.com", "", 0), cd("a.com", "r1", 0), cd("a.com", "r2", 5*time.Millisecond), cd("b.com", "", 0)} {
		mustPut(t, s, r)
	}
	mustPut(t, other, cd("a.com", "", 0))

	// The marker lives 2s: long enough to be seen on a loaded machine.
	reset := Record{Host: "a.com", Reason: ReasonReset, Until: now.Add(2 * time.Second), At: now.Add(2 * time.Millisecond), Source: "ops"}
	mustPut(t, s, reset)
	rs := mustRecords(t, s)
	if _, ok := find(rs, "a.com", "", false); ok {
		t.Error("reset left a.com role \"\"")
	}
	if _, ok := find(rs, "a.com", "r1", false); ok {
		t.Error("reset left a.com role r1")
	}
	if _, ok := find(rs, "a.com", "r2", false); !ok {
		t.Error("reset removed a cooldown written after it")
	}
	if _, ok := find(rs, "b.com", "", false); !ok {
		t.Error("reset of a.com removed b.com")
	}
	if m, ok := find(rs, "a.com", "", true); !ok || !sameRecord(m, reset) {
		t.Errorf("marker = %+v, %v; want %+v", m, ok, reset)
	}
	if _, ok := find(mustRecords(t, other), "a.com", "", false); !ok {
		t.Error("reset under one prefix removed a record under another")
	}

	// A cooldown written at or before the marker arrives late: the reset
	// already covers it.
	mustPut(t, s, cd("a.com", "late", time.Millisecond))
	if _, ok := find(mustRecords(t, s), "a.com", "late", false); ok {
		t.Error("cooldown written before the reset survived it")
	}
	// An older reset does not replace the newer marker.
	older := reset
	older.At, older.Source = now.Add(time.Millisecond), "old"
	mustPut(t, s, older)
	if m, _ := find(mustRecords(t, s), "a.com", "", true); m.Source != "ops" {
		t.Errorf("older reset replaced the marker: %+v", m)
	}

	// The marker is visible until its Until, then gone.
	time.Sleep(time.Until(reset.Until) + 50*time.Millisecond)
	rs = mustRecords(t, s)
	if _, ok := find(rs, "a.com", "", true); ok {
		t.Error("marker still visible after its Until")
	}
	if n, err := rawClient(t).Exists(context.Background(), s.key(redisKindReset, "a.com")).Result(); err != nil || n != 0 {
		t.Errorf("marker key still exists: %d, %v", n, err)
	}
	// Once the marker is gone, an old cooldown is accepted again.
	mustPut(t, s, cd("a.com", "late", time.Millisecond))
	if _, ok := find(mustRecords(t, s), "a.com", "late", false); !ok {
		t.Error("cooldown after marker expiry was dropped")
	}
}

func TestRedisTTL(t *testing.T) {
	s := openTestRedis(t, testRedisURL(t))
	c := rawClient(t)
	ctx := context.Background()
	checkPTTL := func(key string, want time.Duration) {
		t.Helper()
		d, err := c.PTTL(ctx, key).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", key, err)
		}
		if d > want+time.Millisecond || d < want-time.Second {
			t.Errorf("PTTL %s = %v, want about %v", key, d, want)
		}
	}
	now := time.Now()
	hkey := s.key(redisKindCooldowns, "ttl.example")
	mustPut(t, s, Record{Host: "ttl.example", Role: "a", Reason: ReasonRetryAfter, Until: now.Add(10 * time.Second), At: now})
	checkPTTL(hkey, 10*time.Second)
	mustPut(t, s, Record{Host: "ttl.example", Role: "b", Reason: ReasonRetryAfter, Until: now.Add(20 * time.Second), At: now})
	checkPTTL(hkey, 20*time.Second)
	mustPut(t, s, Record{Host: "ttl.example", Role: "b", Reason: ReasonManual, Until: now.Add(5 * time.Second), At: now})
	checkPTTL(hkey, 10*time.Second) // the key lives as long as its last field, no longer

	mustPut(t, s, Record{Host: "ttl.example", Reason: ReasonReset, Until: now.Add(3 * time.Second), At: now})
	checkPTTL(s.key(redisKindReset, "ttl.example"), 3*time.Second)
	if n, _ := c.Exists(ctx, hkey).Result(); n != 0 {
		t.Error("reset covering every field left the hash")
	}

	if err := s.PublishStates(ctx, "proc-1", []PublishedState{{Host: "x.com", State: StateOpen}}, 7*time.Second); err != nil {
		t.Fatal(err)
	}
	checkPTTL(s.key(redisKindStates, "proc-1"), 7*time.Second)
}

func TestRedisExpiredIgnored(t *testing.T) {
	s := openTestRedis(t, testRedisURL(t))
	c := rawClient(t)
	ctx := context.Background()
	now := time.Now()
	host := "old.example"
	hkey := s.key(redisKindCooldowns, host)
	expired := Record{Host: host, Role: "gone", Reason: ReasonRetryAfter, Until: now.Add(-time.Second), At: now.Add(-time.Minute)}
	// Written behind the store's back, without a key TTL.
	c.HSet(ctx, hkey, "gone", encodeRecord(expired), "junk", "not json")
	c.Set(ctx, s.key(redisKindReset, host), encodeRecord(Record{Host: host, Reason: ReasonReset, Until: now.Add(-time.Second), At: now.Add(-time.Minute)}), 0)
	if rs := mustRecords(t, s); len(rs) != 0 {
		t.Fatalf("expired or junk records returned: %+v", rs)
	}
	// A Put of an already expired cooldown writes nothing.
	mustPut(t, s, Record{Host: "never.example", Reason: ReasonRetryAfter, Until: now.Add(-time.Millisecond), At: now})
	if n, _ := c.Exists(ctx, s.key(redisKindCooldowns, "never.example")).Result(); n != 0 {
		t.Error("expired Put created a key")
	}
	// A Put on the host removes the expired and junk fields.
	live := Record{Host: host, Role: "live", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now}
	mustPut(t, s, live)
	fields, err := c.HKeys(ctx, hkey).Result()
	if err != nil || !slices.Equal(fields, []string{"c:live"}) {
		t.Fatalf("fields after Put = %v, %v; want [c:live]", fields, err)
	}
	if rs := mustRecords(t, s); len(rs) != 1 || !sameRecord(rs[0], live) {
		t.Fatalf("records = %+v", rs)
	}
}

func TestRedisHostileNames(t *testing.T) {
	u := testRedisURL(t)
	base := prefixOf(t, u)
	s := openTestRedis(t, u)
	now := time.Now()
	roles := []string{"*", "a:b", "line\nbreak", "h:evil.com", "[x]?\\", "%2A", "", " sp ace "}
	for _, role := range roles {
		// Hosts whose escaped form differs from the host itself.
		// ("[::1]:8080" would be better, but see splitHostPort.)
		for _, host := range []string{"[::1]", "example.com:8080"} {
			mustPut(t, s, Record{Host: host, Role: role, Reason: ReasonBreakerOpen, Until: now.Add(time.Minute), At: now})
		}
	}
	rs := mustRecords(t, s)
	if len(rs) != 2*len(roles) {
		t.Fatalf("got %d records, want %d: %+v", len(rs), len(roles), rs)
	}
	for _, role := range roles {
		for _, host := range []string{"[::1]", "example.com:8080"} {
			if _, ok := find(rs, host, role, false); !ok {
				t.Errorf("(%s, %q) lost", host, role)
			}
		}
	}
	keys, _ := rawClient(t).Keys(context.Background(), globEscape(base)+"*").Result()
	for _, k := range keys {
		if strings.ContainsAny(k[len(base):], "*?[]\n ") || strings.Count(k[len(base):], ":") != 1 {
			t.Errorf("key %q is not escaped", k)
		}
	}

	// A prefix with a glob character does not match another prefix's keys.
	star := openTestRedis(t, withPrefix(t, u, base+"*"))
	plain := openTestRedis(t, withPrefix(t, u, base+"x"))
	mustPut(t, plain, Record{Host: "plain.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	if err := plain.PublishStates(context.Background(), "src", []PublishedState{{Host: "plain.example"}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if rs := mustRecords(t, star); len(rs) != 0 {
		t.Errorf("prefix %q sees records of %q: %+v", base+"*", base+"x", rs)
	}
	if st, err := star.States(context.Background()); err != nil || len(st) != 0 {
		t.Errorf("prefix %q sees states of %q: %+v, %v", base+"*", base+"x", st, err)
	}
	// Nor does a prefix see the keys of a prefix that extends it.
	nested := openTestRedis(t, withPrefix(t, u, base+"n:h:"))
	outer := openTestRedis(t, withPrefix(t, u, base+"n:"))
	mustPut(t, nested, Record{Host: "nested.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	mustPut(t, nested, Record{Host: "nested.example", Reason: ReasonReset, Until: now.Add(time.Minute), At: now})
	if rs := mustRecords(t, outer); len(rs) != 0 {
		t.Errorf("prefix n: sees records of prefix n:h: %+v", rs)
	}
	if rs := mustRecords(t, nested); len(rs) != 1 {
		t.Errorf("nested store records: %+v", rs)
	}
}

func TestRedisStates(t *testing.T) {
	u := testRedisURL(t)
	s := openTestRedis(t, u)
	ctx := context.Background()
	until := time.Unix(0, time.Now().Add(time.Minute).UnixNano())
	a := []PublishedState{
		{Host: "a.com", State: StateOpen, Until: until, Reason: ReasonBreakerOpen},
		{Host: "a.com", Role: "r*1", State: StateHalfOpen},
	}
	if err := s.PublishStates(ctx, "proc:a", a, time.Minute); err != nil {
		t.Fatal(err)
	}
	// proc*b's states live 2s: long enough to be seen on a loaded machine.
	if err := s.PublishStates(ctx, "proc*b", []PublishedState{{Host: "b.com", State: StateClosed}}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	got, err := s.States(ctx)
	if err != nil || len(got) != 3 {
		t.Fatalf("States = %+v, %v", got, err)
	}
	for _, g := range got {
		if g.Host == "a.com" && g.Role == "" && (g.Source != "proc:a" || !g.Until.Equal(until) || g.State != StateOpen) {
			t.Errorf("state %+v", g)
		}
	}
	// Replace: proc:a now publishes one state.
	if err := s.PublishStates(ctx, "proc:a", a[1:], time.Minute); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*time.Second + 50*time.Millisecond)
	got, err = s.States(ctx)
	if err != nil || len(got) != 1 || got[0].Role != "r*1" || got[0].Source != "proc:a" {
		t.Fatalf("after replace and expiry: %+v, %v", got, err)
	}
	// A stale value whose key has no TTL is still ignored.
	rawClient(t).Set(ctx, s.key(redisKindStates, "stale"), encodeStates("stale", a, time.Now().Add(-time.Second)), 0)
	if got, _ := s.States(ctx); len(got) != 1 {
		t.Fatalf("stale states returned: %+v", got)
	}
	if err := s.PublishStates(ctx, "proc:a", nil, 0); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.States(ctx); len(got) != 0 {
		t.Fatalf("ttl 0 did not delete: %+v", got)
	}
}

func TestRedisChanges(t *testing.T) {
	eachRedis(t, func(t *testing.T, u string) {
		a := openTestRedis(t, u)
		b := openTestRedis(t, u)
		other := openTestRedis(t, withPrefix(t, u, prefixOf(t, u)+"other:"))
		for _, s := range []Store{a, b, other} {
			if !waitChange(s, 3*time.Second) {
				t.Fatal("no signal when the subscription was established")
			}
		}
		now := time.Now()
		r := Record{Host: "c.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now}
		mustPut(t, a, r)
		if !waitChange(b, 2*time.Second) {
			t.Fatal("b saw no change after a's Put")
		}
		if !waitChange(a, 2*time.Second) {
			t.Fatal("a saw no change after its own Put")
		}
		if waitChange(other, 200*time.Millisecond) {
			t.Error("a store under another prefix was signalled")
		}
		// A Put that changes nothing does not signal.
		mustPut(t, a, r)
		if waitChange(b, 200*time.Millisecond) {
			t.Error("a Put that changed nothing signalled")
		}
	})
}

// TestRedisPropagationLatency measures how soon a Put through one store is
// signalled to another and visible in its Records, and logs the figures;
// each round only has a generous bound, since a loaded machine delays
// goroutines by tens of milliseconds.
func TestRedisPropagationLatency(t *testing.T) {
	u := testRedisURL(t)
	a := openTestRedis(t, u)
	b := openTestRedis(t, u)
	if !waitChange(b, 10*time.Second) {
		t.Fatal("b not subscribed")
	}
	ctx := context.Background()
	const n = 200
	lat := make([]time.Duration, 0, n)
	base := time.Now()
	for i := range n {
		drain(b)
		r := Record{Host: fmt.Sprintf("h%d.example", i%20), Role: "r", Reason: ReasonRetryAfter,
			Until: base.Add(time.Minute + time.Duration(i)*time.Millisecond), At: time.Now(), Source: strconv.Itoa(i)}
		start := time.Now()
		if err := a.Put(ctx, r); err != nil {
			t.Fatal(err)
		}
		for {
			if !waitChange(b, 10*time.Second) {
				t.Fatalf("round %d: no change signal within 10s", i)
			}
			rs, err := b.Records(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := find(rs, r.Host, "r", false); ok && sameRecord(got, r) {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100-1]
	t.Logf("propagation Put→Changes→Records over %d rounds: p50 %v, p99 %v, max %v", n, p50, p99, lat[n-1])
}

func TestRedisConcurrentPut(t *testing.T) {
	eachRedis(t, func(t *testing.T, u string) {
		stores := []*redisStore{openTestRedis(t, u), openTestRedis(t, u)}
		now := time.Now()
		var wg sync.WaitGroup
		var latest atomic.Int64
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), 1))
				for range 50 {
					until := now.Add(time.Minute + time.Duration(rng.IntN(1_000_000))*time.Microsecond)
					for {
						m := latest.Load()
						if until.UnixNano() <= m || latest.CompareAndSwap(m, until.UnixNano()) {
							break
						}
					}
					r := Record{Host: "race.example", Role: "r", Reason: ReasonRollingWindow, Until: until, At: now}
					if err := stores[g%2].Put(context.Background(), r); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		rs := mustRecords(t, stores[0])
		if len(rs) != 1 || rs[0].Until.UnixNano() != latest.Load() {
			t.Fatalf("after racing puts: %+v, want Until %v", rs, time.Unix(0, latest.Load()))
		}
	})
}

func TestRedisCloseStopsGoroutines(t *testing.T) {
	eachRedis(t, func(t *testing.T, u string) {
		before := runtime.NumGoroutine()
		var stores []*redisStore
		for range 3 {
			st, err := OpenStore(u)
			if err != nil {
				t.Fatal(err)
			}
			s := st.(*redisStore)
			stores = append(stores, s)
			waitChange(s, 3*time.Second)
			if _, err := s.Records(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		for _, s := range stores {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case <-s.done:
			default:
				t.Error("watch goroutine still running after Close")
			}
			if err := s.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if err := s.Put(context.Background(), Record{Host: "x.com", Reason: ReasonManual, Until: time.Now().Add(time.Minute), At: time.Now()}); err == nil {
				t.Error("Put after Close succeeded")
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			t.Errorf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
	})
}

func TestRedisDown(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		msg := "!!! redis-server not on PATH — TestRedisDown NOT RUN !!!"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	srv := &redisServer{t: t, port: freePort(t), dir: t.TempDir()}
	srv.start()
	t.Cleanup(srv.stop)

	s := openTestRedis(t, fmt.Sprintf("redis://127.0.0.1:%d/0?prefix=down:", srv.port))
	if !waitChange(s, 3*time.Second) {
		t.Fatal("no signal on first subscription")
	}
	ctx := context.Background()
	rec := func() Record {
		now := time.Now()
		return Record{Host: "down.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now}
	}
	mustPut(t, s, rec())

	srv.stop()
	drain(s)
	for i := range 3 {
		start := time.Now()
		err := s.Put(ctx, rec())
		if d := time.Since(start); err == nil || d > 2*time.Second {
			t.Errorf("Put %d with Redis down: err %v after %v", i, err, d)
		} else if !strings.Contains(err.Error(), "redis store: put down.example") {
			t.Errorf("Put error does not say what failed: %v", err)
		}
		start = time.Now()
		_, err = s.Records(ctx)
		if d := time.Since(start); err == nil || d > 2*time.Second {
			t.Errorf("Records %d with Redis down: err %v after %v", i, err, d)
		}
		start = time.Now()
		_, err = s.States(ctx)
		if d := time.Since(start); err == nil || d > 2*time.Second {
			t.Errorf("States %d with Redis down: err %v after %v", i, err, d)
		}
	}

	srv.start() // empty: no persistence
	if !waitChange(s, 5*time.Second) {
		t.Fatal("no resync signal after Redis came back")
	}
	var err error
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err = s.Put(ctx, rec()); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Put after Redis came back: %v", err)
	}
	if rs := mustRecords(t, s); len(rs) != 1 {
		t.Fatalf("Records after Redis came back: %+v", rs)
	}
	// The new subscription delivers events again.
	drain(s)
	other := openTestRedis(t, fmt.Sprintf("redis://127.0.0.1:%d/0?prefix=down:", srv.port))
	r := rec()
	r.Host = "again.example"
	mustPut(t, other, r)
	if !waitChange(s, 2*time.Second) {
		t.Fatal("no change signal after resubscription")
	}
	if _, err := s.Records(ctx); err != nil {
		t.Fatal(err)
	}
}

// freezeProxy forwards loopback TCP connections to a target; freeze makes
// the connections open so far swallow everything, like a peer that died
// without a reset, while new connections work.
type freezeProxy struct {
	ln     net.Listener
	target string
	gen    atomic.Int64 // number of connections accepted
	frozen atomic.Int64 // connections numbered up to this swallow data
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *freezeProxy) accept() {
	defer p.wg.Done()
	for {
		a, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			a.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, a, b)
		p.mu.Unlock()
		g := p.gen.Add(1)
		p.wg.Add(2)
		go p.pipe(a, b, g)
		go p.pipe(b, a, g)
	}
}

func (p *freezeProxy) pipe(src, dst net.Conn, g int64) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if g <= p.frozen.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *freezeProxy) freeze() { p.frozen.Store(p.gen.Load()) }

func TestRedisDeadSubscription(t *testing.T) {
	u := testRedisURL(t)
	proxy := newFreezeProxy(t, testRedisAddr)
	s := openTestRedis(t, strings.Replace(u, testRedisAddr, proxy.ln.Addr().String(), 1))
	direct := openTestRedis(t, u)
	if !waitChange(s, 3*time.Second) {
		t.Fatal("no signal on first subscription")
	}
	now := time.Now()
	mustPut(t, direct, Record{Host: "a.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	if !waitChange(s, 2*time.Second) {
		t.Fatal("no signal through the proxy")
	}

	proxy.freeze()
	drain(s)
	start := time.Now()
	if !waitChange(s, 3*redisPingInterval+2*time.Second) {
		t.Fatal("dead subscription not replaced")
	}
	t.Logf("dead subscription replaced after %v", time.Since(start))
	mustPut(t, direct, Record{Host: "b.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	if !waitChange(s, 2*time.Second) {
		t.Fatal("no signal on the new subscription")
	}
}

// testRedisDB returns the URL of a store in database db of the shared test
// Redis, under a fresh prefix, and a plain client on that database. It
// empties the database (FLUSHDB, that database only) now and when the test
// ends: only a test that needs a database of its own uses it, each with its
// own number.
func testRedisDB(t *testing.T, db int) (string, *redis.Client) {
	t.Helper()
	u := testRedisURL(t) // skips when Redis is unreachable
	c := redis.NewClient(&redis.Options{Addr: testRedisAddr, DB: db})
	ctx := context.Background()
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("FLUSHDB of db %d: %v", db, err)
	}
	t.Cleanup(func() {
		if err := c.FlushDB(context.Background()).Err(); err != nil {
			t.Errorf("FLUSHDB of db %d: %v", db, err)
		}
		_ = c.Close()
	})
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	pu.Path = "/" + strconv.Itoa(db)
	return pu.String(), c
}

// TestRedisPollIgnoresOtherKeys checks that Records and States read the
// store's indexes, never the keyspace: with 200,000 unrelated keys in the
// database, a poll sends the same commands as with none, and no SCAN or
// KEYS. It uses database 9 of its own. The poll's time goes to the log.
func TestRedisPollIgnoresOtherKeys(t *testing.T) {
	u, raw := testRedisDB(t, 9)
	s := openTestRedis(t, u)
	ctx := context.Background()
	now := time.Now()
	const hosts = 20
	for i := range hosts {
		mustPut(t, s, Record{Host: fmt.Sprintf("h%d.example", i), Reason: ReasonRetryAfter, Until: now.Add(time.Hour), At: now})
	}
	mustPut(t, s, Record{Host: "h0.example", Role: "r", Reason: ReasonBreakerOpen, Until: now.Add(time.Hour), At: now})
	mustPut(t, s, Record{Host: "reset.example", Reason: ReasonReset, Until: now.Add(time.Hour), At: now})
	for _, src := range []string{"proc-a", "proc-b"} {
		if err := s.PublishStates(ctx, src, []PublishedState{{Host: "h1.example", State: StateOpen}}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	var counter cmdCounter
	s.client.AddHook(&counter)
	poll := func() (cmds []string, records time.Duration) {
		t.Helper()
		counter.take()
		const rounds = 21
		var ds []time.Duration
		for range rounds {
			start := time.Now()
			rs, err := s.Records(ctx)
			ds = append(ds, time.Since(start))
			if err != nil || len(rs) != hosts+2 {
				t.Fatalf("Records = %d records, %v; want %d", len(rs), err, hosts+2)
			}
			if st, err := s.States(ctx); err != nil || len(st) != 2 {
				t.Fatalf("States = %+v, %v", st, err)
			}
		}
		all := counter.take()
		slices.Sort(ds)
		// One round's commands: the counts are multiples of rounds.
		var one []string
		for i := 0; i < len(all); i += rounds {
			one = append(one, all[i])
		}
		return one, ds[rounds/2]
	}
	cmds0, d0 := poll()

	// 200,000 unrelated keys: plain strings, and hashes that look like a
	// store's under another prefix.
	const unrelated = 200_000
	for batch := 0; batch < unrelated; batch += 10_000 {
		pipe := raw.Pipeline()
		for i := batch; i < batch+10_000; i++ {
			if i%2 == 0 {
				pipe.Set(ctx, fmt.Sprintf("unrelated:%d", i), "x", time.Hour)
			} else {
				pipe.HSet(ctx, fmt.Sprintf("hostbreaker:h:h%d.example", i), "c:", "{}")
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := raw.DBSize(ctx).Result(); err != nil || n < unrelated {
		t.Fatalf("DBSIZE = %d, %v", n, err)
	}
	cmds1, d1 := poll()

	if !slices.Equal(cmds0, cmds1) {
		t.Errorf("a poll sent %q with no other keys, %q with %d", cmds0, cmds1, unrelated)
	}
	for _, c := range cmds1 {
		if c == "scan" || c == "keys" {
			t.Errorf("a poll sent %s", c)
		}
	}
	t.Logf("one poll sends %d commands: %q", len(cmds1), cmds1)
	t.Logf("Records of %d hosts (median of 21): %v with 0 unrelated keys, %v with %d", hosts+1, d0, d1, unrelated)
	// For comparison, the SCAN of the keyspace that Records did before.
	start := time.Now()
	iter := raw.Scan(ctx, 0, globEscape(prefixOf(t, u))+"[hr]:*", 500).Iterator()
	for iter.Next(ctx) {
	}
	t.Logf("for comparison, one SCAN MATCH sweep (COUNT 500) of the %d keys, as Records did before: %v (%v)", unrelated, time.Since(start), iter.Err())
}

// TestRedisIndexes checks the scores of the hosts and sources indexes, and
// that writes drop the members that expired.
func TestRedisIndexes(t *testing.T) {
	s := openTestRedis(t, testRedisURL(t))
	c := rawClient(t)
	ctx := context.Background()
	hosts, sources := s.prefix+redisHostsIndex, s.prefix+redisSourcesIndex
	score := func(key, member string) int64 {
		t.Helper()
		f, err := c.ZScore(ctx, key, member).Result()
		if errors.Is(err, redis.Nil) {
			return -1
		} else if err != nil {
			t.Fatal(err)
		}
		return int64(f)
	}
	now := time.Now()
	later := now.Add(2*time.Minute + 500*time.Microsecond)
	mustPut(t, s, Record{Host: "a.example", Reason: ReasonRetryAfter, Until: now.Add(time.Minute), At: now})
	mustPut(t, s, Record{Host: "a.example", Role: "r", Reason: ReasonBreakerOpen, Until: later, At: now})
	if got, want := score(hosts, "a.example"), ceilMilli(later); got != want {
		t.Errorf("score = %d, want %d (the latest Until, rounded up)", got, want)
	}
	// A reset deletes both records; the marker keeps the host indexed.
	mustPut(t, s, Record{Host: "a.example", Reason: ReasonReset, Until: now.Add(30 * time.Second), At: now.Add(time.Second)})
	if got, want := score(hosts, "a.example"), ceilMilli(now.Add(30*time.Second)); got != want {
		t.Errorf("score after reset = %d, want %d", got, want)
	}
	// A member that expired is not read, and the next write drops it.
	c.ZAdd(ctx, hosts, redis.Z{Score: float64(now.Add(-time.Second).UnixMilli()), Member: "gone.example"})
	c.HSet(ctx, s.key(redisKindCooldowns, "gone.example"), "c:", encodeRecord(Record{Host: "gone.example", Reason: ReasonManual, Until: now.Add(time.Hour), At: now}))
	if _, ok := find(mustRecords(t, s), "gone.example", "", false); ok {
		t.Error("Records read a host whose index member expired")
	}
	mustPut(t, s, Record{Host: "b.example", Reason: ReasonManual, Until: now.Add(time.Minute), At: now})
	if score(hosts, "gone.example") != -1 {
		t.Error("a write left an expired member in the hosts index")
	}

	// Sources.
	if err := s.PublishStates(ctx, "proc-1", nil, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := score(sources, "proc-1"); got < now.Add(time.Minute).UnixMilli() || got > time.Now().Add(time.Minute).UnixMilli()+1 {
		t.Errorf("source score = %d, want about %d", got, now.Add(time.Minute).UnixMilli())
	}
	c.ZAdd(ctx, sources, redis.Z{Score: 1, Member: "gone"})
	if err := s.PublishStates(ctx, "proc-1", nil, 0); err != nil {
		t.Fatal(err)
	}
	if score(sources, "proc-1") != -1 || score(sources, "gone") != -1 {
		t.Error("a ttl of 0 or an expired source left its member")
	}
}

// TestRedisPrefix checks that a prefix without a final ':' gets one: every
// key lives under prefix+":", a store opened with and one opened without
// the ':' are the same store, and one whose prefix merely starts the same
// is not.
func TestRedisPrefix(t *testing.T) {
	u := testRedisURL(t)
	withColon := prefixOf(t, u)
	bare := strings.TrimSuffix(withColon, ":")
	s := openTestRedis(t, withPrefix(t, u, bare))
	if s.prefix != withColon {
		t.Fatalf("prefix %q became %q, want %q", bare, s.prefix, withColon)
	}
	same := openTestRedis(t, u)
	longer := openTestRedis(t, withPrefix(t, u, bare+"x"))
	ctx := context.Background()
	now := time.Now()
	r := Record{Host: "p.example", Reason: ReasonManual, Until: now.Add(time.Minute), At: now}
	mustPut(t, s, r)
	if err := s.PublishStates(ctx, "src", []PublishedState{{Host: "p.example", State: StateOpen}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	keys, err := rawClient(t).Keys(ctx, globEscape(bare)+"*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("KEYS: %q, %v", keys, err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, withColon) {
			t.Errorf("key %q is not under %q", k, withColon)
		}
	}
	if rs := mustRecords(t, same); len(rs) != 1 || !sameRecord(rs[0], r) {
		t.Errorf("the store with the ':' sees %+v", rs)
	}
	if st, err := same.States(ctx); err != nil || len(st) != 1 {
		t.Errorf("the store with the ':' sees states %+v, %v", st, err)
	}
	if rs := mustRecords(t, longer); len(rs) != 0 {
		t.Errorf("prefix %q sees the records of %q: %+v", bare+"x", bare, rs)
	}
}

// BenchmarkRedisPut writes a cooldown that ends later each time, so that
// every Put changes the store, on one host of a store that holds 100.
func BenchmarkRedisPut(b *testing.B) {
	prefix := fmt.Sprintf("hbbench:%d-%d:", os.Getpid(), time.Now().UnixNano())
	st, err := OpenStore("redis://" + testRedisAddr + "/0?prefix=" + url.QueryEscape(prefix))
	if err != nil {
		b.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: testRedisAddr})
	b.Cleanup(func() {
		_ = st.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		_ = c.Close()
	})
	ctx := context.Background()
	now := time.Now()
	if err := st.Put(ctx, Record{Host: "warm.example", Reason: ReasonManual, Until: now.Add(time.Hour), At: now}); err != nil {
		b.Skipf("Redis unreachable: %v", err)
	}
	for i := range 100 {
		if err := st.Put(ctx, Record{Host: fmt.Sprintf("h%d.example", i), Reason: ReasonManual, Until: now.Add(time.Hour), At: now}); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	for b.Loop() {
		i++
		r := Record{Host: "bench.example", Reason: ReasonRetryAfter, Until: now.Add(time.Hour + time.Duration(i)*time.Microsecond), At: now}
		if err := st.Put(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if rs, err := st.Records(ctx); err != nil || len(rs) != 102 {
		b.Fatalf("Records: %d, %v", len(rs), err)
	}
}

// TestRedisSharedTurns: two stores on one prefix (two processes) take the
// turns of one host's shared bucket one interval apart, on Redis's clock;
// a turn further than the longest wait is refused and not taken; other
// hosts and prefixes have buckets of their own. Bounds are generous: waits are measured against this clock, and a
// round trip takes some of them.
func TestRedisSharedTurns(t *testing.T) {
	eachRedis(t, func(t *testing.T, rawURL string) {
		a, b := openTestRedis(t, rawURL), openTestRedis(t, rawURL)
		other := openTestRedis(t, withPrefix(t, rawURL, prefixOf(t, rawURL)+"other:"))
		ctx := context.Background()
		const interval, slack = time.Second, 300 * time.Millisecond
		start := time.Now()
		for i, s := range []*redisStore{a, b, a, b} {
			wait, ok, err := s.takeTurn(ctx, "api.test", interval, time.Minute)
			if err != nil || !ok {
				t.Fatalf("turn %d: %v, %v", i, ok, err)
			}
			want := time.Duration(i)*interval - time.Since(start)
			if wait < want-slack || wait > want+slack {
				t.Errorf("turn %d: wait %v, want about %v (one interval after the turn before)", i, wait, want)
			}
		}
		wait, ok, err := a.takeTurn(ctx, "api.test", interval, 2*time.Second)
		if err != nil || ok || wait < 3*interval-slack {
			t.Errorf("a turn 4 s away with a wait of 2 s: wait %v, taken %v, %v; want refused", wait, ok, err)
		}
		if wait, ok, _ := b.takeTurn(ctx, "api.test", interval, time.Minute); !ok || wait > 4*interval+slack {
			t.Errorf("the refused turn was taken: the next waits %v, want about 4s", wait)
		}
		for _, c := range []struct {
			s    *redisStore
			host string
		}{{a, "other.test"}, {other, "api.test"}} {
			if wait, ok, err := c.s.takeTurn(ctx, c.host, interval, time.Minute); err != nil || !ok || wait > slack {
				t.Errorf("%s: a first turn of its own bucket: wait %v, %v, %v; want none", c.host, wait, ok, err)
			}
		}
	})
}
