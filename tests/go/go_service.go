// go_service: a Go net/http service (HTTP/1.1 keep-alive) whose endpoints each wait in one
// of Go's own ways, for the tracer's goroutine attribution tests. Each response reports what
// the handler measured itself, in nanoseconds:
//
//	/lock?ms=N   waits about N ms for a sync.Mutex a holder goroutine keeps:  X-Lock-Ns,
//	             and the mutex's address (X-Lock-Addr, 0x...) and the holder's goroutine
//	             id (X-Holder-Goid), which unlocks it; before that, X-Held-Ns: the wait on a
//	             channel for the holder to take the mutex (which other requests' holders
//	             may keep: the mutex is the same for all)
//	/chan?ms=N   waits for a worker goroutine's reply on a channel:           X-Chan-Ns
//	/sleep?ms=N  time.Sleep:                                                  X-Sleep-Ns
//	/io?ms=N     a request to a backend that answers late:                     X-Io-Ns
//	/cpu?ms=N    spins on a CPU:                                              X-Cpu-Ns
//	/            answers at once
//	/upload      reads its request body (a client that sends Expect: 100-continue gets
//	             net/http's interim "100 Continue" first): X-Body-Ns, the read, and
//	             X-Body-Bytes, its length
//	/auth?ms=N   middleware that serializes on a sync.Mutex (held N ms by a holder, as in
//	             /lock), then a sleep of N/10 ms and a backend call of N/10 ms:
//	             X-Held-Ns, X-Lock-Ns, X-Sleep-Ns, X-Io-Ns
//	/gc?ms=N     allocates for about N ms (keeping a few MB live) with GOGC at 5 while any
//	             /gc request runs, so that the garbage collector runs all the time and the
//	             handler assists it and waits for it; then runtime.GC(), which waits for a
//	             whole cycle (Go's wait reason "wait for GC cycle"):         X-Gc-Ns
//	/sched?ms=N  gives its turn to the other goroutines (runtime.Gosched) until about N ms
//	             have passed, and reports how long it waited in those calls:  X-Sched-Ns;
//	             meant for the service run as `go_service sched` (below)
//
// and X-Handler-Ns, the handler's whole time, and X-Conn-Fd, the connection's file
// descriptor in this process (the tracer reports it with each request). Prints
// `listening 127.0.0.1:PORT pid PID` once ready. The backend is this program run again as
// `go_service backend`, a process of its own, so that the traced service serves only its
// clients' requests.
//
// Run as `go_service sched`, the service has one P (GOMAXPROCS=1) and keeps two goroutines
// spinning on it, so a goroutine that yields or is woken waits for Go's scheduler: /sched's
// waits are the time its goroutine is runnable but not running.
//
// Run as `go_service netpoll` (with GODEBUG=asyncpreemptoff=1), it has one P and serves
//
//	/netpoll?ms=N&hog=H  a backend call of N ms whose answer its goroutine cannot take at
//	             once: before it reads, it starts a goroutine that keeps the only P for
//	             N+H ms in a loop with no call in it (which nothing can preempt), so the
//	             netpoller finds the answer and the goroutine then waits for Go's scheduler
//	             until that loop ends. X-Io-Ns: the call; X-Answered-Ns: from the call's
//	             start to the backend's write of its answer (the backend's clock, the
//	             same host's); X-Hog-Ns: from the call's start to the loop's end
//
// Run as `go_service h2 CERT KEY`, it serves HTTPS, with HTTP/2 offered by ALPN (net/http's
// default): an HTTP/2 client's requests are streams of one connection, each handled in a
// goroutine of its own.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	_ "unsafe" // go:linkname
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
				// The answer is when it was written, in ns since the epoch.
				answer := strconv.FormatInt(time.Now().UnixNano(), 10) + "\n"
				if _, err := c.Write([]byte(answer)); err != nil {
					return
				}
			}
		}(conn)
	}
}

// askBackend dials the backend (a connection per request, kept simple: the dial is local
// and quick) and asks for an answer in ms milliseconds.
func askBackend(addr string, ms int) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(c, "%d\n", ms)
	return c
}

func callBackend(addr string, ms int) time.Duration {
	start := time.Now()
	c := askBackend(addr, ms)
	defer c.Close()
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

// The context key of a connection's file descriptor.
type connFdKey struct{}

// connFd puts the connection's file descriptor in its context (-1 if it has none).
func connFd(ctx context.Context, c net.Conn) context.Context {
	fd := -1
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			raw.Control(func(f uintptr) { fd = int(f) })
		}
	}
	return context.WithValue(ctx, connFdKey{}, fd)
}

// timed wraps a handler: X-Handler-Ns and X-Conn-Fd are set before the body is written.
func timed(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h(w, r)
		w.Header().Set("X-Handler-Ns", ns(time.Since(start)))
		if fd, ok := r.Context().Value(connFdKey{}).(int); ok {
			w.Header().Set("X-Conn-Fd", strconv.Itoa(fd))
		}
		w.Write([]byte("ok\n"))
	}
}

// /gc sets GOGC to 5 while any /gc request runs, and back to what it was after the last.
var (
	gcMu      sync.Mutex
	gcUsers   int
	gcPercent int
)

func lowGOGC() {
	gcMu.Lock()
	if gcUsers == 0 {
		gcPercent = debug.SetGCPercent(5)
	}
	gcUsers++
	gcMu.Unlock()
}

