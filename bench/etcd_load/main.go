// etcd_load: a put load generator for etcd shaped like etcd's own `benchmark put` tool
// (tools/benchmark in etcd's tree, which Debian does not ship): --conns gRPC connections shared
// by --clients concurrent synchronous writers, --val-size byte values over --key-space keys.
// It runs --warmup seconds unmeasured, then --duration seconds measured, and prints one JSON
// object: completed puts in the window, throughput, and latency percentiles (exact, from every
// sample) plus a CDF. Built offline by bench/compare_peers.py against Debian's etcd client
// sources (golang-etcd-server-dev) with GOPATH=/usr/share/gocode GO111MODULE=off.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

type result struct {
	Generator string             `json:"generator"`
	Ops       int                `json:"ops"`
	Errors    int64              `json:"errors"`
	DurationS float64            `json:"duration_s"`
	OpsPerS   float64            `json:"ops_per_s"`
	LatencyMs map[string]float64 `json:"latency_ms"`
	Cdf       [][2]float64       `json:"latency_cdf"`
}

func percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return float64(sorted[rank-1]) / 1e6
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated etcd client URLs")
	conns := flag.Int("conns", 100, "gRPC connections")
	clients := flag.Int("clients", 1000, "concurrent writers (outstanding puts)")
	warmup := flag.Float64("warmup", 2, "unmeasured seconds first")
	duration := flag.Float64("duration", 10, "measured seconds")
	valSize := flag.Int("val-size", 100, "value bytes")
	keySpace := flag.Int("key-space", 4096, "distinct keys")
	flag.Parse()
	if *conns < 1 || *clients < 1 {
		fmt.Fprintln(os.Stderr, "--conns and --clients must be at least 1")
		os.Exit(2)
	}
	if *conns > *clients {
		*conns = *clients
	}
	eps := strings.Split(*endpoints, ",")
	pool := make([]*clientv3.Client, *conns)
	for i := range pool {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(1)
		}
		defer c.Close()
		pool[i] = c
	}
	value := strings.Repeat("v", *valSize)
	start := time.Now()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	stopAt := measureFrom.Add(time.Duration(*duration * float64(time.Second)))
	samples := make([][]int64, *clients)
	var errs int64
	var wg sync.WaitGroup
	for i := 0; i < *clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := pool[i%*conns]
			var mine []int64
			for n := i; ; n += *clients {
				t0 := time.Now()
				if !t0.Before(stopAt) {
					break
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.Put(ctx, fmt.Sprintf("key-%d", n%*keySpace), value)
				cancel()
				t1 := time.Now()
				if err != nil {
					atomic.AddInt64(&errs, 1)
					continue
				}
				if !t1.Before(measureFrom) && t1.Before(stopAt) {
					mine = append(mine, t1.Sub(t0).Nanoseconds())
				}
			}
			samples[i] = mine
		}(i)
	}
	wg.Wait()
	var all []int64
	for _, s := range samples {
		all = append(all, s...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	out := result{
		Generator: fmt.Sprintf("etcd_load (Go, clientv3, %d conns x %d clients)", *conns, *clients),
		Ops:       len(all), Errors: errs, DurationS: *duration,
		OpsPerS:   float64(len(all)) / *duration,
		LatencyMs: map[string]float64{},
	}
	if len(all) > 0 {
		for _, p := range []float64{50, 90, 99, 99.9} {
			out.LatencyMs[fmt.Sprintf("p%g", p)] = percentile(all, p)
		}
		out.LatencyMs["max"] = float64(all[len(all)-1]) / 1e6
		for _, p := range []float64{1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.99, 100} {
			out.Cdf = append(out.Cdf, [2]float64{p, percentile(all, p)})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
