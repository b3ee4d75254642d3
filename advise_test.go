package hostbreaker

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/advise")

// adviseT0 is the start of every synthetic journal.
var adviseT0 = time.Date(2025, 11, 28, 10, 0, 0, 0, time.UTC)

// sec returns adviseT0 plus s seconds.
func sec(s int) time.Time { return adviseT0.Add(time.Duration(s) * time.Second) }

// parseRuns parses outcome runs written "s40@0 f5@40 r10@45": a kind (s,
// f, r), a count, and the run's At in seconds after adviseT0.
func parseRuns(t testing.TB, spec string) Outcomes {
	t.Helper()
	var out Outcomes
	for _, f := range strings.Fields(spec) {
		count, at, ok := strings.Cut(f[1:], "@")
		n, err1 := strconv.ParseUint(count, 10, 64)
		s, err2 := strconv.Atoi(at)
		kind := OutcomeKind(strings.IndexByte("?sfr", f[0]))
		if !ok || err1 != nil || err2 != nil || kind < OutcomeSuccess {
			t.Fatalf("bad run %q", f)
		}
		out = append(out, OutcomeRun{Kind: kind, Count: n, At: sec(s)})
	}
	return out
}

// synthJournal builds synthetic events for one (host, role) of one process.
type synthJournal struct {
	t                   testing.TB
	host, role, process string
	events              []Event
}

func newJournal(t testing.TB, host, role, process string) *synthJournal {
	return &synthJournal{t: t, host: host, role: role, process: process}
}

func (j *synthJournal) event(name string, at int) *Event {
	j.events = append(j.events, Event{Name: name, Time: sec(at), Process: j.process, Host: j.host, Role: j.role})
	return &j.events[len(j.events)-1]
}

// summary adds a summary ending at end with the outcome runs of spec; its
// counts follow from the runs, plus neutral outcomes and the probes.
func (j *synthJournal) summary(end int, spec string, neutral, probesOK, probesFail uint64) {
	s := &Summary{Outcomes: parseRuns(j.t, spec), Neutral: neutral, ProbesOK: probesOK, ProbesFail: probesFail}
	for _, r := range s.Outcomes {
		switch r.Kind {
		case OutcomeSuccess:
			s.Successes += r.Count
		case OutcomeFailure:
			s.Failures += r.Count
		case OutcomeRejected:
			s.Rejected += r.Count
		}
	}
	s.Requests = s.Successes + s.Failures + s.Neutral + s.Rejected
	ev := j.event(EventSummary, end)
	ev.Interval, ev.Summary = time.Minute, s
}

// healthy adds a summary of n successes and nothing else.
func (j *synthJournal) healthy(end int, n uint64) {
	ev := j.event(EventSummary, end)
	ev.Interval, ev.Summary = time.Minute, &Summary{Requests: n, Successes: n}
}

// change adds a state change.
func (j *synthJournal) change(at int, from, to State) *Event {
	ev := j.event(EventStateChange, at)
	ev.PreviousState, ev.State = from, to
	if to == StateOpen {
		ev.Reason = ReasonBreakerOpen
	}
	return ev
}

// trip adds an opening at open and then, for each probe, a half-open and
// the probe's result: a negative time is a failed probe (the breaker
// reopens), a positive one a probe that closes it.
func (j *synthJournal) trip(open int, probes ...int) {
	j.change(open, StateClosed, StateOpen).Failures = 5
	for _, p := range probes {
		if p < 0 {
			j.change(-p, StateOpen, StateHalfOpen)
			j.change(-p, StateHalfOpen, StateOpen).Failures = 1
			continue
		}
		j.change(p, StateOpen, StateHalfOpen)
		j.change(p, StateHalfOpen, StateClosed)
	}
}

// retryAfter adds a Retry-After cooldown of the host.
func (j *synthJournal) retryAfter(at int, d time.Duration) {
	ev := j.event(EventCooldown, at)
	ev.Role, ev.Reason, ev.StatusCode, ev.RetryAfter, ev.Until = "", ReasonRetryAfter, 429, d, sec(at).Add(d)
}

// counts adds a summary ending at end that covers interval, with these
// counts and no outcome runs.
func (j *synthJournal) counts(end int, interval time.Duration, requests, successes, failures, status429 uint64) {
	ev := j.event(EventSummary, end)
	ev.Interval = interval
	ev.Summary = &Summary{Requests: requests, Successes: successes, Failures: failures, Status429: status429}
}

// rateChange adds a rate change of the host's limiter: the rate after and
// before, the learnt limit, and why.
func (j *synthJournal) rateChange(at int, rate, previous, lastMax float64, note string) {
	ev := j.event(EventRateChange, at)
	ev.Role, ev.Rate, ev.PreviousRate, ev.LastMax, ev.Note = "", rate, previous, lastMax, note
	if note == "throttled" {
		ev.StatusCode = 429
	}
}

// The synthetic journals of the golden tests, one per rule.

// journalRetryAfter: rule 2. One trip; the host sent three Retry-After
// values, median 45s.
func journalRetryAfter(t testing.TB) []Event {
	j := newJournal(t, "api.example.org", "", "web-1:100#1")
	j.retryAfter(40, 30*time.Second)
	j.retryAfter(42, 2*time.Minute)
	j.retryAfter(43, 45*time.Second)
	j.trip(44, 104)
	j.summary(60, "s40@40 f5@40 r10@45", 0, 0, 0)
	j.summary(120, "r50@60 s30@120", 0, 1, 0)
	return j.events
}

// journalOpenDurations: rule 3. Two trips, closed after 80s and 100s by
// their first probe; the failure runs that ended in a success are short.
func journalOpenDurations(t testing.TB) []Event {
	j := newJournal(t, "slow.example.org", "", "web-1:100#1")
	j.trip(24, 104)
	j.trip(204, 304)
	j.summary(360, "s100@10 f2@10 s50@20 f5@20 r30@25 s40@104 f5@200 r20@205 s60@304", 0, 2, 0)
	return j.events
}

// journalFlapping: rules 3, 4, 5 and the long-outage half of 6. Three
// trips, each reopened by a failed first probe and closed by the second,
// 2m after opening.
func journalFlapping(t testing.TB) []Event {
	j := newJournal(t, "flaky.example.org", "", "web-1:100#1")
	j.trip(4, -64, 124)
	j.trip(304, -364, 424)
	j.trip(604, -664, 724)
	j.summary(300, "f5@0 r20@5 f1@64 r20@65 s10@124 s20@200", 0, 1, 1)
	j.summary(600, "f5@300 r20@305 f1@364 r20@365 s10@424", 0, 1, 1)
	j.summary(900, "f5@600 r20@605 f1@664 r20@665 s10@724", 0, 1, 1)
	return j.events
}

// journalProbes: rule 5. One trip whose probes failed twice, then
// succeeded; the host's policy has trial_calls 3.
func journalProbes(t testing.TB) []Event {
	j := newJournal(t, "probe.example.org", "search", "web-1:100#1")
	j.trip(24, -84, -144, 204)
	j.summary(240, "s100@20 f5@20 r30@25 f3@84 r30@85 f3@144 r30@145 s50@204", 3, 1, 2)
	return j.events
}

// probesConfig is the configuration of journalProbes: trial_calls 3.
func probesConfig() Config {
	return Config{Hosts: map[string]Policy{"probe.example.org": {TrialCalls: 3}}}
}

// journalTransient: rule 6, transient trips. Bursts of 4 failures (fail_max
// 5 − 1) end in successes; two trips, both closed by the first probe, 60s
// after opening (which rule 3 finds equal to reset_timeout: no advice).
func journalTransient(t testing.TB) []Event {
	j := newJournal(t, "burst.example.org", "feed", "web-1:100#1")
	j.trip(34, 94)
	j.trip(104, 164)
	j.summary(180, "s20@0 f4@0 s20@10 f4@10 s20@20 f4@20 s20@30 f5@30 r20@35 s20@94 f4@94 s20@100 f5@100 r20@105 s20@164 f4@164 s10@170", 0, 2, 0)
	return j.events
}

// journalOutage: rule 6, long outages. Two trips whose first probe failed.
func journalOutage(t testing.TB) []Event {
	j := newJournal(t, "down.example.org", "", "web-1:100#1")
	j.trip(4, -64, 124)
	j.trip(304, -364, 424)
	j.summary(300, "f5@0 r20@5 f1@64 r20@65 s10@124 s20@200", 0, 1, 1)
	j.summary(600, "f5@300 r20@305 f1@364 r20@365 s10@424", 0, 1, 1)
	return j.events
}

// journalRate429: rule 1 on the successful request rate. 12 of the 200
// requests of busy.example.org answered 429, in two processes and two
// roles: web-1's summaries cover 0–120s (both roles the same span), web-2's
// 60–120s, 3m in all, with 180 successes: 1 r/s.
func journalRate429(t testing.TB) []Event {
	a := newJournal(t, "busy.example.org", "", "web-1:100#1")
	a.counts(60, time.Minute, 60, 54, 6, 4)
	a.counts(120, time.Minute, 60, 54, 6, 4)
	s := newJournal(t, "busy.example.org", "search", "web-1:100#1")
	s.counts(60, time.Minute, 20, 18, 2, 1)
	s.counts(120, time.Minute, 20, 18, 2, 1)
	b := newJournal(t, "busy.example.org", "", "web-2:200#1")
	b.counts(120, time.Minute, 40, 36, 4, 2)
	return slices.Concat(a.events, s.events, b.events)
}