func restoreGOGC() {
	gcMu.Lock()
	gcUsers--
	if gcUsers == 0 {
		debug.SetGCPercent(gcPercent)
	}
	gcMu.Unlock()
}

// node is what /gc allocates: pointers, so that marking has work to do.
type node struct {
	next *node
	data [56]byte
}

// churn allocates until d has passed, keeping the last 64k nodes (a few MB) reachable.
func churn(d time.Duration) {
	live := make([]*node, 1<<16)
	until := time.Now().Add(d)
	for i := 0; ; i++ {
		n := &node{}
		if i > 0 {
			n.next = live[(i-1)%len(live)]
		}
		live[i%len(live)] = n
		if i%1024 == 0 && !time.Now().Before(until) {
			return
		}
	}
}

// nanotime is the runtime's monotonic clock. It is `nosplit` (no stack check, so no
// preemption point: Go preempts a goroutine cooperatively at a function's stack check, or
// asynchronously by a signal, which `GODEBUG=asyncpreemptoff=1` turns off), and linkable
// from outside the runtime in every release (Go 1.23 keeps it so: time_nofake.go).
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// spinUntil keeps its goroutine on the CPU until the monotonic clock reads deadline, in a
// loop whose only call is nanotime: without asynchronous preemption, nothing takes the P
// from it. (A loop of a calibrated length instead ran short when the calibration ran while
// the machine was busy.)
func spinUntil(deadline int64) {
	for nanotime() < deadline {
	}
}

// netpollWait: see /netpoll in the header.
func netpollWait(w http.ResponseWriter, addr string, ms, hog int) {
	start := time.Now()
	c := askBackend(addr, ms)
	defer c.Close()
	hogEnd := make(chan time.Time, 1)
	deadline := nanotime() + int64(ms+hog)*int64(time.Millisecond)
	go func() {
		spinUntil(deadline)
		hogEnd <- time.Now()
	}()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		panic(err)
	}
	end := time.Now()
	answered, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		panic(err)
	}
	w.Header().Set("X-Io-Ns", ns(end.Sub(start)))
	w.Header().Set("X-Answered-Ns", strconv.FormatInt(answered-start.UnixNano(), 10))
	w.Header().Set("X-Hog-Ns", ns((<-hogEnd).Sub(start)))
}

// spin keeps its goroutine on a CPU forever (the scheduler preempts it).
func spin() {
	x := 0
	for {
		x++
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
	// `go_service h2 CERT KEY`: served over TLS, where ALPN offers HTTP/2 (net/http's
	// default): each stream's handler runs in a goroutine of its own.
	certFile, keyFile := "", ""
	if len(os.Args) == 4 && os.Args[1] == "h2" {
		certFile, keyFile = os.Args[2], os.Args[3]
	}
	if len(os.Args) > 1 && os.Args[1] == "sched" {
		runtime.GOMAXPROCS(1)
		go spin()
		go spin()
	}
	if len(os.Args) > 1 && os.Args[1] == "netpoll" {
		runtime.GOMAXPROCS(1)
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
		start := time.Now()
		holder := holdLock(time.Duration(millis(r)) * time.Millisecond)
		w.Header().Set("X-Held-Ns", ns(time.Since(start)))
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
	mux.HandleFunc("/netpoll", timed(func(w http.ResponseWriter, r *http.Request) {
		hog, _ := strconv.Atoi(r.URL.Query().Get("hog"))
		netpollWait(w, backendAddr, millis(r), hog)
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
		start := time.Now()
		holdLock(time.Duration(ms) * time.Millisecond)
		w.Header().Set("X-Held-Ns", ns(time.Since(start)))
		w.Header().Set("X-Lock-Ns", ns(waitLock()))
		start = time.Now()
		time.Sleep(time.Duration(ms/10) * time.Millisecond)
		w.Header().Set("X-Sleep-Ns", ns(time.Since(start)))
		w.Header().Set("X-Io-Ns", ns(callBackend(backendAddr, ms/10)))
	}))
	mux.HandleFunc("/upload", timed(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Body-Ns", ns(time.Since(start)))
		w.Header().Set("X-Body-Bytes", strconv.FormatInt(n, 10))
	}))
	mux.HandleFunc("/gc", timed(func(w http.ResponseWriter, r *http.Request) {
		lowGOGC()
		defer restoreGOGC()
		start := time.Now()
		churn(time.Duration(millis(r)) * time.Millisecond)
		runtime.GC()
		w.Header().Set("X-Gc-Ns", ns(time.Since(start)))
	}))
	mux.HandleFunc("/sched", timed(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var waited time.Duration
		for time.Since(start) < time.Duration(millis(r))*time.Millisecond {
			t0 := time.Now()
			runtime.Gosched()
			waited += time.Since(t0)
		}
		w.Header().Set("X-Sched-Ns", ns(waited))
	}))

	fmt.Printf("listening %s pid %d\n", ln.Addr(), os.Getpid())
	os.Stdout.Sync()
	server := &http.Server{Handler: mux, ConnContext: connFd}
	if certFile != "" {
		err = server.ServeTLS(ln, certFile, keyFile)
	} else {
		err = server.Serve(ln)
	}
	if err != nil {
		fail(err)
	}
}
