// An HTTP server under load for tests/real_programs.rs: its handlers
// allocate, so the garbage collector runs and the runtime preempts
// goroutines with SIGURG while coresnap dumps it; it counts the SIGUSR1s
// it receives, so the test can tell whether a dump lost one.
//
//	server      prints "ready pid=N port=P" once it listens on 127.0.0.1
//
// GET /work?n=K   allocates K small slices and a map, answers their checksum
// GET /usr1       answers the number of SIGUSR1 received so far
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
)

var usr1Received atomic.Uint64

// spin keeps a goroutine in a loop without function calls: only an
// asynchronous preemption (SIGURG) can stop it for the garbage collector.
func spin(sink *atomic.Uint64) {
	x := uint64(1)
	for {
		for i := 0; i < 1<<20; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		sink.Store(x)
	}
}

func work(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n <= 0 || n > 100000 {
		n = 1000
	}
	kept := make(map[int][]byte, n)
	var sum uint64
	for i := 0; i < n; i++ {
		buf := make([]byte, 64+i%512)
		buf[0] = byte(i)
		kept[i%128] = buf
		sum += uint64(len(buf))
	}
	fmt.Fprintf(w, "%d %d\n", sum, len(kept))
}

func main() {
	signals := make(chan os.Signal, 64)
	signal.Notify(signals, syscall.SIGUSR1)
	go func() {
		for range signals {
			usr1Received.Add(1)
		}
	}()
	var sink atomic.Uint64
	go spin(&sink)

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/work", work)
	mux.HandleFunc("/usr1", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", usr1Received.Load())
	})
	fmt.Printf("ready pid=%d port=%d\n", os.Getpid(), listener.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(2)
	}
}
