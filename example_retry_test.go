package hostbreaker_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"github.com/hostbreaker/hostbreaker"
)

func ExampleNewRetryClient() {
	// A host that fails twice, then answers.
	var flakyHits atomic.Int32
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if flakyHits.Add(1) <= 2 {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	defer flaky.Close()
	// A host that asks for an hour's pause.
	var busyHits atomic.Int32
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		busyHits.Add(1)
		w.Header().Set("Retry-After", "3600")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer busy.Close()

	tr, err := hostbreaker.NewTransport(nil)
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := hostbreaker.NewRetryClient(tr) // hostbreaker inside: every attempt is gated
	client.RetryWaitMin, client.RetryWaitMax = 10*time.Millisecond, 50*time.Millisecond

	ctx := hostbreaker.WithRole(context.Background(), hostbreaker.RoleMetadata)
	for _, u := range []string{flaky.URL, busy.URL} {
		req, _ := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := client.Do(req)
		var oe *hostbreaker.OpenError
		var re *hostbreaker.RetryError
		switch {
		case errors.As(err, &oe):
			// The second attempt met the cooldown: no hour-long sleep.
			errors.As(err, &re)
			fmt.Printf("rejected: %s after %d attempts (%d sent)\n", oe.Reason, re.Attempts, busyHits.Load())
		case err != nil:
			fmt.Println("error:", err)
		default:
			resp.Body.Close()
			fmt.Printf("status: %d after %d attempts\n", resp.StatusCode, flakyHits.Load())
		}
	}
	// Output:
	// status: 200 after 3 attempts
	// rejected: retry-after after 2 attempts (1 sent)
}
