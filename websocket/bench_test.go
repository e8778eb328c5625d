package websocket

import (
	"io"
	"runtime"
	"testing"
	"time"
)

// BenchmarkTunnelThroughput pushes 64 KiB per iteration from the client
// through a tunnel to the backend over loopback TCP.
func BenchmarkTunnelThroughput(b *testing.B) {
	r := startRig(b, NewRegistry(), "k", time.Minute)
	done := make(chan int64)
	go func() {
		n, _ := io.Copy(io.Discard, r.backend)
		done <- n
	}()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	r.client.Close()
	<-done
	r.wait(b, 5*time.Second)
}

// BenchmarkIdleTunnelMemory holds 1,000 idle tunnels and reports the heap
// and goroutine stack they add, per tunnel. The figure includes the four
// net.Conns of the test's loopback pairs (two of which, the peers, are not
// the gateway's); run with -benchtime=1x.
func BenchmarkIdleTunnelMemory(b *testing.B) {
	const n = 1000
	var heap, stack float64
	for b.Loop() {
		reg := NewRegistry()
		before := memUse()
		rigs := make([]*rig, 0, n)
		for range n {
			rigs = append(rigs, startRig(b, reg, "k", time.Hour))
		}
		// Let every tunnel reach its blocking Read.
		for _, r := range rigs {
			r.client.Write([]byte("x"))
			expect(b, r.backend, "x")
		}
		after := memUse()
		heap += float64(after.heap-before.heap) / n
		stack += float64(after.stack-before.stack) / n
		reg.CloseAll()
		for _, r := range rigs {
			r.wait(b, 5*time.Second)
			r.client.Close()
			r.backend.Close()
		}
	}
	b.ReportMetric(heap/float64(b.N), "heap-B/tunnel")
	b.ReportMetric(stack/float64(b.N), "stack-B/tunnel")
	b.ReportMetric((heap+stack)/float64(b.N), "B/tunnel")
}

type mem struct{ heap, stack int64 }

// memUse is the live heap and stack memory after a full collection.
func memUse() mem {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return mem{heap: int64(ms.HeapInuse), stack: int64(ms.StackInuse)}
}
