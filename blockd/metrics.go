package blockd

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus metrics, in a private registry.
type metrics struct {
	reg       *prometheus.Registry
	latency   *prometheus.HistogramVec
	rejects   *prometheus.CounterVec
	putChunks prometheus.Counter
	putBytes  prometheus.Counter
}

func newMetrics(store Store) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "blockd_request_duration_seconds",
			Help:    "Latency of blockd requests by route and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route", "code"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "blockd_rejects_total",
			Help: "Refused requests and chunks by reason.",
		}, []string{"reason"}),
		putChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blockd_put_chunks_total",
			Help: "Chunks received, verified and acknowledged (including ones already stored).",
		}),
		putBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "blockd_put_encoded_bytes_total",
			Help: "Encoded bytes of acknowledged chunks.",
		}),
	}
	m.reg.MustRegister(m.latency, m.rejects, m.putChunks, m.putBytes,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	if ss, ok := store.(StatStore); ok {
		gauge := func(name, help string, f func(Stats) int64) {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help},
				func() float64 { return float64(f(ss.Stats())) }))
		}
		gauge("blockd_chunks", "Distinct chunks stored.", func(s Stats) int64 { return s.Chunks })
		gauge("blockd_stored_raw_bytes", "Raw (decoded) bytes of the stored chunks.", func(s Stats) int64 { return s.RawBytes })
		gauge("blockd_stored_encoded_bytes", "Encoded bytes of the stored chunks.", func(s Stats) int64 { return s.EncodedBytes })
	} else if us, ok := store.(UsageStore); ok {
		// Stores that count only what Usage reports (no raw sizes).
		gauge := func(name, help string, f func(Usage) uint64) {
			m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
				u, err := us.Usage(context.Background())
				if err != nil {
					return -1
				}
				return float64(f(u))
			}))
		}
		gauge("blockd_chunks", "Distinct chunks stored.", func(u Usage) uint64 { return u.Chunks })
		gauge("blockd_stored_encoded_bytes", "Encoded bytes of the stored chunks.", func(u Usage) uint64 { return u.EncodedBytes })
	}
	if sc, ok := store.(interface{ Syncs() int64 }); ok {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "blockd_syncs_total",
			Help: "Syncs to stable storage (each shared by the puts waiting for it).",
		}, func() float64 { return float64(sc.Syncs()) }))
	}
	return m
}
