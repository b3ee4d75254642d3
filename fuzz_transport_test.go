package hostbreaker

import (
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// FuzzTransport drives a Transport with a fuzzed policy and a fuzzed
// sequence of responses, Retry-After values, roles, hosts, operator calls
// and pauses, on a fake clock, and checks what must always hold: no panic,
// every rejection is an *OpenError with a known reason that never reached
// the base, and the counters add up.
func FuzzTransport(f *testing.F) {
	f.Add([]byte{3, 1, 1, 0, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0, 9, 0, 0})
	f.Add([]byte{1, 2, 2, 1, 3, 1, 2, 0, 1, 200, 1, 0, 2, 0, 1, 7, 3, 3, 8, 1, 1})
	f.Add([]byte{2, 1, 1, 0x40, 0, 0, 6, 0, 0, 6, 0, 0, 6, 0, 0, 6, 6, 0, 255, 5, 0, 30, 0, 0, 5})
	f.Add([]byte("\x02\x01\x03\x01\xff\x00\x10\x20\x30\x40\x50\x60\x70\x80\x90\xa0"))
	statuses := []int{200, 204, 301, 404, 408, 429, 500, 502, 503, 504, 400, 451, 0}
	retryAfters := []string{"", "1", "0", "-3", "120", "99999999999999999999", "soon", "Wed, 21 Oct 2099 07:28:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"}
	hosts := []string{"a.test", "B.test", "b.test.", "c.test:8443", "[::1]:8080", "xn--bcher-kva.example"}
	roles := []string{"", RoleMetadata, RoleArtifact}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 4 {
			return
		}
		cfg := Config{
			MaxHosts: 1 + int(data[0]%8),
			Defaults: Policy{
				FailMax:          1 + int(data[0]%4),
				SuccessThreshold: 1 + int(data[1]%3),
				TrialCalls:       1 + int(data[2]%3),
				ResetTimeout:     time.Duration(1+data[3]%5) * time.Second,
				HalfOpenJitter:   time.Duration(data[1]%3) * 100 * time.Millisecond,
				RetryAfterCap:    time.Duration(data[2]%4) * time.Minute,
			},
			Rolling: Rolling{Enabled: data[3]&0x80 != 0, ThresholdFailures: 2, Window: 5 * time.Second, Cooldown: 3 * time.Second},
		}
		if cfg.Defaults.RetryAfterCap == 0 {
			cfg.Defaults.RetryAfterCap = -1
		}
		if data[3]&0x40 != 0 { // extremes: nothing may overflow
			huge := time.Duration(1<<63 - 1)
			cfg.Defaults.ResetTimeout, cfg.Defaults.HalfOpenJitter, cfg.Defaults.RetryAfterCap = huge, huge, huge
		}
		synctest.Test(t, func(t *testing.T) {
			var next int
			var reached, answered int
			base := newFakeHosts(func(req *http.Request) (*http.Response, error) {
				reached++
				code := statuses[next%len(statuses)]
				if code == 0 {
					return nil, errors.New("connection reset")
				}
				ra := retryAfters[(next/len(statuses))%len(retryAfters)]
				return status(code, "Retry-After", ra)(req)
			})
			tr, err := NewTransport(base, WithConfig(cfg))
			if err != nil {
				t.Fatalf("valid config rejected: %v", err)
			}
			defer tr.Close()
			var rejected int
			for i := 4; i+2 < len(data); i += 3 {
				op, a, b := data[i], int(data[i+1]), int(data[i+2])
				host := hosts[a%len(hosts)]
				switch op % 8 {
				case 5:
					time.Sleep(time.Duration(b%40) * 100 * time.Millisecond)
					continue
				case 6:
					tr.Open(host, time.Duration(b%10)*time.Second, "fuzz")
					continue
				case 7:
					tr.Reset(host)
					continue
				}
				next = b
				scheme := "https://"
				if a&1 == 0 {
					scheme = "http://"
				}
				req, _ := http.NewRequestWithContext(WithRole(t.Context(), roles[op%3]), http.MethodGet, scheme+host+"/", nil)
				before := reached
				resp, err := tr.RoundTrip(req)
				var oe *OpenError
				switch {
				case errors.As(err, &oe):
					rejected++
					if reached != before {
						t.Fatalf("rejected request %d reached the base", i)
					}
					switch oe.Reason {
					case ReasonBreakerOpen, ReasonHalfOpenFull, ReasonRetryAfter, ReasonRollingWindow, ReasonManual:
					default:
						t.Fatalf("unknown reason %q", oe.Reason)
					}
					if !errors.Is(err, ErrOpen) {
						t.Fatal("OpenError does not match ErrOpen")
					}
				case err == nil:
					answered++
					resp.Body.Close()
				}
			}
			var sum uint64
			for _, s := range tr.Snapshot() {
				if s.Requests != s.Successes+s.Failures+s.Neutral+s.Rejected {
					t.Fatalf("counters do not add up: %+v", s)
				}
				sum += s.Successes + s.Failures + s.Neutral
				if s.State < StateClosed || s.State > StateOpen {
					t.Fatalf("bad state %v", s.State)
				}
			}
			// Evicted entries take their counts with them, so the snapshot
			// can only undercount what reached the base.
			if sum > uint64(reached) {
				t.Fatalf("snapshot counts %d outcomes, base saw %d", sum, reached)
			}
		})
	})
}