// journalRateLearnt: rule 1 on the rate the limiter learnt. Three hosts
// answered 10 % 429s and their limiters throttled: learnt.example.org's
// latest limit is 5 r/s; capped.example.org, whose configured rate is 10,
// learnt the same, and its step is at most 25 %; expired.example.org's
// learnt limit expired, so its successful request rate counts, 1.5 r/s.
func journalRateLearnt(t testing.TB) []Event {
	var events []Event
	for _, host := range []string{"learnt.example.org", "capped.example.org", "expired.example.org"} {
		j := newJournal(t, host, "", "web-1:100#1")
		j.counts(60, time.Minute, 100, 90, 10, 10)
		j.rateChange(20, 2.1, 0, 3, "throttled")
		j.rateChange(50, 3.5, 2.1, 5, "reanchored")
		if host == "expired.example.org" {
			j.rateChange(55, 0, 3.5, 0, "expired")
		}
		events = append(events, j.events...)
	}
	return events
}

// rateLearntConfig is the configuration of journalRateLearnt.
func rateLearntConfig() Config {
	return Config{Hosts: map[string]Policy{"capped.example.org": {Rate: 10}}}
}

// journalRateRecovery: rule 7. Five hosts whose rate is tuned down to 4
// (near.example.org to 9.5) sent 200 requests each: calm, near and open
// without a 429 or a failure, still429 with one 429 (0.5 %, too few for
// rule 1), failing with one failure. The configured rate is 10, but for
// open.example.org, unlimited.
func journalRateRecovery(t testing.TB) []Event {
	var events []Event
	for _, host := range []string{"calm.example.org", "near.example.org", "open.example.org", "still429.example.org", "failing.example.org"} {
		j := newJournal(t, host, "", "web-1:100#1")
		j.healthy(60, 100)
		switch host {
		case "still429.example.org":
			j.counts(120, time.Minute, 100, 99, 1, 1)
		case "failing.example.org":
			j.counts(120, time.Minute, 100, 99, 1, 0)
		default:
			j.healthy(120, 100)
		}
		events = append(events, j.events...)
	}
	return events
}

// rateRecoveryConfig and rateRecoveryOverrides are the configuration and
// the tuned overrides of journalRateRecovery.
func rateRecoveryConfig() Config {
	return Config{Hosts: map[string]Policy{
		"calm.example.org": {Rate: 10}, "near.example.org": {Rate: 10},
		"still429.example.org": {Rate: 10}, "failing.example.org": {Rate: 10},
	}}
}

func rateRecoveryOverrides() map[string]Policy {
	return map[string]Policy{
		"calm.example.org": {Rate: 4}, "near.example.org": {Rate: 9.5}, "open.example.org": {Rate: 4},
		"still429.example.org": {Rate: 4}, "failing.example.org": {Rate: 4},
	}
}

var adviseScenarios = []struct {
	name      string
	journal   func(testing.TB) []Event
	cfg       Config
	overrides map[string]Policy
}{
	{"rate_429", journalRate429, Config{}, nil},
	{"retry_after", journalRetryAfter, Config{}, nil},
	{"open_durations", journalOpenDurations, Config{}, nil},
	{"flapping", journalFlapping, Config{}, nil},
	{"probes", journalProbes, probesConfig(), nil},
	{"transient", journalTransient, Config{}, nil},
	{"outage", journalOutage, Config{}, nil},
	{"rate_learnt", journalRateLearnt, rateLearntConfig(), nil},
	{"rate_recovery", journalRateRecovery, rateRecoveryConfig(), rateRecoveryOverrides()},
}

