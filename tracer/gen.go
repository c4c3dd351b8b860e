package tracer

// Generated files are committed so `go build` needs no clang; `make generate`
// rebuilds them with the pinned compiler.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type event -type cw_entry -type agg_key -type agg_val -type direction -type counter -type scan_ctl -type scan_rec -type accept_key -type accept_val -type accept_reason tcptrace ../bpf/tcptrace.bpf.c -- -I../bpf -I../bpf/include -I../vmlinux -O2 -g -Wall -Werror
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type cw_sock -type destroy_status destroy ../bpf/destroy.bpf.c -- -I../bpf -I../bpf/include -I../vmlinux -O2 -g -Wall -Werror
