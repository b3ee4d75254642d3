package hostbreaker

// Tests of the caller's classifier (classifier.go) through an http.Client:
// it overrides the status lists both ways, keeps them with CountDefault,
// is never called for a rejected request, and a panic in it is recovered,
// logged once and counts as the default.

import (
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestClassifierOverridesStatusLists(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int64
		classify := func(req *http.Request, resp *http.Response, err error) Outcome {
			calls.Add(1)
			switch {
			case err != nil:
				return CountDefault
			case resp.Header.Get("X-Captcha") != "":
				return CountFailure // a 200 that is a captcha page
			case resp.StatusCode == 503 && resp.Header.Get("X-Maintenance") != "":
				return CountNeutral // this API's planned maintenance
			}
			return CountDefault
		}
		base := newFakeHosts(status(503, "X-Maintenance", "1"))
		c := quick(2, time.Minute)
		cl, tr, _ := ruleClient(t, base, c, WithClassifier(classify))
		for range 5 {
			mustPass(t, do(t, cl, "", "https://a.test/"), 503)
		}
		if s := stateOf(t, tr, "a.test", ""); s.State != StateClosed || s.Neutral != 5 {
			t.Fatalf("maintenance 503s: %+v, want closed with 5 neutral", s)
		}
		base.set(status(200, "X-Captcha", "yes"))
		mustPass(t, do(t, cl, "", "https://a.test/"), 200)
		mustPass(t, do(t, cl, "", "https://a.test/"), 200)
		_, err := get(t, cl, "", "https://a.test/")
		mustReject(t, err, ReasonBreakerOpen)
		if n := calls.Load(); n != 7 {
			t.Errorf("classifier called %d times, want 7: never for the rejected request", n)
		}
		// CountDefault keeps the status lists: a plain 500 is a failure.
		base.set(status(500))
		if _, err := get(t, cl, "", "https://b.test/"); err != nil {
			t.Fatal(err)
		}
		if s := stateOf(t, tr, "b.test", ""); s.Failures != 1 {
			t.Errorf("b.test: %+v, want the 500 counted a failure", s)
		}
	})
}

func TestClassifierSuccessEndsFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A 502 that the classifier calls a success, between failures:
		// fail_max 2 consecutive failures never happen.
		var n atomic.Int64
		base := roundTripperFunc(func(req *http.Request) (*http.Response, error) {
			if n.Add(1)%2 == 0 {
				return status(502, "X-Ok", "1")(req)
			}
			return status(500)(req)
		})
		classify := func(req *http.Request, resp *http.Response, err error) Outcome {
			if resp != nil && resp.Header.Get("X-Ok") != "" {
				return CountSuccess
			}
			return CountDefault
		}
		cl, tr, _ := ruleClient(t, base, quick(2, time.Minute), WithClassifier(classify))
		for range 6 {
			if _, err := get(t, cl, "", "https://a.test/"); err != nil {
				t.Fatal(err)
			}
		}
		if s := stateOf(t, tr, "a.test", ""); s.State != StateClosed || s.Successes != 3 || s.Failures != 3 {
			t.Fatalf("%+v, want closed, 3 successes, 3 failures", s)
		}
	})
}

func TestClassifierPanicCountsAsDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logBuffer
		classify := func(req *http.Request, resp *http.Response, err error) Outcome {
			panic("classifier bug")
		}
		base := newFakeHosts(status(500))
		tr, err := NewTransport(base, WithConfig(quick(3, time.Minute)), WithClassifier(classify), WithLogger(logs.logger()))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		cl := &http.Client{Transport: tr}
		for range 3 {
			if _, err := get(t, cl, "", "https://a.test/"); err != nil {
				t.Fatal(err)
			}
		}
		_, err = get(t, cl, "", "https://a.test/")
		if !errors.Is(err, ErrOpen) {
			t.Fatalf("err = %v: the 500s should count as failures (the default)", err)
		}
		if n := logs.count("classifier panicked"); n != 1 {
			t.Errorf("logged %d times, want once", n)
		}
	})
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{CountDefault: "default", CountSuccess: "success", CountFailure: "failure", CountNeutral: "neutral", 9: "Outcome(9)"} {
		if got := o.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", o, got, want)
		}
	}
}
