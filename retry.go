package hostbreaker

// This file holds the retry client: go-retryablehttp with hostbreaker
// inside it (NewRetryClient) and the hooks that make retries respect the
// breakers and cooldowns (RetryPolicy, Backoff). The Transport is in
// transport.go.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// NewRetryClient returns a go-retryablehttp client that sends every attempt
// through t: its HTTPClient has t as Transport, so each attempt is gated by
// the breakers and cooldowns and counted by them. Do not wrap the client's
// StandardClient in a Transport instead: the Transport would then see one
// request however many attempts the client makes.
//
// Each attempt has a timeout, HTTPClient.Timeout, of 30s by default: a
// host that never answers ends the attempt there, as a failure that the
// breaker counts, instead of blocking Do for ever. As for any http.Client,
// the timeout covers reading the response body too, and 0 means none: set
// a longer one for large downloads or slow hosts. A request's context
// deadline bounds the whole of Do as well.
//
// The client uses RetryPolicy as CheckRetry, t.Backoff as Backoff and
// RetryErrorHandler as ErrorHandler; its Logger is nil, so it prints
// nothing; its other settings are retryablehttp's defaults (RetryMax 4,
// RetryWaitMin 1s, RetryWaitMax 30s). As with any retryablehttp.Client,
// change its fields before its first use, not while it is in use.
func NewRetryClient(t *Transport) *retryablehttp.Client {
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Transport: t, Timeout: defaultAttemptTimeout}
	c.Logger = nil
	c.CheckRetry = RetryPolicy
	c.Backoff = t.Backoff
	c.ErrorHandler = RetryErrorHandler
	return c
}

// defaultAttemptTimeout is the HTTPClient.Timeout of a client made by
// NewRetryClient: the longest one attempt may take, until the end of the
// response's headers and body.
const defaultAttemptTimeout = 30 * time.Second

// RetryPolicy is a retryablehttp.CheckRetry that retries as
// retryablehttp.DefaultRetryPolicy does (connection errors, 429, 5xx but
// 501), except that it never retries a rejection by a Transport: when err
// holds an *OpenError it returns false and err, so that the client gives up
// at once, without a backoff sleep, with an error that matches ErrOpen.
//
// When the context is done it returns false and the context's error: as
// is, or, when the attempt failed with a *url.Error (as an http.Client's
// errors are), inside a *url.Error with that one's Op and URL, so that
// RetryErrorHandler can name the request. errors.Is sees the context's
// error either way.
//
// Like DefaultRetryPolicy, it returns no error when the retries of a 429 or
// 5xx run out; RetryErrorHandler names the last status instead.
func RetryPolicy(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if cerr := ctx.Err(); cerr != nil {
		if ue, ok := errors.AsType[*url.Error](err); ok {
			return false, &url.Error{Op: ue.Op, URL: ue.URL, Err: cerr}
		}
		return false, cerr
	}
	if _, ok := errors.AsType[*OpenError](err); ok {
		return false, err
	}
	return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
}

// Backoff is a retryablehttp.Backoff that knows the Transport's cooldowns
// and breakers; lo and hi are the client's RetryWaitMin and RetryWaitMax.
// When the response's (host, role) is blocked, because the
// host cools down (after a Retry-After on a 429 or 503, or for another
// reason) or its breaker is open, it waits until the block ends, plus a
// margin of 2 % (within hi), if that is at most hi; if the block ends later than hi
// it returns 0: the next attempt is rejected with an *OpenError at once and
// RetryPolicy stops the client. The client therefore never sleeps longer
// than hi, whatever the Retry-After (unlike retryablehttp.DefaultBackoff,
// which sleeps for any Retry-After: hashicorp/go-retryablehttp#247).
//
// Otherwise it returns an exponential backoff, lo·2^attempt capped at hi,
// with jitter: a random duration in the upper half of that, but not below
// lo. It ignores the Retry-After header itself; the Transport obeys it,
// within its policy's RetryAfterCap, and a policy that ignores it gets the
// exponential backoff.
//
// Backoff is safe for concurrent use.
func (t *Transport) Backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if left, ok := t.blocked(resp.Request); ok {
			if left > hi {
				return 0
			}
			return min(left+left/50, hi)
		}
	}
	return jitteredBackoff(lo, hi, attempt)
}

