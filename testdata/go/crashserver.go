// An HTTP server that can be made to crash, for the --on-signal and
// --on-exit tests in tests/triggers.rs. Under load it lives through
// signals it handles itself: SIGSEGV from a nil dereference that net/http
// recovers, SIGURG from the runtime preempting a spinning goroutine (and
// from the test); /panic then ends it with a panic nobody recovers, which
// is exit status 2, or SIGABRT with GOTRACEBACK=crash.
//
//	crashserver   prints "ready pid=N port=P" once it listens on 127.0.0.1
//
// GET /work?n=K  allocates K small slices and answers their total length
// GET /nil       dereferences a nil pointer inside the handler (recovered)
// GET /panic     panics in a new goroutine, which ends the process
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
)

type record struct{ value int }

var missing *record

// spin keeps a goroutine busy without function calls, so that only an
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
	total := 0
	for i := 0; i < n; i++ {
		buf := make([]byte, 64+i%512)
		buf[0] = byte(i)
		total += len(buf)
	}
	fmt.Fprintf(w, "%d\n", total)
}

//go:noinline
func dereferenceNil() int {
	return missing.value
}

//go:noinline
func panicUnrecovered() {
	panic("crashserver: /panic asked for it")
}

func main() {
	var sink atomic.Uint64
	go spin(&sink)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(3)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/work", work)
	mux.HandleFunc("/nil", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", dereferenceNil())
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		go panicUnrecovered()
		select {}
	})
	fmt.Printf("ready pid=%d port=%d\n", os.Getpid(), listener.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(3)
	}
}
