package hostbreaker_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

func ExampleNewTransport() {
	// A host that is down.
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer sick.Close()

	cfg := hostbreaker.DefaultConfig()
	cfg.Defaults.FailMax = 2
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	ctx := hostbreaker.WithRole(context.Background(), hostbreaker.RoleMetadata)
	for range 3 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sick.URL, nil)
		resp, err := client.Do(req)
		var oe *hostbreaker.OpenError
		switch {
		case errors.As(err, &oe):
			fmt.Println("rejected:", oe.Reason, "for role", oe.Role)
		case err != nil:
			fmt.Println("error:", err)
		default:
			resp.Body.Close()
			fmt.Println("status:", resp.StatusCode)
		}
	}
	// Output:
	// status: 502
	// status: 502
	// rejected: breaker-open for role metadata
}

func ExampleParseConfig() {
	cfg, err := hostbreaker.ParseConfig([]byte(`
[defaults]
fail_max = 5
[defaults.roles.artifact]
reset_timeout = "5m"
[hosts."api.crossref.org"]
fail_max = 0
`))
	fmt.Println(err)
	cfg, err = hostbreaker.ParseConfig([]byte(`
[defaults.roles.artifact]
reset_timeout = "5m"
`))
	fmt.Println(err, cfg.Defaults.Roles["artifact"].ResetTimeout)
	// Output:
	// hostbreaker: config: line 7: hosts."api.crossref.org".fail_max: must be at least 1, got 0
	// <nil> 5m0s
}

func ExampleTransport_Open() {
	tr, _ := hostbreaker.NewTransport(nil)
	defer tr.Close()
	if err := tr.Open("https://API.example.org:443/works", 10*time.Minute, "vendor maintenance"); err != nil {
		fmt.Println(err)
	}
	for _, s := range tr.Snapshot() {
		fmt.Println(s.Host, s.State, s.Reason, s.Note)
	}
	if err := tr.Reset("api.example.org"); err != nil {
		fmt.Println(err)
	}
	fmt.Println(len(tr.Snapshot()))
	fmt.Println(tr.Open("*.example.org", time.Minute, ""))
	// Output:
	// api.example.org open manual vendor maintenance
	// 0
	// hostbreaker: open "*.example.org": host "*.example.org": invalid name
}

// A host paced at 2 requests per second: a request that would wait for its
// turn longer than MaxWait is rejected at once, with its turn as Until.
func ExamplePolicy_rate() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()

	cfg := hostbreaker.Config{Defaults: hostbreaker.Policy{Rate: 2, MaxWait: -1}} // never wait
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	for range 2 {
		resp, err := client.Get(srv.URL)
		if oe, ok := errors.AsType[*hostbreaker.OpenError](err); ok {
			wait := time.Until(oe.Until) // half a second after the first request, less the time since
			fmt.Printf("rejected: %s, its turn within 0.5s: %v\n", oe.Reason, wait > 0 && wait <= 500*time.Millisecond)
			continue
		}
		if err != nil {
			panic(err)
		}
		resp.Body.Close()
		fmt.Println(resp.Status)
	}
	fmt.Println("rate:", tr.Snapshot()[0].Rate)
	// Output:
	// 200 OK
	// rejected: rate-limited, its turn within 0.5s: true
	// rate: 2
}

// A classifier flags what the status lists cannot see: here a host that
// answers 200 with a captcha page, which it marks with a header. The body
// is never read by the classifier.
func ExampleWithClassifier() {
	captcha := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Captcha", "required")
		fmt.Fprint(w, "<html>are you a robot?</html>")
	}))
	defer captcha.Close()

	cfg := hostbreaker.DefaultConfig()
	cfg.Defaults.FailMax = 2
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg),
		hostbreaker.WithClassifier(func(req *http.Request, resp *http.Response, err error) hostbreaker.Outcome {
			if resp != nil && resp.Header.Get("X-Captcha") != "" {
				return hostbreaker.CountFailure
			}
			return hostbreaker.CountDefault // the status lists decide
		}))
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	for range 3 {
		resp, err := client.Get(captcha.URL)
		if err != nil {
			var oe *hostbreaker.OpenError
			errors.As(err, &oe)
			fmt.Println("rejected:", oe.Reason)
			continue
		}
		resp.Body.Close()
		fmt.Println(resp.StatusCode, "with a captcha")
	}
	// Output:
	// 200 with a captcha
	// 200 with a captcha
	// rejected: breaker-open
}

// A host that takes at most one request at a time: a request holds its
// slot until its response body is closed or read to the end, and the next
// one waits for it, at most MaxWait; past that it is rejected.
func ExamplePolicy_maxConcurrent() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "a large file")
	}))
	defer srv.Close()

	cfg := hostbreaker.Config{Defaults: hostbreaker.Policy{MaxConcurrent: 1, MaxWait: 100 * time.Millisecond}}
	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithConfig(cfg))
	if err != nil {
		panic(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	first, err := client.Get(srv.URL) // its body, still open, holds the slot
	if err != nil {
		panic(err)
	}
	_, err = client.Get(srv.URL)
	if oe, ok := errors.AsType[*hostbreaker.OpenError](err); ok {
		fmt.Println("second request rejected:", oe.Reason)
	}

	// Closing the body (or reading it to the end) gives the slot back.
	first.Body.Close()
	resp, err := client.Get(srv.URL)
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("third request: %s, %q\n", resp.Status, body)
	// Output:
	// second request rejected: concurrency-limited
	// third request: 200 OK, "a large file"
}