// blocked reports whether a request like req would be rejected now by the
// host's cooldown or the (host, role) breaker, and for how long. Half-open
// breakers do not count: their rejection has no deadline.
func (t *Transport) blocked(req *http.Request) (time.Duration, bool) {
	if req == nil || req.URL == nil {
		return 0, false
	}
	host, err := normalizeHost(req.URL.Scheme, req.URL.Host)
	if err != nil {
		return 0, false
	}
	now := t.now()
	var until int64
	if h := t.reg.host(host); h != nil && h.coolingDown(now) {
		until = h.until.Load()
	}
	if e := t.reg.lookup(host, RoleFromContext(req.Context())); e != nil {
		if st, ou := e.status(now); st == StateOpen {
			until = max(until, ou)
		}
	}
	if until <= now {
		return 0, false
	}
	return time.Duration(until - now), true
}

// jitteredBackoff returns a random duration in [b/2, b], b = lo·2^attempt
// capped at hi, and not below lo (but never above hi).
func jitteredBackoff(lo, hi time.Duration, attempt int) time.Duration {
	lo, hi = max(lo, 0), max(hi, 0)
	b := lo
	for i := 0; i < attempt && b > 0 && b < hi; i++ {
		b = min(b, hi/2) * 2 // no overflow
	}
	b = min(b, hi)
	return min(max(b/2+rand.N(b/2+1), lo), hi)
}

// RetryError is the error of a client made by NewRetryClient that gives
// up: its last attempt failed with an error, or its retries ran out on a
// response that RetryPolicy would retry (a 429 or 5xx). It unwraps to Err,
// so errors.Is(err, ErrOpen) and errors.As with *OpenError see a
// rejection, and errors.Is sees a context's error.
type RetryError struct {
	Method   string // of the request, "" if unknown
	URL      string // of the request, without its password; "" if unknown
	Attempts int    // attempts made, rejected ones included
	// StatusCode and Status are those of the last response, if the last
	// attempt got one; 0 and "" otherwise.
	StatusCode int
	Status     string
	Err        error // why the client gave up; nil if it ran out of retries
}

// Error returns "METHOD URL giving up after N attempts: " and the last
// status, the error, or both.
func (e *RetryError) Error() string {
	s := ""
	if e.Method != "" || e.URL != "" {
		s = e.Method + " " + e.URL + " "
	}
	s += "giving up after " + attempts(e.Attempts)
	if e.Status != "" {
		s += ": last status " + e.Status
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns Err.
func (e *RetryError) Unwrap() error { return e.Err }

func attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return fmt.Sprintf("%d attempts", n)
}

// RetryErrorHandler is a retryablehttp.ErrorHandler that returns a
// *RetryError naming the last status, where the client's default error
// says only "giving up after N attempt(s)" when its retries run out on a
// 429 or 5xx. It drains and closes the last response's body.
//
// The RetryError's Method and URL are those of the last response's
// request, else those of a *url.Error in err (RetryPolicy keeps one when
// the context ends an attempt); its URL is without its password, written
// "xxxxx" as go-retryablehttp and url.URL.Redacted write it.
func RetryErrorHandler(resp *http.Response, err error, numTries int) (*http.Response, error) {
	e := &RetryError{Attempts: numTries, Err: err}
	var req *http.Request
	if resp != nil {
		e.StatusCode, e.Status = resp.StatusCode, resp.Status
		if e.Status == "" {
			e.Status = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		}
		req = resp.Request
		if resp.Body != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
		}
	}
	if ue, ok := errors.AsType[*url.Error](err); ok && req == nil {
		// net/http has replaced the password with "***"; redactURL
		// (store_redis.go) writes "xxxxx", as Redacted does below.
		e.Method, e.URL = strings.ToUpper(ue.Op), redactURL(ue.URL)
	} else if req != nil && req.URL != nil {
		e.Method, e.URL = req.Method, req.URL.Redacted()
	}
	return nil, e
}
