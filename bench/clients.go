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
	wrap func(base http.RoundTripper, s setup) (rt http.RoundTripper, close func(), err error)
}

// setup is what a scenario asks of the clients. Only hostbreaker reads
// hosts and storeURL: the peers have no rate limiter nor shared state.
type setup struct {
	openFor  time.Duration                 // how long a breaker stays open
	hosts    map[string]hostbreaker.Policy // hostbreaker's Config.Hosts (a rate below the server's)
	storeURL string                        // hostbreaker's Config.Store.URL, shared by processes
}

var clients = []client{
	{"bare", wrapBare},
	{"failsafe-go", wrapFailsafe},
	{"gobreaker", wrapGobreaker},
	{"hostbreaker", wrapHostbreaker},
}

// clientNamed returns the client called name.
func clientNamed(name string) (client, bool) {
	for _, c := range clients {
		if c.name == name {
			return c, true
		}
	}
	return client{}, false
}

func wrapBare(base http.RoundTripper, _ setup) (http.RoundTripper, func(), error) {
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
func wrapFailsafe(base http.RoundTripper, s setup) (http.RoundTripper, func(), error) {
	cb := circuitbreaker.NewBuilder[*http.Response]().
		HandleIf(failing).
		WithFailureThreshold(failMax).
		WithDelay(s.openFor).
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

func wrapGobreaker(base http.RoundTripper, s setup) (http.RoundTripper, func(), error) {
	return &gobreakerRT{base: base, openFor: s.openFor}, func() {}, nil
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

// hostbreaker on its defaults (fail_max 5, reset_timeout 60s, no
// configured rate), but for what the scenario sets: ResetTimeout when -open
// is not 60s, Hosts entries (scenario 6: a rate under the server's), and a
// store shared by the processes of scenario 7. The store is required, so
// that a store that cannot be opened fails the run instead of measuring
// local protection under the store's name. When the scenario sets none of
// these, NewTransport gets no option at all, as a user who adds
// hostbreaker without a config would call it.
func wrapHostbreaker(base http.RoundTripper, s setup) (http.RoundTripper, func(), error) {
	if s.openFor == 60*time.Second && s.hosts == nil && s.storeURL == "" {
		t, err := hostbreaker.NewTransport(base)
		if err != nil {
			return nil, nil, err
		}
		return t, func() { t.Close() }, nil
	}
	cfg := hostbreaker.DefaultConfig()
	if s.openFor != 60*time.Second {
		cfg.Defaults.ResetTimeout = s.openFor
	}
	cfg.Hosts = s.hosts
	if s.storeURL != "" {
		cfg.Store.URL = s.storeURL
		cfg.Store.Required = true
	}
	t, err := hostbreaker.NewTransport(base, hostbreaker.WithConfig(cfg))
	if err != nil {
		return nil, nil, err
	}
	return t, func() { t.Close() }, nil
}
