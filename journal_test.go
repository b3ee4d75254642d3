package hostbreaker

// Tests of the Transport's event journal: the events that traffic makes,
// their delivery to OpenTelemetry logs, a handler and the store, and the
// bounds of the in-memory and pending journals.

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
)

func attrsOf(r sdklog.Record) map[string]string {
	out := make(map[string]string)
	r.WalkAttributes(func(kv attribute.KeyValue) bool {
		out[string(kv.Key)] = kv.Value.String()
		return true
	})
	return out
}

func TestEventsFromTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exp := &memLogExporter{}
		lp := sdklog.NewLoggerProvider(sdklog.WithProcessor(sdklog.NewSimpleProcessor(exp)))
		var got eventLog
		base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
			switch req.URL.Host {
			case "sick.test":
				return status(500)(req)
			case "slow.test":
				return nil, timeoutError{}
			case "busy.test":
				return status(429, "Retry-After", "120")(req)
			}
			return status(200)(req)
		})
		cfg := Config{Defaults: Policy{FailMax: 3, ResetTimeout: time.Minute, HalfOpenJitter: -1},
			Telemetry: TelemetryConfig{Process: "worker-1", SummaryInterval: 10 * time.Second}}
		tr, err := NewTransport(base, WithConfig(cfg), WithLoggerProvider(lp), WithEventHandler(got.add))
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: tr}
		start := time.Now()
		for range 4 {
			do(t, c, RoleMetadata, "https://sick.test/works?secret=1")
			do(t, c, "", "https://slow.test/")
		}
		do(t, c, "", "https://busy.test/private/path")
		do(t, c, "", "https://ok.test/")
		if err := tr.UpdateHostPolicy("ok.test", Policy{FailMax: 4, ResetTimeout: 30 * time.Second}); err != nil {
			t.Fatal(err)
		}
		if err := tr.Reset("sick.test"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second) // a summary
		synctest.Wait()
		do(t, c, "", "https://ok.test/")
		tr.Close() // the last, partial summary

		opens := got.named(EventStateChange)
		var sick, slow *Event
		for i, ev := range opens {
			switch {
			case ev.Host == "sick.test" && ev.State == StateOpen:
				sick = &opens[i]
			case ev.Host == "slow.test" && ev.State == StateOpen:
				slow = &opens[i]
			}
		}
		if sick == nil || sick.Role != RoleMetadata || sick.PreviousState != StateClosed || sick.Failures != 3 ||
			sick.StatusCode != 500 || sick.Reason != ReasonBreakerOpen || !sick.Until.Equal(start.Add(time.Minute)) ||
			!strings.HasPrefix(sick.Process, "worker-1#") {
			t.Errorf("sick.test opening = %+v", sick)
		}
		if slow == nil || slow.ErrorType != "timeout" || slow.Failures != 3 {
			t.Errorf("slow.test opening = %+v", slow)
		}
		cds := got.named(EventCooldown)
		if len(cds) != 1 || cds[0].Host != "busy.test" || cds[0].Reason != ReasonRetryAfter || cds[0].StatusCode != 429 ||
			cds[0].RetryAfter != 120*time.Second || !cds[0].Until.Equal(start.Add(120*time.Second)) {
			t.Errorf("cooldowns = %+v", cds)
		}
		pcs := got.named(EventPolicyChange)
		if len(pcs) != 1 || pcs[0].Host != "ok.test" || pcs[0].PreviousPolicy != "fail_max = 3\nreset_timeout = \"1m0s\"" ||
			pcs[0].Policy != "fail_max = 4\nreset_timeout = \"30s\"" {
			t.Errorf("policy changes = %+v", pcs)
		}
		if rs := got.named(EventReset); len(rs) != 1 || rs[0].Host != "sick.test" {
			t.Errorf("resets = %+v", rs)
		}
		sums := got.named(EventSummary)
		byKey := map[string][]Summary{}
		for _, ev := range sums {
			byKey[ev.Host+"/"+ev.Role] = append(byKey[ev.Host+"/"+ev.Role], *ev.Summary)
		}
		if s := byKey["sick.test/metadata"]; len(s) != 1 || s[0].Requests != 4 || s[0].Failures != 3 || s[0].Rejected != 1 ||
			s[0].Status5xx != 3 || s[0].LongestFailureRun != 3 || s[0].Outcomes.String() == "" {
			t.Errorf("sick.test summaries = %+v", s)
		}
		if s := byKey["slow.test/"]; len(s) != 1 || s[0].Timeouts != 3 || s[0].Rejected != 1 {
			t.Errorf("slow.test summaries = %+v", s)
		}
		if s := byKey["busy.test/"]; len(s) != 1 || s[0].Status429 != 1 || s[0].Neutral != 1 {
			t.Errorf("busy.test summaries = %+v", s)
		}
		if s := byKey["ok.test/"]; len(s) != 2 || s[0].Successes != 1 || s[1].Successes != 1 {
			t.Errorf("ok.test summaries (one per interval with activity) = %+v", s)
		}

		// The same events, in the same order, went to the OTel logger.
		recs := exp.all()
		got.mu.Lock()
		all := got.events
		got.mu.Unlock()
		if len(recs) != len(all) {
			t.Fatalf("%d log records, %d events", len(recs), len(all))
		}
		for i, r := range recs {
			a := attrsOf(r)
			if r.EventName() != all[i].Name || a["server.address"] != all[i].Host {
				t.Errorf("record %d = %s %v, event %s %s", i, r.EventName(), a, all[i].Name, all[i].Host)
			}
			want := otellog.SeverityInfo
			if all[i].Name == EventCooldown || all[i].Name == EventStateChange && all[i].State == StateOpen {
				want = otellog.SeverityWarn
			}
			if r.Severity() != want {
				t.Errorf("record %d (%s) severity %v, want %v", i, r.EventName(), r.Severity(), want)
			}
			for k, v := range a {
				if strings.Contains(v, "secret") || strings.Contains(v, "/private") || strings.Contains(v, "works") {
					t.Errorf("record %d attribute %s = %q carries a path or query", i, k, v)
				}
			}
		}
		// The in-memory journal holds them too.
		if evs := tr.Events(time.Time{}); len(evs) != len(all) {
			t.Errorf("Events = %d, want %d", len(evs), len(all))
		}
		if evs := tr.Events(start.Add(5 * time.Second)); len(evs) == 0 || evs[0].Time.Before(start.Add(5*time.Second)) {
			t.Errorf("Events(since) = %+v", evs)
		}
	})
}

func TestInMemoryJournalIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{Telemetry: TelemetryConfig{JournalMaxEvents: 10, JournalRetention: time.Hour}}
		_, tr := client(t, newFakeHosts(status(200)), cfg)
		for i := range 30 {
			if err := tr.Open("a.test", time.Duration(i+1)*time.Minute, ""); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if evs := tr.Events(time.Time{}); len(evs) != 10 || evs[9].Until.Sub(evs[0].Until) != 9*time.Minute {
			t.Fatalf("journal = %d events", len(evs))
		}
		time.Sleep(2 * time.Hour)
		if err := tr.Reset("a.test"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if evs := tr.Events(time.Time{}); len(evs) != 1 || evs[0].Name != EventReset {
			t.Fatalf("after the retention, journal = %+v", evs)
		}
	})
}

// Two Transports of one process share a store: every event of both reaches
// the store's journal, under names of their own, and ReadJournal returns
// them in time order.
func TestJournalThroughTheStore(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		start := time.Now()
		cfg := Config{Defaults: Policy{FailMax: 1, ResetTimeout: time.Hour},
			Store:     StoreConfig{URL: url, PollInterval: time.Hour},
			Telemetry: TelemetryConfig{Process: "harvester"}}
		a, err := NewTransport(newFakeHosts(status(500)), WithConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		b, err := NewTransport(newFakeHosts(status(429, "Retry-After", "60")), WithConfig(cfg))
		if err != nil {
			t.Fatal(err)
		}
		do(t, &http.Client{Transport: a}, RoleLanding, "https://down.test/")
		do(t, &http.Client{Transport: b}, "", "https://busy.test/")
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		s, err := OpenStore(url)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		evs, err := ReadJournal(context.Background(), s, start)
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]string{}
		for i, ev := range evs {
			if i > 0 && ev.Time.Before(evs[i-1].Time) {
				t.Errorf("event %d out of order", i)
			}
			if !ev.Remote { // b's cooldown reaches a through the store too
				names[ev.Name+" "+ev.Host] = ev.Process
			}
		}
		pa, pb := names[EventStateChange+" down.test"], names[EventCooldown+" busy.test"]
		if pa == "" || pb == "" || pa == pb || !strings.HasPrefix(pa, "harvester#") || !strings.HasPrefix(pb, "harvester#") {
			t.Fatalf("journal = %+v", evs)
		}
		if names[EventSummary+" down.test"] != pa || names[EventSummary+" busy.test"] != pb {
			t.Errorf("the last summaries are missing from the journal: %v", names)
		}
	})
}

