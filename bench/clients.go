package main

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/failsafe-go/failsafe-go/failsafehttp"
	"github.com/hostbreaker/hostbreaker"
	"github.com/sony/gobreaker/v2"
)

// The comparable settings: 5 consecutive failures open a breaker, which
// stays open for openFor (60 s unless -open says otherwise).
const failMax = 5

// A client is one way of protecting an http.RoundTripper.
type client struct {
	name string
	// wrap puts the protection in front of base; close releases it.
	wrap func(base http.RoundTripper, openFor time.Duration) (rt http.RoundTripper, close func(), err error)
}

var clients = []client{
	{"bare", wrapBare},
	{"failsafe-go", wrapFailsafe},
	{"gobreaker", wrapGobreaker},
	{"hostbreaker", wrapHostbreaker},
}

func wrapBare(base http.RoundTripper, _ time.Duration) (http.RoundTripper, func(), error) {
	return base, func() {}, nil
}

// failing is what counts as a failure for the peers: a transport error,
// a 5xx or a 429 (hostbreaker's default failure statuses are 408 429 500
// 502 503 504).
func failing(resp *http.Response, err error) bool {
	return err != nil || resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout
}

// failsafe-go: failsafehttp.NewRoundTripper with one count-based circuit
// breaker, as its docs show it. It has one breaker for the whole
// RoundTripper, not one per host.
func wrapFailsafe(base http.RoundTripper, openFor time.Duration) (http.RoundTripper, func(), error) {
	cb := circuitbreaker.NewBuilder[*http.Response]().
		HandleIf(failing).
		WithFailureThreshold(failMax).
		WithDelay(openFor).
		Build()
	return failsafehttp.NewRoundTripper(base, cb), func() {}, nil
}

// gobreaker v2: one breaker per host in a sync.Map, as users write it.
type gobreakerRT struct {
	base     http.RoundTripper
	openFor  time.Duration
	breakers sync.Map // host -> *gobreaker.CircuitBreaker[*http.Response]
}

type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("status %d", e.code) }

func wrapGobreaker(base http.RoundTripper, openFor time.Duration) (http.RoundTripper, func(), error) {
	return &gobreakerRT{base: base, openFor: openFor}, func() {}, nil
}

func (g *gobreakerRT) breaker(host string) *gobreaker.CircuitBreaker[*http.Response] {
	if cb, ok := g.breakers.Load(host); ok {
		return cb.(*gobreaker.CircuitBreaker[*http.Response])
	}
	cb, _ := g.breakers.LoadOrStore(host, gobreaker.NewCircuitBreaker[*http.Response](gobreaker.Settings{
		Name:        host,
		MaxRequests: 1,
		Timeout:     g.openFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failMax },
	}))
	return cb.(*gobreaker.CircuitBreaker[*http.Response])
}

func (g *gobreakerRT) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.breaker(req.URL.Host).Execute(func() (*http.Response, error) {
		resp, err := g.base.RoundTrip(req)
		if err == nil && failing(resp, nil) {
			return resp, &statusError{resp.StatusCode}
		}
		return resp, err
	})
	var se *statusError
	if errors.As(err, &se) {
		return resp, nil // the failure was counted; the caller still gets the response
	}
	return resp, err
}

// hostbreaker on its defaults: fail_max 5, reset_timeout 60s. -open does
// not change it unless it differs from 60s, then it sets ResetTimeout.
func wrapHostbreaker(base http.RoundTripper, openFor time.Duration) (http.RoundTripper, func(), error) {
	var opts []hostbreaker.Option
	if openFor != 60*time.Second {
		cfg := hostbreaker.DefaultConfig()
		cfg.Defaults.ResetTimeout = openFor
		opts = append(opts, hostbreaker.WithConfig(cfg))
	}
	t, err := hostbreaker.NewTransport(base, opts...)
	if err != nil {
		return nil, nil, err
	}
	return t, func() { t.Close() }, nil
}
