package hostbreaker_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"

	"github.com/hostbreaker/hostbreaker"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A Transport reports its metrics to the MeterProvider given with
// WithMeterProvider (without it, to the global one when NewTransport
// runs). Here a ManualReader collects them after one request; a program
// would use a PeriodicReader with an OTLP exporter, or the Prometheus
// exporter (see docs/telemetry.md).
func ExampleWithMeterProvider() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	defer srv.Close()

	tr, err := hostbreaker.NewTransport(nil, hostbreaker.WithMeterProvider(mp))
	if err != nil {
		log.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	req, _ := http.NewRequestWithContext(hostbreaker.WithRole(context.Background(), hostbreaker.RoleMetadata), http.MethodGet, srv.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	var names, points []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			names = append(names, m.Name+" "+m.Unit)
			if m.Name != "hostbreaker.requests" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				host, _ := dp.Attributes.Value("server.address")
				role, _ := dp.Attributes.Value("hostbreaker.role")
				outcome, _ := dp.Attributes.Value("hostbreaker.outcome")
				points = append(points, fmt.Sprintf("requests{server.address=%s, hostbreaker.role=%s, hostbreaker.outcome=%s} = %d",
					strings.Replace(host.AsString(), req.URL.Host, "SERVER", 1), role.AsString(), outcome.AsString(), dp.Value))
			}
		}
	}
	slices.Sort(names)
	slices.Sort(points)
	fmt.Println(strings.Join(names, "\n"))
	fmt.Println(strings.Join(points, "\n"))
	// Output:
	// hostbreaker.breakers {breaker}
	// hostbreaker.requests {request}
	// hostbreaker.untracked {request}
	// requests{server.address=SERVER, hostbreaker.role=metadata, hostbreaker.outcome=success} = 1
}
