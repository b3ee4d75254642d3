package hostbreaker

import (
	"net/http"
	"testing"
	"time"
)

// TestLimiterAgainstNginx runs 8 crawler workers through a Transport on
// its defaults against a real nginx limit_req (5 r/s, burst 5, 429 with
// Retry-After: 1) for 8 s, and a bare client the same way: hostbreaker
// gets most of what nginx allows with a handful of 429s where the bare
// client provokes thousands. The bounds are generous (this is a real
// server on a loaded machine); the protection benchmark in bench/
// measures the 30 s figures.
func TestLimiterAgainstNginx(t *testing.T) {
	const d, workers = 8 * time.Second, 8
	run := func(rt http.RoundTripper, srv *nginxServer) nginxCounts {
		crawl(t, rt, srv.URL+"/x", workers, d)
		return srv.Counts(t)
	}
	limit := nginxLimit{Rate: 5, Burst: 5, RetryAfter: 1}
	bare := run(http.DefaultTransport.(*http.Transport).Clone(), startNginx(t, limit))

	srv := startNginx(t, limit)
	tr, err := NewTransport(http.DefaultTransport.(*http.Transport).Clone())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	hb := run(tr, srv)
	allowed := 5*d.Seconds() + 5
	t.Logf("allowed %.0f in %v; bare: %d served, %d 429s; hostbreaker: %d served (%.0f%%), %d 429s, rate now %.2f",
		allowed, d, bare.OK, bare.TooMany, hb.OK, 100*float64(hb.OK)/allowed, hb.TooMany, tr.Snapshot()[0].Rate)
	if float64(hb.OK) < 0.5*allowed {
		t.Errorf("hostbreaker served %d of %.0f allowed: under half", hb.OK, allowed)
	}
	if hb.TooMany > 50 || hb.TooMany*100 > bare.TooMany {
		t.Errorf("hostbreaker provoked %d 429s (bare: %d): want at most 50 and 1%% of bare", hb.TooMany, bare.TooMany)
	}
}