// TestAdviseGolden checks Advise on each rule's synthetic journal against
// testdata/advise/NAME.golden; -update rewrites them.
func TestAdviseGolden(t *testing.T) {
	for _, sc := range adviseScenarios {
		t.Run(sc.name, func(t *testing.T) {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(Advise(sc.journal(t), sc.cfg, sc.overrides)); err != nil {
				t.Fatal(err)
			}
			got := buf.Bytes()
			path := filepath.Join("testdata", "advise", sc.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test -run TestAdviseGolden -update creates it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Advise differs from %s (-update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

// findAdvice returns the advice for key, failing the test without it.
func findAdvice(t *testing.T, advice []Advice, host, role, key string) Advice {
	t.Helper()
	for _, a := range advice {
		if a.Host == host && a.Role == role && a.Key == key {
			return a
		}
	}
	t.Fatalf("no advice for %s %q %s in %+v", host, role, key, advice)
	return Advice{}
}

// adviceKeys returns the keys of advice, in order.
func adviceKeys(advice []Advice) []string {
	var ks []string
	for _, a := range advice {
		ks = append(ks, a.Host+" "+a.Role+" "+a.Key)
	}
	return ks
}

// TestAdviseRules checks each rule's proposal, reason and replay on its
// journal: what the golden files hold, stated by hand.
func TestAdviseRules(t *testing.T) {
	t.Run("retry_after", func(t *testing.T) {
		got := Advise(journalRetryAfter(t), Config{}, nil)
		if len(got) != 1 {
			t.Fatalf("got %v, want one advice", adviceKeys(got))
		}
		a := findAdvice(t, got, "api.example.org", "", "reset_timeout")
		want := Advice{Host: "api.example.org", Key: "reset_timeout", From: FromConfig, Current: "1m0s", Proposed: "45s",
			Reason: "opened 1 time; the host sent 3 Retry-After values, median 45s",
			// The five failures at 40–44s trip both; the successes come at 120s, after either delay.
			Replay: &Replay{FailuresSentCurrent: 5, FailuresSentProposed: 5, Unknown: 60}}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("got %+v\nwant %+v", a, want)
		}
	})
	t.Run("open_durations", func(t *testing.T) {
		got := Advise(journalOpenDurations(t), Config{}, nil)
		if len(got) != 1 {
			t.Fatalf("got %v, want one advice", adviceKeys(got))
		}
		a := findAdvice(t, got, "slow.example.org", "", "reset_timeout")
		want := Advice{Host: "slow.example.org", Key: "reset_timeout", From: FromConfig, Current: "1m0s", Proposed: "1m30s",
			Reason: "tripped 2 times; median time from open to closed 1m30s over 2 closed trips",
			// Failures 2 + 5 + 5 are sent under either. Opened at 24s for
			// 90s, the breaker blocks the successes of s40@104 (spread
			// 2.4s apart) until 114s: 104, 106.4, 108.8, 111.2, 113.6.
			Replay: &Replay{FailuresSentCurrent: 12, FailuresSentProposed: 12, SuccessesBlockedProposed: 5, Unknown: 50}}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("got %+v\nwant %+v", a, want)
		}
	})
	t.Run("flapping", func(t *testing.T) {
		got := Advise(journalFlapping(t), Config{}, nil)
		if want := []string{"flaky.example.org  fail_max", "flaky.example.org  reset_timeout", "flaky.example.org  success_threshold"}; !reflect.DeepEqual(adviceKeys(got), want) {
			t.Fatalf("got %v, want %v", adviceKeys(got), want)
		}
		a := findAdvice(t, got, "flaky.example.org", "", "reset_timeout")
		if a.Proposed != "2m0s" || !strings.Contains(a.Reason, "× 1.5") {
			t.Errorf("got %+v", a)
		}
		a = findAdvice(t, got, "flaky.example.org", "", "fail_max")
		if a.Proposed != "3" || a.Reason != "tripped 3 times, each a long outage whose first probe failed; fail_max 5 > 3" {
			t.Errorf("got %+v", a)
		}
	})
	t.Run("probes", func(t *testing.T) {
		got := Advise(journalProbes(t), probesConfig(), nil)
		if want := []string{"probe.example.org search success_threshold", "probe.example.org search trial_calls"}; !reflect.DeepEqual(adviceKeys(got), want) {
			t.Fatalf("got %v, want %v", adviceKeys(got), want)
		}
		st := findAdvice(t, got, "probe.example.org", "search", "success_threshold")
		tc := findAdvice(t, got, "probe.example.org", "search", "trial_calls")
		const reason = "half-open probes failed 2 of 3 times"
		if st.Current != "1" || st.Proposed != "2" || st.Reason != reason || tc.Current != "3" || tc.Proposed != "1" || tc.Reason != reason {
			t.Errorf("got %+v and %+v", st, tc)
		}
		// Current: 5 failures trip at 24s; each failed wave of 3 probes
		// (84s, 144s) sends 3 failures: 11. Two successes close the
		// breaker at 204s as one did. With one probe at a time, each
		// failed probe is the only failure sent: 5 + 1 + 1.
		if want := (Replay{FailuresSentCurrent: 11, FailuresSentProposed: 11, Unknown: 90}); *st.Replay != want {
			t.Errorf("success_threshold replay %+v, want %+v", *st.Replay, want)
		}
		if want := (Replay{FailuresSentCurrent: 11, FailuresSentProposed: 7, Unknown: 90}); *tc.Replay != want {
			t.Errorf("trial_calls replay %+v, want %+v", *tc.Replay, want)
		}
	})
	t.Run("transient", func(t *testing.T) {
		got := Advise(journalTransient(t), Config{}, nil)
		if len(got) != 1 {
			t.Fatalf("got %v, want one advice", adviceKeys(got))
		}
		a := findAdvice(t, got, "burst.example.org", "feed", "fail_max")
		want := Advice{Host: "burst.example.org", Role: "feed", Key: "fail_max", From: FromConfig, Current: "5", Proposed: "7",
			Reason: "tripped 2 times, 2 closed by the first probe; failure runs that ended in a success reached 4 at the 95th percentile (fail_max 5)",
			// Bursts of 4 never trip either; the runs of 5 trip only
			// fail_max 5, whose delays hold only recorded rejections.
			Replay: &Replay{FailuresSentCurrent: 30, FailuresSentProposed: 30, Unknown: 40}}
		if !reflect.DeepEqual(a, want) {
			t.Errorf("got %+v\nwant %+v", a, want)
		}
	})
	t.Run("outage", func(t *testing.T) {
		got := Advise(journalOutage(t), Config{}, nil)
		a := findAdvice(t, got, "down.example.org", "", "fail_max")
		// fail_max 3 trips on the third failure of each run of 5, and the
		// failed probes are sent under both: 3+1 per trip against 5+1.
		if a.Proposed != "3" || *a.Replay != (Replay{FailuresSentCurrent: 12, FailuresSentProposed: 8, Unknown: 80}) {
			t.Errorf("got %+v, replay %+v", a, *a.Replay)
		}
	})
}

// TestAdviseRateRules checks rules 1 and 7 by hand, at their thresholds
// and bounds: what the golden files hold, and what gives no advice.
func TestAdviseRateRules(t *testing.T) {
	one := func(t *testing.T, advice []Advice) Advice {
		t.Helper()
		if len(advice) != 1 || advice[0].Key != keyRate || advice[0].Role != "" || advice[0].Replay != nil {
			t.Fatalf("got %+v, want one host-wide rate advice without a replay", advice)
		}
		return advice[0]
	}
	// throttled returns a journal of host with requests in one minute, of
	// which s429 answered 429 and the rest succeeded.
	throttled := func(host string, requests, s429 uint64) *synthJournal {
		j := newJournal(t, host, "", "p#1")
		j.counts(60, time.Minute, requests, requests-s429, s429, s429)
		return j
	}

	t.Run("429 share", func(t *testing.T) {
		a := one(t, Advise(journalRate429(t), Config{}, nil))
		want := Advice{Host: "busy.example.org", Key: "rate", From: FromConfig, Current: "0", Proposed: "0.8",
			Reason: "12 of 200 requests sent (6 %) answered 429; 180 successes in 3m0s of traffic, 1 r/s, × 0.8"}
		if a != want {
			t.Errorf("got %+v\nwant %+v", a, want)
		}
	})
	t.Run("at least 20 requests", func(t *testing.T) {
		if got := Advise(throttled("few.example.org", 19, 19).events, Config{}, nil); got != nil {
			t.Errorf("19 requests, all 429: got %v, want none", adviceKeys(got))
		}
		// 20 requests, 1 answered 429 (5 %): 19 successes in 60s, × 0.8.
		if a := one(t, Advise(throttled("few.example.org", 20, 1).events, Config{}, nil)); a.Proposed != "0.253" {
			t.Errorf("20 requests: got %+v", a)
		}
	})
	t.Run("at least 5 %", func(t *testing.T) {
		if got := Advise(throttled("some.example.org", 200, 9).events, Config{}, nil); got != nil {
			t.Errorf("4.5 %%: got %v, want none", adviceKeys(got))
		}
		a := one(t, Advise(throttled("some.example.org", 200, 10).events, Config{}, nil))
		if a.Proposed != "2.53" || !strings.HasPrefix(a.Reason, "10 of 200 requests sent (5 %) answered 429; 190 successes in 1m0s of traffic, 3.17 r/s") {
			t.Errorf("5 %%: got %+v", a)
		}
	})
	t.Run("learnt", func(t *testing.T) {
		got := Advise(journalRateLearnt(t), rateLearntConfig(), nil)
		if want := []string{"capped.example.org  rate", "expired.example.org  rate", "learnt.example.org  rate"}; !reflect.DeepEqual(adviceKeys(got), want) {
			t.Fatalf("got %v, want %v", adviceKeys(got), want)
		}
		for i, want := range []Advice{
			{Host: "capped.example.org", Key: "rate", From: FromConfig, Current: "10", Proposed: "7.5",
				Reason: "10 of 100 requests sent (10 %) answered 429; the limiter learnt 5 r/s, × 0.9, clamped to 7.5 (a step of at most 25 % from 10)"},
			{Host: "expired.example.org", Key: "rate", From: FromConfig, Current: "0", Proposed: "1.2",
				Reason: "10 of 100 requests sent (10 %) answered 429; 90 successes in 1m0s of traffic, 1.5 r/s, × 0.8"},
			{Host: "learnt.example.org", Key: "rate", From: FromConfig, Current: "0", Proposed: "4.5",
				Reason: "10 of 100 requests sent (10 %) answered 429; the limiter learnt 5 r/s, × 0.9"},
		} {
			if got[i] != want {
				t.Errorf("got %+v\nwant %+v", got[i], want)
			}
		}
		// A rate_change without LastMax: its Rate is the learnt one.
		j := throttled("rate.example.org", 100, 10)
		j.rateChange(30, 2, 0, 0, "fleet")
		if a := one(t, Advise(j.events, Config{}, nil)); a.Proposed != "1.8" || !strings.Contains(a.Reason, "the limiter learnt 2 r/s") {
			t.Errorf("Rate without LastMax: got %+v", a)
		}
	})
	t.Run("bounds", func(t *testing.T) {
		// No success at all: 0 r/s, clamped to min_rate.
		a := one(t, Advise(throttled("none.example.org", 50, 50).events, Config{}, nil))
		if a.Proposed != "0.05" || !strings.HasSuffix(a.Reason, "0 successes in 1m0s of traffic, 0 r/s, × 0.8, clamped to 0.05") {
			t.Errorf("no success: got %+v", a)
		}
		// The step from a rate in force, tuned down by an override; with custom bounds.
		cfg := Config{Tune: TuneBounds{RateStep: 0.1, MinRate: 1}}
		ov := map[string]Policy{"learnt.example.org": {Rate: 10}}
		got := Advise(journalRateLearnt(t), cfg, ov)
		a = findAdvice(t, got, "learnt.example.org", "", "rate")
		if a.Current != "10" || a.Proposed != "9" || !strings.HasSuffix(a.Reason, "× 0.9, clamped to 9 (a step of at most 10 % from 10)") {
			t.Errorf("custom step: got %+v", a)
		}
		a = findAdvice(t, got, "expired.example.org", "", "rate")
		if a.Proposed != "1.2" {
			t.Errorf("min_rate 1: got %+v", a)
		}
		cfg.Tune.MinRate = 1.5
		a = findAdvice(t, Advise(journalRateLearnt(t), cfg, nil), "expired.example.org", "", "rate")
		if a.Proposed != "1.5" || !strings.HasSuffix(a.Reason, "× 0.8, clamped to 1.5") {
			t.Errorf("min_rate 1.5: got %+v", a)
		}
	})
	t.Run("only lower", func(t *testing.T) {
		// 0.8 × 1.5 r/s = 1.2 is above the 1 in force: no advice; equal to
		// it, no advice either.
		for _, r := range []float64{1, 1.2} {
			cfg := Config{Hosts: map[string]Policy{"expired.example.org": {Rate: r}}}
			for _, a := range Advise(journalRateLearnt(t), cfg, nil) {
				if a.Host == "expired.example.org" {
					t.Errorf("rate %v in force: got %+v", r, a)
				}
			}
		}
	})
	t.Run("recovery", func(t *testing.T) {
		got := Advise(journalRateRecovery(t), rateRecoveryConfig(), rateRecoveryOverrides())
		if want := []string{"calm.example.org  rate", "near.example.org  rate", "open.example.org  rate"}; !reflect.DeepEqual(adviceKeys(got), want) {
			t.Fatalf("got %v, want %v (none after a 429 or a failure)", adviceKeys(got), want)
		}
		for i, want := range []Advice{
			{Host: "calm.example.org", Key: "rate", From: FromConfig, Current: "4", Proposed: "4.4",
				Reason: "no 429 and no failure in 200 requests sent; rate 4, configured 10: + 10 %"},
			{Host: "near.example.org", Key: "rate", From: FromConfig, Current: "9.5", Proposed: "10",
				Reason: "no 429 and no failure in 200 requests sent; rate 9.5, configured 10: + 10 %, capped at 10"},
			{Host: "open.example.org", Key: "rate", From: FromConfig, Current: "4", Proposed: "4.4",
				Reason: "no 429 and no failure in 200 requests sent; rate 4, configured unlimited: + 10 %"},
		} {
			if got[i] != want {
				t.Errorf("got %+v\nwant %+v", got[i], want)
			}
		}
		// No recovery for a rate that is not tuned down: no override of
		// the host's rate, or one at or above the configured rate. Nor
		// with fewer than 20 requests.
		for name, c := range map[string]struct {
			cfg Config
			ov  map[string]Policy
		}{
			"not tuned":         {rateRecoveryConfig(), nil},
			"tuned to conf":     {rateRecoveryConfig(), map[string]Policy{"calm.example.org": {Rate: 10}}},
			"tuned up":          {rateRecoveryConfig(), map[string]Policy{"calm.example.org": {Rate: 12}}},
			"configured lower":  {Config{Hosts: map[string]Policy{"calm.example.org": {Rate: 3}}}, map[string]Policy{"calm.example.org": {Rate: 4}}},
			"another host":      {rateRecoveryConfig(), map[string]Policy{"other.example.org": {Rate: 4}}},
			"breaker keys only": {rateRecoveryConfig(), map[string]Policy{"calm.example.org": {FailMax: 3}}},
		} {
			for _, a := range Advise(journalRateRecovery(t), c.cfg, c.ov) {
				if a.Host == "calm.example.org" {
					t.Errorf("%s: got %+v", name, a)
				}
			}
		}
		j := newJournal(t, "calm.example.org", "", "p#1")
		j.healthy(60, 19)
		if got := Advise(j.events, rateRecoveryConfig(), rateRecoveryOverrides()); got != nil {
			t.Errorf("19 requests: got %v", adviceKeys(got))
		}
		// A wildcard's override applies to its hosts, and the step (at
		// most 25 %) is from the rate in force: 0.1 × 1.1 rounds to 0.11.
		ov := map[string]Policy{"*.example.org": {Rate: 0.1}}
		a := findAdvice(t, Advise(journalRateRecovery(t), Config{}, ov), "calm.example.org", "", "rate")
		if a.Current != "0.1" || a.Proposed != "0.11" || a.Reason != "no 429 and no failure in 200 requests sent; rate 0.1, configured unlimited: + 10 %" {
			t.Errorf("wildcard override: got %+v", a)
		}
	})
}

// TestAdviseOverridesInForce: the tuned overrides are laid over the
// configuration for every key, as a Transport lays them; one that the
// configuration refuses is left out.
func TestAdviseOverridesInForce(t *testing.T) {
	ov := map[string]Policy{"burst.example.org": {Roles: map[string]Policy{"feed": {FailMax: 4}}}, "bad key": {FailMax: 2}}
	a := findAdvice(t, Advise(journalTransient(t), Config{}, ov), "burst.example.org", "feed", "fail_max")
	if a.Current != "4" || a.Proposed != "6" {
		t.Errorf("got %+v", a)
	}
	// The override that Tune would write next is the one in force: no advice.
	ov = map[string]Policy{"busy.example.org": {Rate: 0.8}}
	if got := Advise(journalRate429(t), Config{}, ov); got != nil {
		t.Errorf("rate in force: got %+v", got)
	}
}

// TestAdviseTuneAgree checks that what Advise proposes is what Tune
// writes: Tune, given the same configuration and the store's overrides,
// clamps nothing, and Advise then proposes nothing more for those keys.
func TestAdviseTuneAgree(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		cfg := Config{Hosts: map[string]Policy{}}
		maps.Copy(cfg.Hosts, rateLearntConfig().Hosts)
		maps.Copy(cfg.Hosts, rateRecoveryConfig().Hosts)
		for key, p := range rateRecoveryOverrides() {
			mustPutOverride(t, s, key, p)
		}
		events := slices.Concat(journalRate429(t), journalRateLearnt(t), journalRateRecovery(t), journalTransient(t))
		advice := Advise(events, cfg, mustOverrides(t, s))
		if len(advice) != 8 {
			t.Fatalf("got %v", adviceKeys(advice))
		}
		got, err := Tune(ctx, s, advice, cfg, "agree")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, advice) {
			t.Errorf("Tune wrote\n%+v\nAdvise proposed\n%+v", got, advice)
		}
		ov := mustOverrides(t, s)
		for _, a := range advice {
			p, err := withOverrides(mustCompile(t, cfg), ov).resolve(a.Host, a.Role)
			if err != nil || formatValue(a.Key, currentValue(p.Policy, a.Key)) != a.Proposed {
				t.Errorf("%s %s: %s in force after Tune = %+v, %v; want %s", a.Host, a.Role, a.Key, p, err, a.Proposed)
			}
		}
		// Advise on the same journal now starts from what Tune wrote.
		for _, a := range Advise(events, cfg, ov) {
			for _, b := range advice {
				if a.Host == b.Host && a.Role == b.Role && a.Key == b.Key && a.Current != b.Proposed {
					t.Errorf("%s %s: Current %s, want %s", a.Host, a.Key, a.Current, b.Proposed)
				}
			}
		}
	})
}

// TestRoundRate: three significant digits, in µr/s.
func TestRoundRate(t *testing.T) {
	for _, c := range []struct{ v, want int64 }{
		{0, 0}, {1, 1}, {999, 999}, {1234, 1230}, {1235, 1240}, {2503333, 2500000}, {999600, 1000000},
		{123456789, 123000000}, {rateUnlimited, rateUnlimited},
	} {
		if got := roundRate(c.v); got != c.want {
			t.Errorf("roundRate(%d) = %d, want %d", c.v, got, c.want)
		}
	}
	for _, c := range []struct {
		v    int64
		want string
	}{{rateUnlimited, "0"}, {50000, "0.05"}, {2500000, "2.5"}, {10000000, "10"}, {1000000000000, "1e+06"}} {
		if got := formatValue(keyRate, c.v); got != c.want {
			t.Errorf("formatValue(rate, %d) = %q, want %q", c.v, got, c.want)
		}
	}
}

// TestAdviseDeterministic: the same events in any order give the same
// advice, sorted by host, role and key.
func TestAdviseDeterministic(t *testing.T) {
	var all []Event
	cfg := Config{Hosts: map[string]Policy{}}
	overrides := map[string]Policy{}
	for _, sc := range adviseScenarios {
		all = append(all, sc.journal(t)...)
		maps.Copy(cfg.Hosts, sc.cfg.Hosts)
		maps.Copy(overrides, sc.overrides)
	}
	want := Advise(all, cfg, overrides)
	if len(want) < 8 {
		t.Fatalf("got %d advice, want every scenario's", len(want))
	}
	for i := 1; i < len(want); i++ {
		a, b := want[i-1], want[i]
		if a.Host > b.Host || a.Host == b.Host && (a.Role > b.Role || a.Role == b.Role && a.Key >= b.Key) {
			t.Errorf("not sorted: %v before %v", adviceKeys(want[i-1:i]), adviceKeys(want[i:i+1]))
		}
	}
	before := append([]Event(nil), all...)
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		shuffled := append([]Event(nil), all...)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if got := Advise(shuffled, cfg, overrides); !reflect.DeepEqual(got, want) {
			t.Fatalf("shuffled input gave\n%+v\nwant\n%+v", got, want)
		}
	}
	if !reflect.DeepEqual(all, before) {
		t.Error("Advise changed its input")
	}
}

