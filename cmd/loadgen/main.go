// Command loadgen drives HTTP/1.1 load at a loopback address over raw
// connections and prints the totals, counting every failure by kind. It is
// what scripts/demo.sh and scripts/bench.sh measure with.
//
//	loadgen -addr 127.0.0.1:8080 -conns 32 -keepalive -duration 30s [-json]
//
// It runs until -duration, -max or SIGINT/SIGTERM, whichever comes first.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/handoff/handoff/loadgen"
)

func main() {
	var o loadgen.Options
	asJSON := flag.Bool("json", false, "print the result as one JSON document")
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:8080", "loopback host:port, or a unix socket path with -network unix")
	flag.StringVar(&o.Network, "network", "tcp", "tcp or unix")
	flag.IntVar(&o.Conns, "conns", 8, "concurrent connections")
	flag.BoolVar(&o.KeepAlive, "keepalive", false, "reuse connections (otherwise Connection: close on every request)")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "stop after this long")
	flag.Int64Var(&o.MaxRequests, "max", 0, "stop after this many requests (0: no limit)")
	flag.StringVar(&o.Path, "path", "/", "request path")
	flag.DurationVar(&o.Timeout, "timeout", 5*time.Second, "per-request timeout")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run, err := loadgen.Start(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	res := run.Wait()
	if *asJSON {
		out := struct {
			*loadgen.Result
			RPS          float64 `json:"rps"`
			MedianSecond int64   `json:"median_second"`
			WorstSecond  int64   `json:"worst_second"`
		}{res, res.RPS(), res.MedianSecond(), res.WorstSecond()}
		json.NewEncoder(os.Stdout).Encode(out)
	} else {
		fmt.Println(res)
	}
	if res.FailedTotal > 0 {
		os.Exit(1)
	}
}
