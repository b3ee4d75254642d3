package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hostbreaker/hostbreaker"
)

// failingTransport answers every request with a 500.
type failingTransport struct{}

func (failingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 500, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}, nil
}

// TestShowMarksShadowHosts: a Transport whose host is in shadow mode
// publishes its breaker states, and show marks them, in the table and in
// JSON, while the host's requests keep flowing.
func TestShowMarksShadowHosts(t *testing.T) {
	eachStore(t, func(t *testing.T, store string) {
		tr, err := hostbreaker.NewTransport(failingTransport{}, hostbreaker.WithConfig(hostbreaker.Config{
			Defaults: hostbreaker.Policy{FailMax: 2},
			Hosts:    map[string]hostbreaker.Policy{"shadow.example.org": {Mode: hostbreaker.ModeShadow}},
			Store:    hostbreaker.StoreConfig{URL: store, PollInterval: 50 * time.Millisecond},
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		client := &http.Client{Transport: tr}
		for range 3 {
			resp, err := client.Get("https://shadow.example.org/")
			if err != nil {
				t.Fatalf("a shadow host rejected a request: %v", err)
			}
			resp.Body.Close()
		}
		deadline := time.Now().Add(5 * time.Second)
		var out string
		for {
			out = mustRun(t, "show", "-store", store)
			if strings.Contains(out, "shadow.example.org") || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(out, "open (shadow)") {
			t.Fatalf("show does not mark the shadow host:\n%s", out)
		}
		var rows []row
		if err := json.Unmarshal([]byte(mustRun(t, "show", "-store", store, "-json")), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || !rows[0].Shadow || rows[0].State != "open" {
			t.Fatalf("show -json = %+v, want one open row with shadow true", rows)
		}
	})
}
