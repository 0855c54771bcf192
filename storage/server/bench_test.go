package server

import (
	"context"
	"testing"
	"time"

	"github.com/ftvm/ftvm/storage"
)

// BenchmarkWrite4K compares a 4 KiB write through the server (one round
// trip over the unix socket, the fence check) with the same write to the
// disk file directly, and reports the ratio of their times per write.
func BenchmarkWrite4K(b *testing.B) {
	dir := b.TempDir()
	ts := startServer(b, dir, nil)
	c, err := Dial(context.Background(), "unix", ts.socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	served, _, err := c.OpenDisk(context.Background(), "kv", "vda", 0)
	if err != nil {
		b.Fatal(err)
	}
	direct := func() *storage.Disk {
		st, err := storage.Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.CreateDisk(context.Background(), "vda", diskSize, storage.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		d, err := st.OpenDisk("vda")
		if err != nil {
			b.Fatal(err)
		}
		return d
	}()
	defer direct.Close()
	p := make([]byte, 4096)
	perWrite := func(w func([]byte, int64) (int, error)) time.Duration {
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if _, err := w(p, int64(i%(diskSize/4096))*4096); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(b.N)
	}
	viaServer := perWrite(served.WriteAt)
	viaFile := perWrite(direct.WriteAt)
	b.ReportMetric(float64(viaServer.Nanoseconds()), "ns/served-write")
	b.ReportMetric(float64(viaFile.Nanoseconds()), "ns/file-write")
	b.ReportMetric(float64(viaServer)/float64(viaFile), "served/file")
}
