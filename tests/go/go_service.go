// go_service: a Go net/http service (HTTP/1.1 keep-alive) whose endpoints each wait in one
// of Go's own ways, for the tracer's goroutine attribution tests. Each response reports what
// the handler measured itself, in nanoseconds:
//
//	/lock?ms=N   waits about N ms for a sync.Mutex a holder goroutine keeps:  X-Lock-Ns,
//	             and the mutex's address (X-Lock-Addr, 0x...) and the holder's goroutine
//	             id (X-Holder-Goid), which unlocks it
//	/chan?ms=N   waits for a worker goroutine's reply on a channel:           X-Chan-Ns
//	/sleep?ms=N  time.Sleep:                                                  X-Sleep-Ns
//	/io?ms=N     a request to a backend that answers late:                     X-Io-Ns
//	/cpu?ms=N    spins on a CPU:                                              X-Cpu-Ns
//	/            answers at once
//	/auth?ms=N   middleware that serializes on a sync.Mutex, then a sleep of N/10 ms and a
//	             backend call of N/10 ms: X-Lock-Ns, X-Sleep-Ns, X-Io-Ns
//
// and X-Handler-Ns, the handler's whole time. Prints `listening 127.0.0.1:PORT pid PID` once
// ready. The backend is this program run again as `go_service backend`, a process of its own,
// so that the traced service serves only its clients' requests.
package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The mutex /lock and /auth wait for.
var mu sync.Mutex

// Jobs for the /chan worker: how long to work, and where to answer.
type job struct {
	work  time.Duration
	reply chan struct{}
}

var jobs = make(chan job)

func worker() {
	for j := range jobs {
		time.Sleep(j.work)
		j.reply <- struct{}{}
	}
}

// backend answers each line it reads after the delay the line asks for (in ms).
func backend(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func(c net.Conn) {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				ms, _ := strconv.Atoi(line[:len(line)-1])
				time.Sleep(time.Duration(ms) * time.Millisecond)
				if _, err := c.Write([]byte("done\n")); err != nil {
					return
				}
			}
		}(conn)
	}
}

// A connection to the backend per request (kept simple: the dial is local and quick).
func callBackend(addr string, ms int) time.Duration {
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%d\n", ms)
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		panic(err)
	}
	return time.Since(start)
}

// goid is the calling goroutine's id, from the header of its stack trace
// ("goroutine 42 [running]:").
func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	fields := strings.Fields(string(buf))
	id, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		panic(err)
	}
	return id
}

// holdLock takes the mutex in another goroutine and keeps it for d; returns once it is held,
// with the holder's goroutine id.
func holdLock(d time.Duration) int64 {
	held := make(chan int64)
	go func() {
		mu.Lock()
		held <- goid()
		time.Sleep(d)
		mu.Unlock()
	}()
	return <-held
}

func waitLock() time.Duration {
	start := time.Now()
	mu.Lock()
	waited := time.Since(start)
	mu.Unlock()
	return waited
}

func millis(r *http.Request) int {
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	return ms
}

func ns(d time.Duration) string {
	return strconv.FormatInt(d.Nanoseconds(), 10)
}

// timed wraps a handler: X-Handler-Ns is set before the body is written.
func timed(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h(w, r)
		w.Header().Set("X-Handler-Ns", ns(time.Since(start)))
		w.Write([]byte("ok\n"))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "go_service:", err)
	os.Exit(1)
}

// startBackend runs `go_service backend` (killed when this process dies) and returns the
// address it listens on.
func startBackend() string {
	cmd := exec.Command(os.Args[0], "backend")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		fail(err)
	}
	if err := cmd.Start(); err != nil {
		fail(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		fail(err)
	}
	return strings.TrimSpace(line)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fail(err)
		}
		fmt.Println(ln.Addr())
		backend(ln)
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	backendAddr := startBackend()
	go worker()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/lock", timed(func(w http.ResponseWriter, r *http.Request) {
		holder := holdLock(time.Duration(millis(r)) * time.Millisecond)
		w.Header().Set("X-Lock-Ns", ns(waitLock()))
		w.Header().Set("X-Lock-Addr", fmt.Sprintf("%p", &mu))
		w.Header().Set("X-Holder-Goid", strconv.FormatInt(holder, 10))
	}))
	mux.HandleFunc("/chan", timed(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		reply := make(chan struct{})
		jobs <- job{work: time.Duration(millis(r)) * time.Millisecond, reply: reply}
		<-reply
		w.Header().Set("X-Chan-Ns", ns(time.Since(start)))
	}))
	mux.HandleFunc("/sleep", timed(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		time.Sleep(time.Duration(millis(r)) * time.Millisecond)
		w.Header().Set("X-Sleep-Ns", ns(time.Since(start)))
	}))
	mux.HandleFunc("/io", timed(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Io-Ns", ns(callBackend(backendAddr, millis(r))))
	}))
	mux.HandleFunc("/cpu", timed(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		until := start.Add(time.Duration(millis(r)) * time.Millisecond)
		x := 0
		for time.Now().Before(until) {
			x++
		}
		w.Header().Set("X-Cpu-Ns", ns(time.Since(start)))
	}))
	mux.HandleFunc("/auth", timed(func(w http.ResponseWriter, r *http.Request) {
		ms := millis(r)
		holdLock(time.Duration(ms) * time.Millisecond)
		w.Header().Set("X-Lock-Ns", ns(waitLock()))
		start := time.Now()
		time.Sleep(time.Duration(ms/10) * time.Millisecond)
		w.Header().Set("X-Sleep-Ns", ns(time.Since(start)))
		w.Header().Set("X-Io-Ns", ns(callBackend(backendAddr, ms/10)))
	}))

	fmt.Printf("listening %s pid %d\n", ln.Addr(), os.Getpid())
	os.Stdout.Sync()
	if err := http.Serve(ln, mux); err != nil {
		fail(err)
	}
}
