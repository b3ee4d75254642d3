package hostbreaker

import (
	"context"
	"fmt"
	"maps"
	"math"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestOverrideEncoding(t *testing.T) {
	p := Policy{
		FailMax: 3, ResetTimeout: 45 * time.Second, Rate: 2.5,
		Roles: map[string]Policy{"pdf": {SuccessThreshold: 2, TrialCalls: 1}, "api": {ResetTimeout: time.Hour + time.Nanosecond}},
	}
	for _, key := range []string{"api.example.org", "*.example.org", "[::1]:8443", "xn--bcher-kva.example"} {
		v := encodeOverride(key, p)
		gotKey, got, err := decodeOverride(v)
		if err != nil || gotKey != key || !reflect.DeepEqual(got, p) {
			t.Errorf("decodeOverride(encodeOverride(%q)) = %q, %+v, %v; want the same", key, gotKey, got, err)
		}
	}
	if got := string(encodeOverride("a.example", Policy{ResetTimeout: 90 * time.Second})); got != `{"v":1,"key":"a.example","reset_timeout":"1m30s"}` {
		t.Errorf("stored form = %s", got)
	}
	// A rate, alone or not, exactly as it was written.
	for _, r := range []float64{0.001, 0.05, 1.0 / 3, 7.5, 123456.789, maxRate} {
		v := encodeOverride("a.example", Policy{Rate: r})
		if _, got, err := decodeOverride(v); err != nil || got.Rate != r {
			t.Errorf("rate %v: stored as %s, decoded %+v, %v", r, v, got, err)
		}
	}
	if got := string(encodeOverride("a.example", Policy{FailMax: 3, Rate: 4})); got != `{"v":1,"key":"a.example","fail_max":3,"rate":4}` {
		t.Errorf("stored form = %s", got)
	}
	// Overrides stored before the rate decode as they did.
	for v, want := range map[string]Policy{
		`{"v":1,"key":"a.example","fail_max":3,"roles":{"pdf":{"reset_timeout":"45s"}}}`: {FailMax: 3, Roles: map[string]Policy{"pdf": {ResetTimeout: 45 * time.Second}}},
		`{"v":1,"key":"a.example","trial_calls":2}`:                                      {TrialCalls: 2},
	} {
		if _, got, err := decodeOverride([]byte(v)); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("decodeOverride(%s) = %+v, %v; want %+v", v, got, err, want)
		}
	}
	bad := []string{
		``, `null`, `[]`, `"x"`, `{`, `{}`,
		`{"v":2,"key":"a.example","fail_max":3}`,                          // a version to come
		`{"v":0,"key":"a.example","fail_max":3}`,                          // no version
		`{"v":1,"fail_max":3}`,                                            // no key
		`{"v":1,"key":"A.example","fail_max":3}`,                          // not normalized
		`{"v":1,"key":"*.A.example","fail_max":3}`,                        // nor this wildcard
		`{"v":1,"key":"*.a.example:443","fail_max":3}`,                    // a wildcard with a port
		`{"v":1,"key":"a b","fail_max":3}`,                                // not a host
		`{"v":1,"key":"a.example"}`,                                       // sets nothing
		`{"v":1,"key":"a.example","roles":{"r":{}}}`,                      // nor this
		`{"v":1,"key":"a.example","fail_max":-1}`,                         // out of range
		`{"v":1,"key":"a.example","fail_max":1001}`,                       //
		`{"v":1,"key":"a.example","trial_calls":1.5}`,                     // not an int
		`{"v":1,"key":"a.example","fail_max":"3"}`,                        // a string
		`{"v":1,"key":"a.example","reset_timeout":"0s"}`,                  // not positive
		`{"v":1,"key":"a.example","reset_timeout":"-5s"}`,                 //
		`{"v":1,"key":"a.example","reset_timeout":"soon"}`,                // not a duration
		`{"v":1,"key":"a.example","reset_timeout":45}`,                    // a number
		`{"v":1,"key":"a.example","reset_timeout":"9999999999999999h"}`,   // overflows
		`{"v":1,"key":"a.example","roles":{"":{"fail_max":3}}}`,           // an empty role name
		`{"v":1,"key":"a.example","roles":{"r\u0000":{"fail_max":3}}}`,    // a NUL in a role name
		`{"v":1,"key":"a.example","roles":{"r":{"fail_max":0.5}}}`,        //
		`{"v":1,"key":"a.example","roles":{"r":{"reset_timeout":"-1s"}}}`, //
		`{"v":1,"key":"a.example","roles":[]}`,                            //
		`{"v":1,"key":"a.example","rate":-1}`,                             // unlimited: not a tuned rate
		`{"v":1,"key":"a.example","rate":1000001}`,                        // above maxRate
		`{"v":1,"key":"a.example","rate":1e-12}`,                          // below minRateBound: overflows a limiter
		`{"v":1,"key":"a.example","rate":0.0009}`,                         //
		`{"v":1,"key":"a.example","rate":"5"}`,                            // a string
		`{"v":1,"key":"a.example","roles":{"r":{"rate":5}}}`,              // host-wide, not in a role
		`{"v":1,"key":"a.example","fail_max":3,"roles":{"r":{"rate":5}}}`, //
	}
	for _, v := range bad {
		if key, p, err := decodeOverride([]byte(v)); err == nil {
			t.Errorf("decodeOverride(%s) = %q, %+v; want an error", v, key, p)
		}
	}
	// Unknown fields are ignored; roles that set nothing are dropped.
	key, got, err := decodeOverride([]byte(`{"v":1,"key":"a.example","trial_calls":2,"burst":5,"roles":{"r":{},"s":{"fail_max":4}}}`))
	if want := (Policy{TrialCalls: 2, Roles: map[string]Policy{"s": {FailMax: 4}}}); err != nil || key != "a.example" || !reflect.DeepEqual(got, want) {
		t.Errorf("decodeOverride = %q, %+v, %v; want a.example, %+v", key, got, err, want)
	}
}

