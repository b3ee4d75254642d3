package hostbreaker

// This file holds the caller's classifier (WithClassifier, Outcome): a
// function that can override how a response or transport error counts,
// after the policy's status lists have decided. The status lists and the
// error rules are in classify.go.

import (
	"fmt"
	"net/http"
	"strconv"
)

// Outcome is how a [Classifier] says a request counts for its (host,
// role) breaker. The zero value is CountDefault.
type Outcome uint8

// The values of an Outcome.
const (
	// CountDefault keeps what the policy decided: its status lists, the
	// Retry-After and throttle rules, and the transport-error rules.
	CountDefault Outcome = iota
	CountSuccess         // a success: it ends a run of failures
	CountFailure         // a failure: it counts towards fail_max and failure_rate
	CountNeutral         // neither: the breaker does not see it
)

// String returns "default", "success", "failure" or "neutral".
func (o Outcome) String() string {
	switch o {
	case CountDefault:
		return "default"
	case CountSuccess:
		return "success"
	case CountFailure:
		return "failure"
	case CountNeutral:
		return "neutral"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// outcome returns the internal outcome of o, which is not CountDefault.
func (o Outcome) outcome() outcome {
	switch o {
	case CountSuccess:
		return outcomeSuccess
	case CountNeutral:
		return outcomeNeutral
	}
	return outcomeFailure
}

// Classifier decides how a request that reached the base transport counts:
// resp is the response (nil when err is not), err the base transport's
// error. It runs on the request's goroutine after the policy's status
// lists have classified the request, once per request that was sent, never
// for a rejected one; it must not read or close resp.Body (the caller
// has not read it yet) and should be fast. Returning CountDefault keeps
// the policy's decision; an Outcome beyond CountNeutral counts as a
// failure. A panic in it is recovered, logged once, and counts as
// CountDefault. It must be safe for concurrent use.
type Classifier func(req *http.Request, resp *http.Response, err error) Outcome

// WithClassifier sets a Classifier that can override how each request
// counts, after the status lists: for a 200 that is an error page or a
// captcha (flag it by a header, not by reading the body), or a status that
// means maintenance on one API. A nil f is ignored. See docs/config.md,
// "How a request counts".
func WithClassifier(f func(*http.Request, *http.Response, error) Outcome) Option {
	return optionFunc(func(o *options) {
		if f != nil {
			o.classify = f
		}
	})
}

// classify runs the caller's classifier, recovering a panic in it: that
// counts as CountDefault and is logged the first time.
func (t *Transport) classify(req *http.Request, resp *http.Response, err error) (v Outcome) {
	defer func() {
		if r := recover(); r != nil {
			v = CountDefault
			if t.panicked.CompareAndSwap(false, true) {
				t.log.Error("hostbreaker: classifier panicked; its requests count as the policy decides (logged once)",
					"host", req.URL.Host, "panic", fmt.Sprint(r))
			}
		}
	}()
	return t.classifier(req, resp, err)
}