// While the store is down, the events for its journal wait in a bounded
// buffer: the oldest beyond it are dropped and counted, and no request
// waits or fails.
func TestJournalOutageIsBounded(t *testing.T) {
	var logs logBuffer
	cfg := Config{Store: StoreConfig{URL: "redis://127.0.0.1:1/0?prefix=dead", PollInterval: 50 * time.Millisecond}}
	tr, err := NewTransport(newFakeHosts(status(200)), WithConfig(cfg), WithLogger(logs.logger()))
	if err != nil {
		t.Fatal(err)
	}
	reply := make(chan struct{})
	tr.queries <- func() { tr.sink.maxOutbox = 5; close(reply) }
	<-reply
	c := &http.Client{Transport: tr}
	for i := range 20 {
		if err := tr.Open(fmt.Sprintf("h%d.test", i), time.Hour, ""); err != nil {
			t.Fatal(err)
		}
		mustPass(t, do(t, c, "", "https://ok.test/"), 200)
	}
	tr.Close()
	if n := tr.sink.outbox.len(); n != 5 {
		t.Errorf("pending = %d, want 5", n)
	}
	if tr.sink.lost < 15 {
		t.Errorf("lost = %d, want at least 15", tr.sink.lost)
	}
	if logs.count("journal events dropped") != 1 {
		t.Errorf("the drops were not logged once")
	}
	if evs := tr.sink.outbox.events(); evs[len(evs)-1].Name != EventSummary {
		last := evs[len(evs)-1]
		t.Errorf("the newest events are kept: last = %+v", last)
	}
}

func TestEventQueue(t *testing.T) {
	var q eventQueue
	base := time.Unix(1e9, 0)
	for i := range 1000 {
		q.push(Event{Name: EventReset, Time: base.Add(time.Duration(i))})
		if over := q.len() - 10; over > 0 {
			q.drop(over)
		}
		if cap(q.buf) > 64 {
			t.Fatalf("the buffer grew to %d for 10 events", cap(q.buf))
		}
	}
	evs := q.events()
	if len(evs) != 10 || !evs[0].Time.Equal(base.Add(990)) || !evs[9].Time.Equal(base.Add(999)) {
		t.Fatalf("queue = %v", evs)
	}
	for _, ev := range q.buf[len(q.buf):cap(q.buf)] {
		if ev.Name != "" {
			t.Fatal("a dropped event is still referenced")
		}
	}
	q.reset()
	if q.len() != 0 {
		t.Fatal("reset left events")
	}
}

// TestPolicyChangeValuesInForce: a policy_change carries the values in
// force before and after, also for a role that the change names and the
// configuration sets at another level (issue 16: "roles.landing.fail_max =
// 0" where 4 was in force), whether the change is UpdateHostPolicy's, a
// tuned override read from the store, or its revert, which has a note of
// its own.
func TestPolicyChangeValuesInForce(t *testing.T) {
	var log eventLog
	path := filepath.Join(t.TempDir(), "hb.db")
	cfg := Config{
		Defaults: Policy{Roles: map[string]Policy{RoleLanding: {FailMax: 4}}},
		Hosts:    map[string]Policy{"h.test": {ResetTimeout: 10 * time.Second}},
		Store:    StoreConfig{URL: path, PollInterval: 20 * time.Millisecond},
	}
	tr, err := NewTransport(cannedBase(200), WithConfig(cfg), WithEventHandler(log.add))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.UpdateHostPolicy("h.test", Policy{Roles: map[string]Policy{RoleLanding: {FailMax: 6}}}); err != nil {
		t.Fatal(err)
	}
	s := tr.sh.store
	mustPutOverride(t, s, "h.test", Policy{Roles: map[string]Policy{RoleLanding: {FailMax: 8, ResetTimeout: time.Minute}}})
	waitFor := func(n int) []Event {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if pcs := log.named(EventPolicyChange); len(pcs) >= n {
				return pcs
			}
			if time.Now().After(deadline) {
				t.Fatalf("policy changes: %+v", log.named(EventPolicyChange))
			}
		}
	}
	waitFor(2)
	mustPutOverride(t, s, "h.test", Policy{})
	pcs := waitFor(3)
	want := []struct{ prev, policy, note string }{
		{"roles.landing.fail_max = 4", "roles.landing.fail_max = 6", "UpdateHostPolicy"},
		{"roles.landing.fail_max = 6\nroles.landing.reset_timeout = \"10s\"", "roles.landing.fail_max = 8\nroles.landing.reset_timeout = \"1m0s\"", "tuned (read from the store)"},
		{"roles.landing.fail_max = 8\nroles.landing.reset_timeout = \"1m0s\"", "roles.landing.fail_max = 6\nroles.landing.reset_timeout = \"10s\"", "tuning reverted (read from the store)"},
	}
	for i, w := range want {
		if pcs[i].PreviousPolicy != w.prev || pcs[i].Policy != w.policy || pcs[i].Note != w.note {
			t.Errorf("change %d: %q → %q (%s), want %q → %q (%s)", i, pcs[i].PreviousPolicy, pcs[i].Policy, pcs[i].Note, w.prev, w.policy, w.note)
		}
	}
}