func FuzzDecodeOverride(f *testing.F) {
	f.Add([]byte(`{"v":1,"key":"a.example","fail_max":3,"roles":{"pdf":{"reset_timeout":"45s"}}}`))
	f.Add([]byte(`{"v":1,"key":"*.example.org","trial_calls":2}`))
	f.Add([]byte(`{"v":1,"key":"a.example","reset_timeout":"1h0m0.5s","success_threshold":1000}`))
	f.Add(encodeOverride("[::1]:8443", Policy{FailMax: 2, Roles: map[string]Policy{"x": {TrialCalls: 3}}}))
	f.Add([]byte(`{"v":1,"key":"a.example","rate":0.25,"roles":{"pdf":{"fail_max":2}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		key, p, err := decodeOverride(data)
		if err != nil {
			return
		}
		if cerr := checkOverrideKey(key); cerr != nil {
			t.Fatalf("decoded key %q: %v", key, cerr)
		}
		tp, terr := tunedPolicy(p)
		if terr != nil || !reflect.DeepEqual(tp, p) || emptyTuned(p) {
			t.Fatalf("decoded policy %+v is not a tuned one (%+v, %v)", p, tp, terr)
		}
		key2, p2, err := decodeOverride(encodeOverride(key, p))
		if err != nil || key2 != key || !reflect.DeepEqual(p2, p) {
			t.Fatalf("re-encoding %q %+v gave %q %+v %v", key, p, key2, p2, err)
		}
	})
}

// TestStoreOverrides checks PutOverride and Overrides on both stores:
// put, read (from another store of the same file or prefix too), replace,
// remove, and the refusal of invalid keys and policies.
func TestStoreOverrides(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		other := s.open()
		checkOverrides(t, mustOverrides(t, s), nil)

		a := Policy{FailMax: 3, ResetTimeout: 45 * time.Second, Rate: 2.5}
		w := Policy{TrialCalls: 2, Roles: map[string]Policy{"pdf": {SuccessThreshold: 2}}}
		mustPutOverride(t, s, "api.example.org", a)
		mustPutOverride(t, s, "*.example.net", w)
		want := map[string]Policy{"api.example.org": a, "*.example.net": w}
		checkOverrides(t, mustOverrides(t, s), want)
		checkOverrides(t, mustOverrides(t, other), want)

		// The map and its policies are the caller's.
		got := mustOverrides(t, s)
		got["*.example.net"].Roles["pdf"] = Policy{FailMax: 9}
		delete(got, "api.example.org")
		checkOverrides(t, mustOverrides(t, s), want)

		// Replace: the whole policy of the key, not a merge.
		a2 := Policy{SuccessThreshold: 3, Roles: map[string]Policy{"metadata": {FailMax: 4, ResetTimeout: time.Minute}}}
		mustPutOverride(t, other, "api.example.org", a2)
		want["api.example.org"] = a2
		checkOverrides(t, mustOverrides(t, s), want)

		// Roles that set nothing are dropped.
		mustPutOverride(t, s, "[::1]:8443", Policy{FailMax: 2, Roles: map[string]Policy{"none": {}}})
		want["[::1]:8443"] = Policy{FailMax: 2}
		checkOverrides(t, mustOverrides(t, other), want)

		// A rate alone, and a rate replaced.
		mustPutOverride(t, s, "*.rate.example", Policy{Rate: 0.05})
		mustPutOverride(t, other, "api.example.org", Policy{Rate: 1.0 / 3, Roles: a2.Roles})
		want["*.rate.example"] = Policy{Rate: 0.05}
		want["api.example.org"] = Policy{Rate: 1.0 / 3, Roles: a2.Roles}
		checkOverrides(t, mustOverrides(t, s), want)
		mustPutOverride(t, s, "*.rate.example", Policy{})
		delete(want, "*.rate.example")
		checkOverrides(t, mustOverrides(t, other), want)

		// Remove, with a zero Policy or one whose roles set nothing; removing
		// what is not there is not an error.
		mustPutOverride(t, s, "api.example.org", Policy{})
		mustPutOverride(t, s, "*.example.net", Policy{Roles: map[string]Policy{"pdf": {}}})
		mustPutOverride(t, s, "absent.example", Policy{})
		delete(want, "api.example.org")
		delete(want, "*.example.net")
		checkOverrides(t, mustOverrides(t, s), want)
		checkOverrides(t, mustOverrides(t, other), want)

		// Invalid keys and policies are refused and write nothing.
		for _, c := range []struct {
			key string
			p   Policy
		}{
			{"", Policy{FailMax: 3}},
			{"API.example.org", Policy{FailMax: 3}},
			{"api.example.org.", Policy{FailMax: 3}},
			{"https://api.example.org/", Policy{FailMax: 3}},
			{"api.example.org:443x", Policy{FailMax: 3}},
			{"*.Example.org", Policy{FailMax: 3}},
			{"*.example.org:443", Policy{FailMax: 3}},
			{"*example.org", Policy{FailMax: 3}},
			{"*.", Policy{FailMax: 3}},
			{"a b", Policy{FailMax: 3}},
			{"API.example.org", Policy{}}, // a removal too
			{"ok.example", Policy{FailMax: 3, RetryAfterCap: time.Minute}},
			{"ok.example", Policy{FailMax: 3, HalfOpenJitter: -1}},
			{"ok.example", Policy{FailMax: 3, FailureStatuses: []int{}}},
			{"ok.example", Policy{NeutralStatuses: []int{404}}},
			{"ok.example", Policy{FailMax: -1}},
			{"ok.example", Policy{FailMax: maxCount + 1}},
			{"ok.example", Policy{TrialCalls: -2}},
			{"ok.example", Policy{ResetTimeout: -time.Second}},
			{"ok.example", Policy{Roles: map[string]Policy{"": {FailMax: 3}}}},
			{"ok.example", Policy{Roles: map[string]Policy{"r": {FailMax: 3, Roles: map[string]Policy{"s": {FailMax: 2}}}}}},
			{"ok.example", Policy{Roles: map[string]Policy{"r": {SuccessThreshold: maxCount + 1}}}},
			{"ok.example", Policy{Roles: map[string]Policy{"r": {FailureStatuses: []int{500}}}}},
			{"ok.example", Policy{Rate: -1}}, // unlimited
			{"ok.example", Policy{Rate: maxRate * 2}},
			{"ok.example", Policy{Rate: 1e-12}},
			{"ok.example", Policy{Rate: 0.0009}},
			{"ok.example", Policy{Rate: math.NaN()}},
			{"ok.example", Policy{Rate: math.Inf(1)}},
			{"ok.example", Policy{FailMax: 3, Roles: map[string]Policy{"r": {Rate: 5}}}}, // host-wide
			{"ok.example", Policy{Rate: 5, Burst: 2}},
			{"ok.example", Policy{Rate: 5, MinRate: 1}},
			{"ok.example", Policy{Rate: 5, Adaptive: ToggleOff}},
			{"ok.example", Policy{Rate: 5, MaxWait: time.Second}},
			{"ok.example", Policy{Rate: 5, ThrottleStatuses: []int{503}}},
		} {
			if err := s.PutOverride(ctx, c.key, c.p); err == nil {
				t.Errorf("PutOverride(%q, %+v) = nil; want an error", c.key, c.p)
			}
		}
		checkOverrides(t, mustOverrides(t, s), want)
		checkOverrides(t, mustOverrides(t, other), want)

		// A canceled context is an error.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.PutOverride(cctx, "c.example", Policy{FailMax: 3}); err == nil {
			t.Error("PutOverride with a canceled context = nil")
		}
		if _, err := s.Overrides(cctx); err == nil {
			t.Error("Overrides with a canceled context = nil")
		}
	})
}

// TestBoltOverridesSkipJunkAndCache checks that a bbolt store skips entries
// of its overrides bucket that do not decode as the override of their key,
// that a poll of an unchanged file reads nothing, and that a PutOverride
// that changes nothing leaves the file, and the other processes' caches,
// as they are.
func TestBoltOverridesSkipJunkAndCache(t *testing.T) {
	path := boltTestPath(t)
	s := boltTestOpen(t, path)
	s2 := boltTestOpen(t, path)
	p := Policy{FailMax: 4}
	mustPutOverride(t, s, "good.example", p)
	boltTestRaw(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(boltOverrides)
		for k, v := range map[string]string{
			"junk.example":    `{"v":1,"key":`,
			"newer.example":   `{"v":2,"key":"newer.example","fail_max":3}`,
			"moved.example":   string(encodeOverride("elsewhere.example", p)),
			"Upper.example":   string(encodeOverride("Upper.example", p)),
			"empty.example":   `{"v":1,"key":"empty.example"}`,
			"bad-dur.example": `{"v":1,"key":"bad-dur.example","reset_timeout":"0s"}`,
			"slow.example":    `{"v":1,"key":"slow.example","rate":1e-12}`,
		} {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		_, err := b.CreateBucket([]byte("nested.example"))
		return err
	})
	want := map[string]Policy{"good.example": p}
	checkOverrides(t, mustOverrides(t, s), want)
	checkOverrides(t, mustOverrides(t, s2), want)

	// Polls of an unchanged file, of any kind, answer from the cached read.
	reads := s2.fullReads.Load()
	for range 5 {
		mustOverrides(t, s2)
		boltTestRecords(t, s2)
		if _, err := s2.States(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// As does one after a PutOverride that changed nothing.
	mustPutOverride(t, s, "good.example", p)
	mustPutOverride(t, s, "absent.example", Policy{})
	checkOverrides(t, mustOverrides(t, s2), want)
	if n := s2.fullReads.Load() - reads; n != 0 {
		t.Errorf("%d full reads of an unchanged file", n)
	}
	// A change is read at the next poll.
	mustPutOverride(t, s, "good.example", Policy{FailMax: 5})
	checkOverrides(t, mustOverrides(t, s2), map[string]Policy{"good.example": {FailMax: 5}})
	if n := s2.fullReads.Load() - reads; n != 1 {
		t.Errorf("%d full reads after one change; want 1", n)
	}
	// A PutOverride replaces or removes junk under its key.
	mustPutOverride(t, s, "junk.example", Policy{TrialCalls: 2})
	mustPutOverride(t, s, "empty.example", Policy{})
	checkOverrides(t, mustOverrides(t, s), map[string]Policy{"good.example": {FailMax: 5}, "junk.example": {TrialCalls: 2}})
	if keys := boltTestKeys(t, path, boltOverrides); strings.Contains(strings.Join(keys, " "), "empty.example") {
		t.Errorf("empty.example still in the bucket: %q", keys)
	}

	// A store that has never had an override: removing writes nothing.
	path3 := boltTestPath(t)
	s3 := boltTestOpen(t, path3)
	reads3 := s3.fullReads.Load()
	mustOverrides(t, s3)
	mustPutOverride(t, s3, "x.example", Policy{})
	mustOverrides(t, s3)
	if n := s3.fullReads.Load() - reads3; n != 1 {
		t.Errorf("%d full reads; want 1 (removing an override from an empty file must not write)", n)
	}
	if keys := boltTestKeys(t, path3, boltOverrides); len(keys) != 0 {
		t.Errorf("overrides bucket of an empty file holds %q", keys)
	}
}

// TestRedisOverridesSkipJunk checks that a Redis store skips fields of the
// overrides hash that do not decode as the override of their key, and a
// key of another type.
func TestRedisOverridesSkipJunk(t *testing.T) {
	u := testRedisURL(t)
	s := openTestRedis(t, u)
	raw := rawClient(t)
	ctx := context.Background()
	hkey := prefixOf(t, u) + redisOverrides
	p := Policy{ResetTimeout: 2 * time.Minute}
	mustPutOverride(t, s, "*.good.example", p)
	if got, err := raw.HKeys(ctx, hkey).Result(); err != nil || !reflect.DeepEqual(got, []string{url.QueryEscape("*.good.example")}) {
		t.Fatalf("fields of %s = %q, %v", hkey, got, err)
	}
	for f, v := range map[string]string{
		"junk.example":             `{"v":1,"key":`,
		"newer.example":            `{"v":2,"key":"newer.example","fail_max":3}`,
		"moved.example":            string(encodeOverride("elsewhere.example", p)),
		"*.good.example":           string(encodeOverride("*.good.example", Policy{FailMax: 9})), // not escaped: not its field
		"%zz":                      `{"v":1,"key":"%zz","fail_max":3}`,
		url.QueryEscape("e.x"):     `{"v":1,"key":"e.x","fail_max":0}`,
		url.QueryEscape("s.x"):     `{"v":1,"key":"s.x","rate":1e-12}`,
		url.QueryEscape("[::1]:1"): string(encodeOverride("[::1]:1", Policy{TrialCalls: 3})),
	} {
		if err := raw.HSet(ctx, hkey, f, v).Err(); err != nil {
			t.Fatal(err)
		}
	}
	checkOverrides(t, mustOverrides(t, s), map[string]Policy{"*.good.example": p, "[::1]:1": {TrialCalls: 3}})

	// Overrides reads one hash, with one command.
	var counter cmdCounter
	s.client.AddHook(&counter)
	mustOverrides(t, s)
	if got := counter.take(); !reflect.DeepEqual(got, []string{"hgetall"}) {
		t.Errorf("Overrides sent %q; want one hgetall", got)
	}

	// A key of another type reads as no override; writing fails.
	if err := raw.Set(ctx, hkey, "x", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	checkOverrides(t, mustOverrides(t, s), nil)
	if err := s.PutOverride(ctx, "a.example", Policy{FailMax: 3}); err == nil {
		t.Error("PutOverride over a string key = nil; want an error")
	}
}

// TestRedisOverrideChanges checks that a PutOverride that changes the
// overrides signals every store of the prefix, and only those, and that one
// that changes nothing signals none.
func TestRedisOverrideChanges(t *testing.T) {
	u := testRedisURL(t)
	a := openTestRedis(t, u)
	b := openTestRedis(t, u)
	other := openTestRedis(t, withPrefix(t, u, prefixOf(t, u)+"other:"))
	for _, s := range []Store{a, b, other} {
		if !waitChange(s, 3*time.Second) {
			t.Fatal("no signal when the subscription was established")
		}
	}
	steps := []struct {
		name    string
		key     string
		p       Policy
		changes bool
	}{
		{"put", "api.example.org", Policy{FailMax: 3}, true},
		{"same again", "api.example.org", Policy{FailMax: 3}, false},
		{"replace", "api.example.org", Policy{FailMax: 3, Roles: map[string]Policy{"pdf": {TrialCalls: 2}}}, true},
		{"wildcard", "*.example.org", Policy{ResetTimeout: time.Minute}, true},
		{"remove", "api.example.org", Policy{}, true},
		{"remove again", "api.example.org", Policy{}, false},
	}
	for _, st := range steps {
		mustPutOverride(t, a, st.key, st.p)
		if st.changes {
			if !waitChange(b, 2*time.Second) {
				t.Fatalf("%s: b saw no change after a's PutOverride", st.name)
			}
			if !waitChange(a, 2*time.Second) {
				t.Fatalf("%s: a saw no change after its own PutOverride", st.name)
			}
		} else if waitChange(b, 200*time.Millisecond) {
			t.Errorf("%s: a PutOverride that changed nothing signalled", st.name)
		}
		drain(a)
	}
	if waitChange(other, 200*time.Millisecond) {
		t.Error("a store under another prefix was signalled")
	}
	checkOverrides(t, mustOverrides(t, other), nil)
	checkOverrides(t, mustOverrides(t, b), map[string]Policy{"*.example.org": {ResetTimeout: time.Minute}})
}

// TestRedisConcurrentPutOverride checks that concurrent PutOverrides of
// different keys through different stores all land.
func TestRedisConcurrentPutOverride(t *testing.T) {
	u := testRedisURL(t)
	stores := []Store{openTestRedis(t, u), openTestRedis(t, u), openTestRedis(t, u)}
	want := make(map[string]Policy)
	for i := range 60 {
		want[fmt.Sprintf("h%d.example", i)] = Policy{FailMax: 2 + i%9}
	}
	var wg sync.WaitGroup
	for i, key := range slices.Sorted(maps.Keys(want)) {
		wg.Go(func() {
			if err := stores[i%len(stores)].PutOverride(context.Background(), key, want[key]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	checkOverrides(t, mustOverrides(t, stores[0]), want)
}
