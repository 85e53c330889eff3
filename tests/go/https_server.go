// https_server CERT KEY: a Go net/http HTTPS server (crypto/tls, HTTP/1.1 keep-alive) for the
// tracer's TLS tests. `/` answers at once, `/sleep?ms=N` sleeps first. Prints
// `listening 127.0.0.1:PORT pid PID` once ready. Built by the tests with Debian's golang-go.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: https_server CERT KEY")
		os.Exit(2)
	}
	cert, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "https_server:", err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "https_server:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		w.Write([]byte("ok\n"))
	})
	// No NextProtos: ALPN offers nothing, so clients speak HTTP/1.1.
	config := &tls.Config{Certificates: []tls.Certificate{cert}}
	fmt.Printf("listening %s pid %d\n", ln.Addr(), os.Getpid())
	os.Stdout.Sync()
	srv := &http.Server{Handler: mux}
	if err := srv.Serve(tls.NewListener(ln, config)); err != nil {
		fmt.Fprintln(os.Stderr, "https_server:", err)
		os.Exit(1)
	}
}