// TestAdviseTooLittleEvidence: a host with fewer than 20 requests in the
// window gets no advice, however bad they were; 20 are enough.
func TestAdviseTooLittleEvidence(t *testing.T) {
	for _, n := range []uint64{19, 20} {
		j := newJournal(t, "rare.example.org", "", "p#1")
		j.trip(4, -64, 124)
		j.trip(304, -364, 424)
		j.trip(604, -664, 724)
		j.summary(900, "f5@0 r1@5 f5@300 r1@305 f5@600 r1@605", n-18, 3, 3) // 18 outcomes, and neutral ones
		got := Advise(j.events, Config{}, nil)
		if n < adviseMinRequests && got != nil {
			t.Errorf("%d requests: got %v, want none", n, adviceKeys(got))
		}
		if n >= adviseMinRequests && got == nil {
			t.Errorf("%d requests: got no advice", n)
		}
	}
}

// TestAdviseHealthyHost: plenty of successes and nothing else.
func TestAdviseHealthyHost(t *testing.T) {
	j := newJournal(t, "fine.example.org", "", "p#1")
	for i := range 10 {
		j.healthy(60*(i+1), 1000)
	}
	// Even with Retry-After values (answers to requests that counted
	// neither way), no breaker opened: nothing to say.
	j.retryAfter(30, time.Minute)
	j.retryAfter(90, time.Minute)
	j.retryAfter(150, time.Minute)
	if got := Advise(j.events, Config{}, nil); got != nil {
		t.Errorf("got %v, want none", adviceKeys(got))
	}
}

// TestAdviseOnlyCancellations: a host whose only trouble was the caller's
// own cancellations (neutral outcomes: not recorded as runs, not failures,
// a cancelled probe counted neither way) gets no advice.
func TestAdviseOnlyCancellations(t *testing.T) {
	j := newJournal(t, "cancel.example.org", "", "p#1")
	for i := range 5 {
		j.summary(60*(i+1), "", 200, 0, 0)
		j.healthy(60*(i+1)+1, 10)
	}
	if got := Advise(j.events, Config{}, nil); got != nil {
		t.Errorf("got %v, want none", adviceKeys(got))
	}
	var requests uint64
	for _, ev := range j.events {
		requests += ev.Summary.Requests
	}
	if requests < adviseMinRequests {
		t.Fatalf("only %d requests: the test proves nothing", requests)
	}
}

// TestAdviseConservativeMerge: rules 3 and 4 both propose reset_timeout
// on the flapping journal; the longer wins and both reasons are kept, in
// rule order.
func TestAdviseConservativeMerge(t *testing.T) {
	a := findAdvice(t, Advise(journalFlapping(t), Config{}, nil), "flaky.example.org", "", "reset_timeout")
	const want = "tripped 3 times; median time from open to closed 2m0s over 3 closed trips; " +
		"opened 6 times, 3 of them by a failed probe; reset_timeout 1m0s × 1.5"
	if a.Proposed != "2m0s" || a.Reason != want {
		t.Errorf("got %q (%s), want %q (2m0s)", a.Reason, a.Proposed, want)
	}
	// With a current reset_timeout of 2m, rule 4's 3m wins over rule 3's 2m.
	cfg := Config{Defaults: Policy{ResetTimeout: 2 * time.Minute}}
	a = findAdvice(t, Advise(journalFlapping(t), cfg, nil), "flaky.example.org", "", "reset_timeout")
	if a.Current != "2m0s" || a.Proposed != "3m0s" || !strings.Contains(a.Reason, "median time from open to closed 2m0s") {
		t.Errorf("got %+v", a)
	}
	// fail_max: rule 6's two halves never meet; success_threshold and
	// trial_calls come from rule 5 alone. The conservative order itself:
	for _, c := range []struct {
		key  string
		v, w int64
		want bool
	}{
		{keyResetTimeout, 2, 1, true}, {keyFailMax, 2, 1, false}, {keySuccessThreshold, 2, 1, true}, {keyTrialCalls, 2, 1, false},
	} {
		if got := moreConservative(c.key, c.v, c.w); got != c.want {
			t.Errorf("moreConservative(%s, %d, %d) = %v", c.key, c.v, c.w, got)
		}
	}
}

