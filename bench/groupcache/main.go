// A groupcache deployment of the same shape as the shoal benchmark's: one
// peer per process, each an HTTP server answering GET /v1/containers/{name}
// from one groupcache group, peers wired with groupcache's HTTPPool. The
// getter synthesizes a JSON value for names n1-0 … n{peers}-{count-1}, the
// key space of `shoal node --engine synthetic --synthetic-prefix nK-`, and
// pads it to -value-bytes so an answer carries as many bytes as shoal's.
// scripts/bench-front.sh builds and starts it; it is not part of shoal.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang/groupcache"
)

var errNotFound = errors.New("no such container")

// value is the JSON a lookup of name answers: fields shaped like a
// container record, padded with spaces before the closing brace to size
// bytes (never cut below the record itself).
func value(name string, size int) []byte {
	h := fnv.New64a()
	h.Write([]byte(name))
	s := h.Sum64()
	id := fmt.Sprintf("%016x%016x%016x%016x", s, s*31, s*131, s*1031)
	v := fmt.Sprintf(`{"id":"%s","names":["%s"],"image":"synthetic/app:1","state":"running",`+
		`"networks":{"synthetic-a":{"ip":"10.%d.%d.%d"}},"labels":{"shoal.synthetic":"true"}`,
		id, name, byte(s>>8), byte(s>>16), byte(s>>24))
	if pad := size - len(v) - 2; pad > 0 {
		v += strings.Repeat(" ", pad)
	}
	return []byte(v + "}\n")
}

// known reports whether name is one of the synthetic engines' containers.
func known(name string, peers, count int) bool {
	if !strings.HasPrefix(name, "n") {
		return false
	}
	a, b, ok := strings.Cut(name[1:], "-")
	if !ok {
		return false
	}
	k, err1 := strconv.Atoi(a)
	i, err2 := strconv.Atoi(b)
	return err1 == nil && err2 == nil && k >= 1 && k <= peers && i >= 0 && i < count &&
		strconv.Itoa(k) == a && strconv.Itoa(i) == b
}

func main() {
	listen := flag.String("listen", "127.0.0.1:17181", "this peer's address")
	peerList := flag.String("peers", "", "every peer's address, this one's included, comma-separated")
	count := flag.Int("count", 10000, "containers per synthetic engine (names nK-0 … nK-{count-1})")
	size := flag.Int("value-bytes", 285, "bytes of each JSON value")
	cacheMB := flag.Int64("cache-mb", 64, "groupcache's cache bytes (main and hot cache together), in MB")
	idle := flag.Int("peer-idle-conns", 64, "idle keep-alive connections kept per peer for fetches")
	flag.Parse()

	var peers []string
	for _, p := range strings.Split(*peerList, ",") {
		if p != "" {
			peers = append(peers, "http://"+p)
		}
	}
	if len(peers) == 0 {
		log.Fatal("groupcache-bench: -peers is required")
	}
	pool := groupcache.NewHTTPPoolOpts("http://"+*listen, nil)
	pool.Set(peers...)
	// Go's default transport keeps 2 idle connections per host: under load
	// most fetches from a peer would open a new connection. Keep as many
	// as nginx keeps to each upstream.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = *idle * len(peers)
	transport.MaxIdleConnsPerHost = *idle
	pool.Transport = func(context.Context) http.RoundTripper { return transport }

	group := groupcache.NewGroup("containers", *cacheMB<<20, groupcache.GetterFunc(
		func(_ context.Context, key string, dest groupcache.Sink) error {
			if !known(key, len(peers), *count) {
				return errNotFound
			}
			return dest.SetBytes(value(key, *size))
		}))

	mux := http.NewServeMux()
	mux.Handle("/_groupcache/", pool)
	mux.HandleFunc("/v1/containers/", func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(r.URL.Path, "/v1/containers/")
		var b []byte
		if err := group.Get(r.Context(), name, groupcache.AllocatingByteSliceSink(&b)); err != nil {
			w.Header().Set("content-type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"error":{"code":"not_found","message":%q}}`+"\n", err.Error())
			return
		}
		w.Header().Set("content-type", "application/json")
		w.Write(b)
	})
	mux.HandleFunc("/v1/noop", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/v1/stats", func(w http.ResponseWriter, r *http.Request) {
		st := group.Stats
		fmt.Fprintf(w, `{"gets":%d,"cache_hits":%d,"peer_loads":%d,"peer_errors":%d,"loads":%d,"local_loads":%d,"server_requests":%d,"main_items":%d,"hot_items":%d}`+"\n",
			st.Gets.Get(), st.CacheHits.Get(), st.PeerLoads.Get(), st.PeerErrors.Get(), st.Loads.Get(),
			st.LocalLoads.Get(), st.ServerRequests.Get(),
			group.CacheStats(groupcache.MainCache).Items, group.CacheStats(groupcache.HotCache).Items)
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Second}
	log.Fatal(srv.Serve(ln))
}
