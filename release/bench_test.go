package release

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkFetch50MB fetches and unpacks a ~50 MB tgz (2000 files of
// 25 KiB of random bytes) over HTTP on 127.0.0.1, checksum verified:
//
//	go test -run '^$' -bench Fetch50MB -benchtime 5x ./release/
func BenchmarkFetch50MB(b *testing.B) {
	var es []tarEntry
	for i := 0; i < 2000; i++ {
		body := make([]byte, 25<<10)
		rand.Read(body)
		es = append(es, tarEntry{Name: fmt.Sprintf("app/d%02d/f%04d", i/100, i), Body: string(body)})
	}
	tgz := gz(b, buildTar(b, es))
	srv := httptest.NewServer(files(map[string][]byte{"/app.tgz": tgz}))
	defer srv.Close()
	sb := newSandbox(b)
	s := sb.open(b, Options{})
	url := srv.URL + "/app.tgz?checksum=sha256:" + sha(tgz)
	b.SetBytes(int64(len(tgz)))
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		id, err := s.Fetch(context.Background(), FetchRequest{URL: url, ID: fmt.Sprint("r", i)})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		b.StopTimer()
		if err := s.Remove(id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(len(tgz))/1e6, "MB/archive")
	b.Logf("fetch+verify+unpack of a %.1f MB tgz (2000 files) over 127.0.0.1: %v per fetch", float64(len(tgz))/1e6, total/time.Duration(b.N))
}