// TestAdviseClampsToCustomBounds: proposals stay within cfg.Tune, say so
// in the reason, and a bound that would turn a rule around drops it.
func TestAdviseClampsToCustomBounds(t *testing.T) {
	cfg := Config{Tune: TuneBounds{ResetTimeout: [2]time.Duration{20 * time.Second, 40 * time.Second}}}
	a := findAdvice(t, Advise(journalRetryAfter(t), cfg, nil), "api.example.org", "", "reset_timeout")
	if a.Proposed != "40s" || !strings.HasSuffix(a.Reason, "median 45s, clamped to 40s") {
		t.Errorf("got %+v", a)
	}

	// The default bounds: a median Retry-After of 20m becomes 10m.
	j := newJournal(t, "api.example.org", "", "p#1")
	for i, d := range []time.Duration{15 * time.Minute, 20 * time.Minute, 30 * time.Minute} {
		j.retryAfter(40+i, d)
	}
	j.trip(44)
	j.summary(60, "s40@40 f5@40 r10@45", 0, 0, 0)
	a = findAdvice(t, Advise(j.events, Config{}, nil), "api.example.org", "", "reset_timeout")
	if a.Proposed != "10m0s" || !strings.HasSuffix(a.Reason, "median 20m0s, clamped to 10m0s") {
		t.Errorf("got %+v", a)
	}

	// A sub-second median is shown to the millisecond; the proposal is
	// the lower bound.
	j = newJournal(t, "fast.example.org", "", "p#1")
	j.trip(10, 11)
	j.change(20, StateClosed, StateOpen)
	j.change(20, StateOpen, StateHalfOpen).Time = sec(20).Add(1234567 * time.Microsecond)
	j.change(20, StateHalfOpen, StateClosed).Time = sec(20).Add(1234567 * time.Microsecond)
	j.summary(60, "s40@0 f5@5 r10@10 s10@11 f5@15 r10@20 s10@21", 0, 2, 0)
	a = findAdvice(t, Advise(j.events, Config{}, nil), "fast.example.org", "", "reset_timeout")
	if a.Proposed != "15s" || a.Reason != "tripped 2 times; median time from open to closed 1.117s over 2 closed trips, clamped to 15s" {
		t.Errorf("got %+v", a)
	}

	// fail_max 5 + 2 within [2, 6] is 6.
	cfg = Config{Tune: TuneBounds{FailMax: [2]int{2, 6}}}
	a = findAdvice(t, Advise(journalTransient(t), cfg, nil), "burst.example.org", "feed", "fail_max")
	if a.Proposed != "6" || !strings.HasSuffix(a.Reason, ", clamped to 6") {
		t.Errorf("got %+v", a)
	}
	// success_threshold within [1, 1]: rule 5 cannot raise it; trial_calls
	// within [2, 3] cannot go below 2 (from 3).
	cfg = probesConfig()
	cfg.Tune = TuneBounds{SuccessThreshold: [2]int{1, 1}, TrialCalls: [2]int{2, 3}}
	got := Advise(journalProbes(t), cfg, nil)
	if want := []string{"probe.example.org search trial_calls"}; !reflect.DeepEqual(adviceKeys(got), want) {
		t.Fatalf("got %v, want %v", adviceKeys(got), want)
	}
	if got[0].Proposed != "2" {
		t.Errorf("got %+v", got[0])
	}
	// A reset_timeout in force above the bounds: rule 4 would raise it,
	// the bounds would lower it, so rule 4 says nothing rather than the
	// opposite of itself; rule 3 sets a measured value, within the bounds.
	cfg = Config{Defaults: Policy{ResetTimeout: 15 * time.Minute}}
	a = findAdvice(t, Advise(journalFlapping(t), cfg, nil), "flaky.example.org", "", "reset_timeout")
	if a.Proposed != "2m0s" || strings.Contains(a.Reason, "1.5") {
		t.Errorf("got %+v", a)
	}
}

// TestAdviseInvalidConfig: no advice under a configuration the Transport
// would refuse.
func TestAdviseInvalidConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Defaults: Policy{FailMax: -1}},
		{Hosts: map[string]Policy{"bad host": {}}},
		{Tune: TuneBounds{FailMax: [2]int{5, 3}}},
		{Defaults: Policy{FailureStatuses: []int{404}}},
	} {
		if err := cfg.Validate(); err == nil {
			t.Fatalf("%+v is valid", cfg)
		}
		if got := Advise(journalFlapping(t), cfg, nil); got != nil {
			t.Errorf("%+v: got %v", cfg, adviceKeys(got))
		}
	}
}

// TestAdvisePolicyInForce: Current is what the Transport resolves for the
// (host, role): a host entry's role table over the defaults.
func TestAdvisePolicyInForce(t *testing.T) {
	cfg := Config{
		Defaults: Policy{FailMax: 8, Roles: map[string]Policy{"feed": {FailMax: 4}}},
		Hosts:    map[string]Policy{"*.example.org": {Roles: map[string]Policy{"feed": {ResetTimeout: 30 * time.Second}}}},
	}
	a := findAdvice(t, Advise(journalTransient(t), cfg, nil), "burst.example.org", "feed", "fail_max")
	if a.Current != "4" || a.Proposed != "6" {
		t.Errorf("got %+v", a)
	}
	// Rule 3's median 1m0s now differs from the 30s in force.
	a = findAdvice(t, Advise(journalTransient(t), cfg, nil), "burst.example.org", "feed", "reset_timeout")
	if a.Current != "30s" || a.Proposed != "1m0s" {
		t.Errorf("got %+v", a)
	}
}

// TestAdviseRemoteEchoes: a trip that another process shared through the
// store shows in this process as a remote opening, then local half-open
// and closed changes. None of it is an opening of this process's own.
func TestAdviseRemoteEchoes(t *testing.T) {
	a := newJournal(t, "echo.example.org", "", "a#1")
	a.trip(4, 64)
	a.summary(120, "f5@0 r20@5 s20@64", 0, 1, 0)
	var events []Event
	events = append(events, a.events...)
	for i, proc := range []string{"b#1", "c#1", "d#1"} {
		b := newJournal(t, "echo.example.org", "", proc)
		b.change(5+i, StateClosed, StateOpen).Remote = true
		b.change(100+i, StateOpen, StateHalfOpen)
		b.change(100+i, StateHalfOpen, StateClosed)
		b.summary(120, "r20@5 s20@100", 0, 1, 0)
		events = append(events, b.events...)
	}
	// With the echoes counted as trips, rule 3 would see four, closed
	// after 60s, 95s, 95s and 95s.
	if got := Advise(events, Config{}, nil); got != nil {
		t.Errorf("got %v, want none", adviceKeys(got))
	}
	p := readJournalForAdvice(events).pairs[pairKey{"echo.example.org", ""}]
	if p.opens != 1 || p.trips != 1 || p.firstOK != 1 || len(p.durations) != 1 {
		t.Errorf("opens %d, trips %d, firstOK %d, durations %v", p.opens, p.trips, p.firstOK, p.durations)
	}
}

// TestAdviseRetryAfterNeedsAnOpening: Retry-After values alone, on a host
// with failures but no breaker opened, change nothing (rule 2).
func TestAdviseRetryAfterNeedsAnOpening(t *testing.T) {
	j := newJournal(t, "429.example.org", "", "p#1")
	for i := range 5 {
		j.retryAfter(10*i, time.Minute)
	}
	j.summary(60, "s50@0 f1@0 s10@10 f1@10 s10@20", 0, 0, 0)
	if got := Advise(j.events, Config{}, nil); got != nil {
		t.Errorf("got %v, want none", adviceKeys(got))
	}
}

func TestMedianAndPercentile(t *testing.T) {
	ds := []time.Duration{4 * time.Second, time.Second, 3 * time.Second, 2 * time.Second}
	if got := medianDuration(ds); got != 2500*time.Millisecond {
		t.Errorf("median %v, want 2.5s", got)
	}
	if got := medianDuration([]time.Duration{3, 1, 2}); got != 2 {
		t.Errorf("median %v, want 2", got)
	}
	// 20 bursts 1..20: the 95th percentile by nearest rank is the 19th.
	var seq []timedRun
	for i := range 20 {
		seq = append(seq, timedRun{kind: OutcomeFailure, n: uint64(i + 1)}, timedRun{kind: OutcomeSuccess, n: 1})
	}
	// A failure run followed by a rejection did not end in a success.
	seq = append(seq, timedRun{kind: OutcomeFailure, n: 99}, timedRun{kind: OutcomeRejected, n: 1}, timedRun{kind: OutcomeSuccess, n: 1})
	p := &pairEvidence{seqs: map[string][]timedRun{"p": seq}}
	if q, ok := p.burstPercentile(95); !ok || q != 19 {
		t.Errorf("q95 %d %v, want 19", q, ok)
	}
	if _, ok := (&pairEvidence{}).burstPercentile(95); ok {
		t.Error("a percentile of nothing")
	}
}

// timedRuns parses runs as parseRuns does and spreads each to the next
// run's At, the last one to end (seconds).
func timedRuns(t *testing.T, spec string, end int) []timedRun {
	return appendRuns(nil, parseRuns(t, spec), sec(end))
}

// TestSimulateBreaker checks the replay exactly on hand-computed
// sequences. Outcomes are spread evenly over their run: "f5@0" ending at 5
// is failures at 0, 1, 2, 3 and 4s.
func TestSimulateBreaker(t *testing.T) {
	pol := func(failMax int, reset time.Duration, success, trial int) Policy {
		return Policy{FailMax: failMax, ResetTimeout: reset, SuccessThreshold: success, TrialCalls: trial}
	}
	rate := func(p Policy, failureRate float64, minRequests int, window time.Duration) Policy {
		p.FailureRate, p.MinRequests, p.Window = failureRate, minRequests, window
		return p
	}
	grow := func(p Policy, max time.Duration) Policy {
		p.MaxResetTimeout = max
		return p
	}
	var runs []string
	for i := range 20 {
		runs = append(runs, fmt.Sprintf("%c1@%d", "fs"[i%2], i))
	}
	interleaved := strings.Join(runs, " ")
	// Failures at 0, 1, 11 and 31, successes at 12–16, 25, 32–36 and 71
	// (the rejections end the runs before them).
	const growing = "f2@0 r1@2 f1@11 s5@12 r1@17 s1@25 f1@31 s5@32 r1@37 s1@71"
	for _, c := range []struct {
		name string
		spec string
		end  int
		p    Policy
		want simResult
	}{
		// Failures at 0, 1, 2 trip it until 12: those at 3, 4 and the
		// successes at 5–11 are blocked; at 12 a probe closes it.
		{"fail_max 3", "f5@0 s10@5", 15, pol(3, 10*time.Second, 1, 1), simResult{failuresSent: 3, successesBlocked: 7, trips: 1}},
		// All five sent, open from 4 to 14: successes at 5–13 blocked.
		{"fail_max 5", "f5@0 s10@5", 15, pol(5, 10*time.Second, 1, 1), simResult{failuresSent: 5, successesBlocked: 9, trips: 1}},
		{"fail_max 6", "f5@0 s10@5", 15, pol(6, 10*time.Second, 1, 1), simResult{failuresSent: 5}},
		// Failures at 0 and 1 trip it until 11 (eight rejections
		// recorded). The failure at 10 is blocked; at 11 a wave of three
		// probes: the first fails and reopens until 21, the other two
		// (12, 13) were sent all the same; 14, 15 blocked. The success at
		// 20 is blocked; at 21 a wave closes on its first probe, the two
		// others (22, 23) change nothing.
		{"trial_calls 3", "f2@0 r8@2 f6@10 r5@16 s10@20", 30, pol(2, 10*time.Second, 1, 3), simResult{failuresSent: 5, successesBlocked: 1, unknown: 13, trips: 1}},
		// One probe at a time: only the probe at 11 is sent.
		{"trial_calls 1", "f2@0 r8@2 f6@10 r5@16 s10@20", 30, pol(2, 10*time.Second, 1, 1), simResult{failuresSent: 3, successesBlocked: 1, unknown: 13, trips: 1}},
		// Trip at 1 until 11; the probe at 11 succeeds (1 of 2), the next
		// wave's probe at 12 fails: open until 22, 13 and 14 blocked; the
		// probes at 22 and 23 close it.
		{"success_threshold 2", "f2@0 r9@2 s1@11 f3@12 r7@15 s10@22", 32, pol(2, 10*time.Second, 2, 1), simResult{failuresSent: 3, unknown: 16, trips: 1}},
		// One success closes it at 11; the failures at 12 and 13 trip it
		// until 23; 14 and the success at 22 are blocked; 23 closes it.
		{"success_threshold 1", "f2@0 r9@2 s1@11 f3@12 r7@15 s10@22", 32, pol(2, 10*time.Second, 1, 1), simResult{failuresSent: 4, successesBlocked: 1, unknown: 16, trips: 2}},
		// A run whose At is the next run's is all at that instant: the
		// trip at 0 blocks what follows at 0.
		{"instant runs", "f3@0 s5@0 f3@0", 0, pol(3, time.Second, 1, 1), simResult{failuresSent: 3, successesBlocked: 5, trips: 1}},
		// The rest of a failed wave is the next recorded outcomes, past
		// recorded rejections: trip at 1 until 3; the probe at 3 fails
		// (until 5), 4 was in its wave; the rejections are skipped and
		// the wave's third probe is the success at 10, sent; 11 closes.
		{"wave past rejections", "f2@0 r1@2 f2@3 r4@5 s2@10", 12, pol(2, 2*time.Second, 1, 3), simResult{failuresSent: 4, unknown: 5, trips: 1}},
		// Consecutive failures carry across runs and rejections.
		{"across runs", "f1@0 r3@1 f1@2 f1@3 s1@4", 5, pol(3, time.Second, 1, 1), simResult{failuresSent: 3, unknown: 3, trips: 1}},
		// failure_rate 0.5, min_requests 4: failures interleaved with
		// successes never reach fail_max 5, but 2 of the 4 outcomes at 3s
		// trip it, on the success, until 13; the probe at 13 closes it
		// with an empty window, and 2 of 4 trip it again at 17.
		{"failure_rate interleaved", interleaved, 20, rate(pol(5, 10*time.Second, 1, 1), 0.5, 4, time.Minute),
			simResult{failuresSent: 4, successesBlocked: 5, trips: 2, rateTrips: 2}},
		{"failure_rate off", interleaved, 20, pol(5, 10*time.Second, 1, 1), simResult{failuresSent: 10}},
		// 3 of 3 failed is below min_requests; the success that makes 4
		// trips it (3 of 4), until 13.
		{"failure_rate min_requests", "f3@0 s11@3", 14, rate(pol(5, 10*time.Second, 1, 1), 0.5, 4, time.Minute),
			simResult{failuresSent: 3, successesBlocked: 9, trips: 1, rateTrips: 1}},
		// Successes every 1.9s from 2s: in a 60s window the 8th (at 15.3s)
		// makes 2 failures of 10, a rate of 0.2: open until 25.3s, the
		// successes at 17.2–24.8 blocked. In a 10s window the failures
		// have left it before it holds 10 outcomes.
		{"failure_rate window 60s", "f2@0 s20@2 f2@40", 42, rate(pol(5, 10*time.Second, 1, 1), 0.2, 10, time.Minute),
			simResult{failuresSent: 4, successesBlocked: 5, trips: 1, rateTrips: 1}},
		{"failure_rate window 10s", "f2@0 s20@2 f2@40", 42, rate(pol(5, 10*time.Second, 1, 1), 0.2, 10, 10*time.Second),
			simResult{failuresSent: 4}},
		// max_reset_timeout 40s: open at 1 for 10s; the probe at 11 fails,
		// open for 20s (until 31), so the success at 25 is blocked; the
		// probe at 31 fails, open for 40s; 71 closes it. With a fixed 10s,
		// the probe at 25 closes it and 31 is one failure in closed.
		{"max_reset_timeout", growing, 72, grow(pol(2, 10*time.Second, 1, 1), 40*time.Second),
			simResult{failuresSent: 4, successesBlocked: 11, unknown: 3, trips: 1}},
		{"fixed reset_timeout", growing, 72, pol(2, 10*time.Second, 1, 1),
			simResult{failuresSent: 4, successesBlocked: 5, unknown: 3, trips: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := simulateBreaker(timedRuns(t, c.spec, c.end), c.p); got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestTimedRunSpread: the times of a run's outcomes and the search for the
// first one at or after a time agree, exactly, on awkward spans.
func TestTimedRunSpread(t *testing.T) {
	r := timedRun{kind: OutcomeSuccess, n: 3, at: sec(0), end: sec(10)}
	for i, want := range []time.Duration{0, 3333333333, 6666666666} {
		if got := r.timeOf(uint64(i)).Sub(sec(0)); got != want {
			t.Errorf("timeOf(%d) = %v, want %v", i, got, want)
		}
	}
	for _, c := range []struct {
		t    time.Duration
		from uint64
		want uint64
	}{
		{-time.Second, 0, 0}, {0, 1, 1}, {time.Nanosecond, 0, 1}, {3333333333, 0, 1}, {3333333334, 0, 2},
		{5 * time.Second, 0, 2}, {5 * time.Second, 3, 3}, {6666666667, 0, 3}, {time.Hour, 0, 3},
	} {
		if got := r.firstAtOrAfter(sec(0).Add(c.t), c.from); got != c.want {
			t.Errorf("firstAtOrAfter(%v, %d) = %d, want %d", c.t, c.from, got, c.want)
		}
	}
	// Brute force over runs of many sizes: the index found is the first
	// whose time is at or after t.
	for n := uint64(1); n < 40; n++ {
		r := timedRun{n: n, at: sec(0), end: sec(0).Add(time.Duration(7*n+3) * 1e8)}
		for d := time.Duration(-1); d <= r.end.Sub(r.at)+1; d += 1e7 + 1 {
			tt := sec(0).Add(d)
			want := n
			for i := range n {
				if !r.timeOf(i).Before(tt) {
					want = i
					break
				}
			}
			if got := r.firstAtOrAfter(tt, 0); got != want {
				t.Fatalf("n %d, t %v: got %d, want %d", n, d, got, want)
			}
		}
	}
	// Huge counts do not overflow.
	big := timedRun{n: 1 << 62, at: sec(0), end: sec(3600)}
	if got := big.timeOf(1 << 61).Sub(sec(0)); got != 1800*time.Second {
		t.Errorf("timeOf half of a huge run = %v", got)
	}
	if got := big.firstAtOrAfter(sec(1800), 0); got != 1<<61 {
		t.Errorf("firstAtOrAfter half of a huge run = %d", got)
	}
}

// journalNewcomer is the throttled host of issue 16: a harvester's nginx
// host, 17 minutes, 20,054 requests of which 17,940 were rejected without
// being sent (its cooldowns and its limiter) and 2,114 sent: 1,423
// successes and 691 answers 429, counted as failures. Its breaker
// (fail_max 3) tripped twice, each time closed by its first probe, and
// the 429 runs that ended in a success were 2 long.
func journalNewcomer(t testing.TB) []Event {
	j := newJournal(t, "nginx.local:8081", "landing", "harvester:100#1")
	j.trip(121, 181)
	j.trip(301, 361)
	ev := j.event(EventSummary, 1020)
	ev.Interval = 17 * time.Minute
	ev.Summary = &Summary{Requests: 20054, Successes: 1423, Failures: 691, Rejected: 17940, Status429: 691,
		Outcomes: parseRuns(t, "s200@0 f2@60 s200@61 f3@120 r8970@121 s200@181 f2@240 s200@241 f3@300 r8970@301 s623@361 f681@400")}
	return j.events
}

// TestAdviseThrottledNewcomer: the case. Rule 1 reads the share
// of 429s over the requests sent (691 of 2,114, 32.7 %, not 691 of 20,054,
// 3.4 %) and fires; and no fail_max is proposed for a host whose failures
// are throttling.
func TestAdviseThrottledNewcomer(t *testing.T) {
	cfg := Config{Hosts: map[string]Policy{"nginx.local:8081": {FailMax: 3, ResetTimeout: time.Minute}}}
	got := Advise(journalNewcomer(t), cfg, nil)
	if keys := adviceKeys(got); !reflect.DeepEqual(keys, []string{"nginx.local:8081  rate"}) {
		t.Fatalf("got %v, want rate advice only (no fail_max)", keys)
	}
	want := "691 of 2,114 requests sent (32.7 %) answered 429; 1423 successes in 17m0s of traffic, 1.4 r/s, × 0.8"
	if a := got[0]; a.Reason != want || a.Proposed != "1.12" || a.Current != "0" {
		t.Errorf("got %+v\nwant reason %q, 0 → 1.12", a, want)
	}
	// Without the throttling the same trips do ask for fail_max.
	events := journalNewcomer(t)
	for i := range events {
		if s := events[i].Summary; s != nil {
			c := *s
			c.Status429 = 0
			events[i].Summary = &c
		}
	}
	if keys := adviceKeys(Advise(events, cfg, nil)); !slices.Contains(keys, "nginx.local:8081 landing fail_max") {
		t.Errorf("5xx failures: got %v, want fail_max advice", keys)
	}
}

// TestAdviseEnforceTwice: advice tuned once is not proposed again from the
// same evidence. The first run tunes; the second, on the same journal with
// Tune's policy_change events in it, proposes nothing for the keys the first
// one changed (before, rule 4 multiplied reset_timeout by 1.5 again on every
// run: 10s → 15s → 23s).
func TestAdviseEnforceTwice(t *testing.T) {
	eachJournalStore(t, func(t *testing.T, s journalStore) {
		ctx := context.Background()
		cfg := Config{Hosts: map[string]Policy{"flaky.example.org": {ResetTimeout: 10 * time.Second}}}
		cfg.Tune.ResetTimeout = [2]time.Duration{time.Second, time.Hour}
		// Recent events: Tune's append enforces the journal's retention.
		start := time.Now().Add(-time.Hour)
		mustAppend(t, s, shiftEvents(slices.Concat(journalFlapping(t), journalRate429(t)), start), JournalLimits{})
		enforce := func() []Advice {
			events, err := ReadJournal(ctx, s, start.Add(-time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			advice := Advise(events, cfg, mustOverrides(t, s))
			written, err := Tune(ctx, s, advice, cfg, "enforce")
			if err != nil {
				t.Fatal(err)
			}
			return written
		}
		first := enforce()
		if len(first) == 0 {
			t.Fatal("the first run tuned nothing")
		}
		second := enforce()
		for _, b := range second {
			for _, a := range first {
				if a.Host == b.Host && a.Role == b.Role && a.Key == b.Key {
					t.Errorf("%s %s %s tuned again: %s → %s (%s)", b.Host, b.Role, b.Key, b.Current, b.Proposed, b.Reason)
				}
			}
		}
		// Evidence after the change counts again: a new flapping episode,
		// journaled after the first Tune, is judged.
		mustAppend(t, s, shiftEvents(journalFlapping(t), time.Now().Add(time.Second)), JournalLimits{})
		events, err := ReadJournal(ctx, s, start.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		a := findAdvice(t, Advise(events, cfg, mustOverrides(t, s)), "flaky.example.org", "", "reset_timeout")
		if a.Current != first[slices.IndexFunc(first, func(a Advice) bool { return a.Key == "reset_timeout" })].Proposed {
			t.Errorf("after new evidence: %+v", a)
		}
	})
}

// shiftEvents moves a synthetic journal (from adviseT0) to start at start.
func shiftEvents(events []Event, start time.Time) []Event {
	d := start.Sub(adviseT0)
	for i := range events {
		events[i].Time = events[i].Time.Add(d)
		if !events[i].Until.IsZero() {
			events[i].Until = events[i].Until.Add(d)
		}
		if s := events[i].Summary; s != nil {
			for k := range s.Outcomes {
				s.Outcomes[k].At = s.Outcomes[k].At.Add(d)
			}
		}
	}
	return events
}

// TestAdvisePublishedInForce: the values in force come from what the
// processes published, not from the configuration given (the built-in
// defaults when advise runs without -config); processes that disagree are
// named; a (host, role) nobody published is "assumed" when the
// configuration is unknown.
func TestAdvisePublishedInForce(t *testing.T) {
	row := func(src string, failMax int, reset time.Duration) PublishedState {
		return PublishedState{Source: src, Host: "flaky.example.org", State: StateOpen, ConfigHash: "h-" + src,
			Policy: Policy{FailMax: failMax, ResetTimeout: reset, SuccessThreshold: 1, TrialCalls: 1}}
	}
	events := journalFlapping(t)
	// Without published rows and an unknown configuration: the defaults
	// (1m0s), and the advice says they were assumed.
	a := findAdvice(t, AdviseWith(events, DefaultConfig(), nil, AdviseOptions{ConfigUnknown: true}), "flaky.example.org", "", "reset_timeout")
	if a.Current != "1m0s" || a.From != FromAssumed {
		t.Errorf("unknown: got %+v", a)
	}
	// Published: the real value, 10s.
	opts := AdviseOptions{ConfigUnknown: true, Published: []PublishedState{row("web-1", 4, 10*time.Second), row("web-2", 4, 10*time.Second)}}
	got := AdviseWith(events, DefaultConfig(), nil, opts)
	a = findAdvice(t, got, "flaky.example.org", "", "reset_timeout")
	if a.Current != "10s" || a.From != FromPublished || a.Proposed != "2m0s" {
		t.Errorf("published: got %+v", a)
	}
	if a := findAdvice(t, got, "flaky.example.org", "", "fail_max"); a.Current != "4" || a.Proposed != "3" {
		t.Errorf("published fail_max: got %+v", a)
	}
	// Two processes with different values: said, and marked.
	opts.Published[1] = row("web-2", 4, 20*time.Second)
	a = findAdvice(t, AdviseWith(events, DefaultConfig(), nil, opts), "flaky.example.org", "", "reset_timeout")
	if a.From != FromDiffers || !strings.Contains(a.Reason, "processes differ: reset_timeout 10s in web-1, 20s in web-2") {
		t.Errorf("differ: got %+v", a)
	}
	if g := ConfigGroups(opts.Published); len(g) != 2 {
		t.Errorf("ConfigGroups = %+v, want 2 groups", g)
	}
	// A published rate in force and configured rate: rule 7 reads them.
	rows := []PublishedState{{Source: "web-1", Host: "calm.example.org", ConfigHash: "h",
		Policy: Policy{FailMax: 5, ResetTimeout: time.Minute, SuccessThreshold: 1, TrialCalls: 1, Rate: 4}, ConfiguredRate: 10}}
	a = findAdvice(t, AdviseWith(journalRateRecovery(t), DefaultConfig(), nil, AdviseOptions{Published: rows}), "calm.example.org", "", "rate")
	if a.Current != "4" || a.Proposed != "4.4" || a.From != FromPublished || !strings.Contains(a.Reason, "configured 10") {
		t.Errorf("rate: got %+v", a)
	}
}

// TestTransportPublishesPolicy: a Transport's published rows carry its
// configuration's hash and the values in force (tuned overrides laid
// over the configuration), and the store gives them back.
func TestTransportPublishesPolicy(t *testing.T) {
	storeKinds(t, func(t *testing.T, url string) {
		cfg := Config{Hosts: map[string]Policy{"down.example": {FailMax: 2, ResetTimeout: 10 * time.Minute, Rate: 50}}}
		tr := sharedTransport(t, url, 50*time.Millisecond, cannedBase(500), cfg)
		c := &http.Client{Transport: tr}
		for range 2 {
			get(t, c, "", "http://down.example/")
		}
		var states []PublishedState
		deadline := time.Now().Add(bound(url, 50*time.Millisecond))
		for time.Now().Before(deadline) {
			s, err := tr.sh.store.States(context.Background())
			if err == nil && len(s) > 0 {
				states = s
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(states) != 1 {
			t.Fatalf("published %+v", states)
		}
		ps := states[0]
		want := Policy{FailMax: 2, ResetTimeout: 10 * time.Minute, SuccessThreshold: 1, TrialCalls: 1, Rate: 50}
		if ps.ConfigHash == "" || !reflect.DeepEqual(ps.Policy, want) || ps.ConfiguredRate != 50 {
			t.Errorf("published %+v, want policy %+v", ps, want)
		}
		// Another configuration, another hash; the same, the same hash.
		pt1, pt2 := mustCompile(t, cfg), mustCompile(t, Config{})
		if configHash(pt1) == configHash(pt2) || configHash(pt1) != configHash(mustCompile(t, cfg)) || configHash(pt1) != ps.ConfigHash {
			t.Errorf("hashes: %s %s %s", configHash(pt1), configHash(pt2), ps.ConfigHash)
		}
	})
}

// TestAdviseRateRuleTrips: rule 6 reads only the trips that fail_max
// fired (the opening's note names the rule), and a fail_max proposal is
// replayed with the failure_rate rule in force.
func TestAdviseRateRuleTrips(t *testing.T) {
	noted := func(note string) []Event {
		evs := journalTransient(t)
		for i, ev := range evs {
			if ev.Name == EventStateChange && ev.State == StateOpen && ev.PreviousState == StateClosed {
				evs[i].Note = note
			}
		}
		return evs
	}
	t.Run("trips by fail_max", func(t *testing.T) {
		got := Advise(noted("fail_max: 5 consecutive failures"), Config{}, nil)
		if a := findAdvice(t, got, "burst.example.org", "feed", "fail_max"); a.Proposed != "7" {
			t.Fatalf("got %+v, want fail_max 7 as for a journal whose trips name no rule", a)
		}
	})
	t.Run("trips by failure_rate", func(t *testing.T) {
		cfg := Config{Defaults: Policy{FailureRate: 0.1, MinRequests: 10}}
		if got := Advise(noted("failure_rate: 4 of 24 requests failed in 60s"), cfg, nil); len(got) != 0 {
			t.Fatalf("got %+v, want no advice: fail_max did not trip the breaker", got)
		}
	})
	t.Run("fail_max replayed under failure_rate", func(t *testing.T) {
		// failure_rate 0.1 with min_requests 10: the first burst, 4
		// failures after 20 successes, trips it whatever fail_max is; so
		// fail_max 7 sends no fewer failures than 5 (9 against 30 without
		// the rule), and, like 5, blocks the 90 successes that follow.
		cfg := Config{Defaults: Policy{FailureRate: 0.1, MinRequests: 10}}
		a := findAdvice(t, Advise(journalTransient(t), cfg, nil), "burst.example.org", "feed", "fail_max")
		want := Replay{FailuresSentCurrent: 9, FailuresSentProposed: 9, SuccessesBlockedProposed: 90, Unknown: 40}
		if *a.Replay != want {
			t.Fatalf("replay %+v, want %+v", *a.Replay, want)
		}
	})
}

// TestAdviseReplayWithoutTheRateRule: the processes publish only the
// tunable keys, so the failure_rate of a replay is the configuration's
// given to Advise. When the journal shows trips by failure_rate that the
// values given leave off, the replay ran without the rule, and the reason
// says so; with the rule given, it says nothing.
func TestAdviseReplayWithoutTheRateRule(t *testing.T) {
	evs := journalTransient(t)
	for i, ev := range evs {
		if ev.Name == EventStateChange && ev.State == StateOpen && ev.PreviousState == StateClosed {
			evs[i].Note = "failure_rate: 4 of 24 requests failed in 60s"
		}
	}
	const note = "the journal shows 2 trips by failure_rate, which the values given leave off: the replay ran without it"
	for _, tc := range []struct {
		name string
		cfg  Config
		opts AdviseOptions
		want bool
	}{
		{"configuration unknown, values published", Config{Defaults: Policy{ResetTimeout: 10 * time.Second}},
			AdviseOptions{ConfigUnknown: true, Published: []PublishedState{{Source: "web-1:100#1", Host: "burst.example.org", Role: "feed",
				ConfigHash: "abc", Policy: Policy{FailMax: 5, ResetTimeout: 10 * time.Second, SuccessThreshold: 1, TrialCalls: 1}}}}, true},
		{"configuration without the rule", Config{Defaults: Policy{ResetTimeout: 10 * time.Second}}, AdviseOptions{}, true},
		{"configuration with the rule", Config{Defaults: Policy{ResetTimeout: 10 * time.Second, FailureRate: 0.1, MinRequests: 10}}, AdviseOptions{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := findAdvice(t, AdviseWith(evs, tc.cfg, nil, tc.opts), "burst.example.org", "feed", "reset_timeout")
			if got := strings.Contains(a.Reason, note); got != tc.want {
				t.Fatalf("reason %q: note %v, want %v", a.Reason, got, tc.want)
			}
		})
	}
}

// TestAdviseReplaysThePublishedRateRule: with the configuration unknown,
// the replay runs with the failure_rate that the processes published in
// their configurations (PublishedConfig carries the keys the replay
// reads), as it does with that configuration given, and says nothing of a
// replay without the rule. Before, the processes published the tunable
// keys alone, and the replay ran without the rule they ran.
func TestAdviseReplaysThePublishedRateRule(t *testing.T) {
	evs := journalTransient(t)
	for i, ev := range evs {
		if ev.Name == EventStateChange && ev.State == StateOpen && ev.PreviousState == StateClosed {
			evs[i].Note = "failure_rate: 4 of 24 requests failed in 60s"
		}
	}
	withRule := Config{Defaults: Policy{ResetTimeout: 10 * time.Second, FailureRate: 0.1, MinRequests: 10, MaxResetTimeout: time.Minute}}
	pt, err := withRule.validate()
	if err != nil {
		t.Fatal(err)
	}
	// Published and read back as a store keeps it.
	v, err := checkPublishedConfig(PublishedConfig{Source: "web-1:100#1", Hash: configHash(pt), Values: true,
		Configured: configTables(pt), InForce: configTables(pt), Published: time.Now()}, time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := decodeConfig(v)
	if err != nil {
		t.Fatal(err)
	}
	if d := pub.InForce.Defaults; d.FailureRate != 0.1 || d.MinRequests != 10 || d.MaxResetTimeout != time.Minute {
		t.Fatalf("published defaults %+v: want failure_rate 0.1, min_requests 10, max_reset_timeout 1m", d)
	}
	want := findAdvice(t, AdviseWith(evs, withRule, nil, AdviseOptions{}), "burst.example.org", "feed", "reset_timeout")
	got := findAdvice(t, AdviseWith(evs, Config{Defaults: Policy{ResetTimeout: 10 * time.Second}}, nil,
		AdviseOptions{ConfigUnknown: true, Configs: []PublishedConfig{pub}}), "burst.example.org", "feed", "reset_timeout")
	if strings.Contains(got.Reason, "the replay ran without it") || got.Proposed != want.Proposed || got.Reason != want.Reason || !reflect.DeepEqual(got.Replay, want.Replay) {
		t.Errorf("configuration unknown, published with the rule: %s = %s (%s; replay %+v)\nwant as with the configuration given: %s (%s; replay %+v)",
			got.Key, got.Proposed, got.Reason, got.Replay, want.Proposed, want.Reason, want.Replay)
	}
}

// TestAdviseHostSelects: AdviseOptions.Host keeps the advice on the hosts
// it names as a [hosts] key names them: the host on any port, or a
// wildcard's hosts.
func TestAdviseHostSelects(t *testing.T) {
	evs := journalTransient(t)
	cfg := Config{Defaults: Policy{ResetTimeout: 10 * time.Second}}
	all := AdviseWith(evs, cfg, nil, AdviseOptions{})
	if len(all) == 0 {
		t.Fatal("no advice to select from")
	}
	host := all[0].Host
	name, _, _ := strings.Cut(host, ":")
	dot := strings.Index(name, ".")
	for _, tc := range []struct {
		key  string
		keep func(a Advice) bool
	}{
		{host, func(a Advice) bool { return a.Host == host }},
		{name, func(a Advice) bool { n, _, _ := strings.Cut(a.Host, ":"); return n == name }},
		{"*" + name[dot:], func(a Advice) bool { n, _, _ := strings.Cut(a.Host, ":"); return strings.HasSuffix(n, name[dot:]) }},
		{"nothing.invalid", func(Advice) bool { return false }},
	} {
		want := slices.DeleteFunc(slices.Clone(all), func(a Advice) bool { return !tc.keep(a) })
		if got := AdviseWith(evs, cfg, nil, AdviseOptions{Host: tc.key}); !reflect.DeepEqual(got, want) {
			t.Errorf("Host %q: advice on %v, want on %v", tc.key, advisedHosts(got), advisedHosts(want))
		}
	}
}

func advisedHosts(advice []Advice) []string {
	var hosts []string
	for _, a := range advice {
		hosts = append(hosts, a.Host)
	}
	return hosts
}
